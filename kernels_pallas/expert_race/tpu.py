"""Mosaic TPU kernel of the expert race: the global top-K of a score tensor by counting passes
(``seedjax.nn.moe.racing``'s "threshold" method), with the whole problem resident in VMEM.

One kernel invocation (no grid) per call:

1. load: the padded scores [rows, W] stay in HBM (``pl.ANY``); chunks of ``chunk_rows`` rows
   are DMA'd into a two-slot VMEM buffer (the next chunk's copy is in flight while the current
   one is converted), upcast to float32, turned into ``racing.sortable_key`` and stored in an
   int32 VMEM scratch as an *encoded* key ``s``:
       float32 scores:   s = key + 1                 (unsigned order via the sign flip below)
       16-bit scores:    s = (key >> 16) + 2**15 + 1 (= the 16-bit unsigned key + 1, >= 1)
       padding:          the encoding of unsigned 0, below every real score, NaN included
   (the float32 key of an upcast bfloat16 value, shifted right by 16, is bfloat16's own
   16-bit key: the search then takes 16 passes instead of 32). Padding positions (E padded
   to E_pad, rows to a whole chunk) are recognised by position, never by value, so a NaN
   score (unsigned key 0, encoded 1) still ranks above padding and is selected when K exceeds
   the non-NaN count. The +1 cannot overflow: the largest real key is +inf's.
2. threshold: t = max{t : #(s >= t) >= K} over the unsigned view, set bit by bit from the
   top (``bits`` passes, 32 or 16); each pass is compare + count over the resident keys,
   counts accumulated per lane in a [1, W] int32 vector and reduced over lanes at the end of
   the pass. 32-bit keys compare as signed int32 after XOR 0x80000000 (the usual
   unsigned-as-signed trick; Mosaic needs no unsigned compare).
3. ties="index": one pass counts #(s > t) and #(s == t); need = K - #(s > t). If every tie
   is needed (#(s == t) == need, the usual case with continuous scores) all ties are taken;
   otherwise j = max{j : #(s == t & pos < j) < need} by a second bitwise search over the
   padded flat position (bit_length(P - 1) passes, a loop whose trip count is 0 in the first
   case); positions keep the original row-major order of the valid scores, so "lower
   position" is racing's "lower flat index". mask = (s > t) | (s == t & pos <= j).
   ties="ge": mask = s >= t, no second search.
4. emit: the int8 mask [rows, W] (a VMEM output block) and, in the same pass, the per-lane
   selection counts; a [2, W] int32 stats block holds the lane counts (row 0) and the encoded
   threshold (row 1). The wrapper folds lanes to experts (lane l is expert l % E_pad), decodes
   kth with ``racing.key_to_score`` and trims the padding.

Each pass reads the keys from VMEM, not HBM: HBM traffic is one read of the scores and one
write of the int8 mask. VMEM budget and chunk sizes: config.py. Not done: splitting the passes
over the two TensorCores of a megacore chip (v5p), and a streaming variant for problems larger
than VMEM; across data-parallel shards each pass would need an all-reduce of its count (the
XLA "threshold" method with ``axis_name`` does that), so this kernel races one device's scores.

Shapes: see ``expert_race_tpu``.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.expert_race import config as _config
from kernels_pallas.expert_race import reference

_INT32_MIN = -2**31


def _ceil(x: int, m: int) -> int:
    return -(-x // m) * m


@dataclasses.dataclass(frozen=True)
class Layout:
    """How scores [..., E] sit in the kernel's [rows, W] array (module docstring)."""
    tokens: int
    experts: int
    e_pad: int
    width: int
    rows: int
    chunk: int

    @property
    def valid(self) -> int:
        """Padded positions holding a token's (possibly E-padded) scores."""
        return self.tokens * self.e_pad

    @property
    def positions(self) -> int:
        return self.rows * self.width

    @property
    def index_bits(self) -> int:
        return max(1, (self.positions - 1).bit_length())


def layout(shape, chunk_rows: int) -> Layout:
    """The [rows, W] layout of scores ``shape`` [..., E] for chunks of ``chunk_rows`` rows."""
    experts = shape[-1]
    tokens = math.prod(shape[:-1])
    e_pad = 1 << max(0, experts - 1).bit_length() if experts <= 128 else _ceil(experts, 128)
    width = max(128, e_pad)
    used = -(-tokens * e_pad // width)
    chunk = min(chunk_rows, _ceil(max(used, 1), 32))
    return Layout(tokens, experts, e_pad, width, _ceil(max(used, 1), chunk), chunk)


def vmem_bytes(lay: Layout, itemsize: int) -> int:
    """The kernel's VMEM: int32 keys + int8 mask + two input chunks + stats."""
    return lay.positions * 5 + 2 * lay.chunk * lay.width * itemsize + 2 * lay.width * 4


def _encode(x, bits: int):
    """float32 tile -> encoded int32 keys (module docstring, step 1)."""
    key = reference.sortable_key(x)
    if bits == 16:
        return (key >> 16) + (2**15 + 1)
    return key + 1


def _race_kernel(x_hbm, mask_ref, stats_ref, keys_ref, buf_ref, sem, *, count, bits, ties,
                 lay: Layout):
    chunk, width, nch = lay.chunk, lay.width, lay.rows // lay.chunk
    flip = _INT32_MIN if bits == 32 else 0
    shape = (chunk, width)
    lane = lax.broadcasted_iota(jnp.int32, shape, 1)
    local = lax.broadcasted_iota(jnp.int32, shape, 0) * width + lane      # pos - start * W
    lane_ok = (lane & (lay.e_pad - 1) if lay.e_pad <= 128 else lane) < lay.experts
    invalid = jnp.int32(_INT32_MIN if bits == 32 else 0)

    def start_of(c):
        return pl.multiple_of(c * chunk, chunk)

    def copy(c, slot):
        return pltpu.make_async_copy(x_hbm.at[pl.ds(start_of(c), chunk)], buf_ref.at[slot],
                                     sem.at[slot])

    copy(0, 0).start()

    def load(c, carry):
        slot = lax.rem(c, 2)

        @pl.when(c + 1 < nch)
        def _():
            copy(c + 1, 1 - slot).start()
        copy(c, slot).wait()
        s = _encode(buf_ref[slot].astype(jnp.float32), bits)
        ok = lane_ok & (local < lay.valid - c * chunk * width)
        keys_ref[pl.ds(start_of(c), chunk), :] = jnp.where(ok, s, invalid)
        return carry
    lax.fori_loop(0, nch, load, 0)

    def count_where(*preds):
        """#positions where pred(keys chunk, c), over all chunks, for each pred (one pass)
        -> [1, 1] int32 each."""
        def body(c, accs):
            s = keys_ref[pl.ds(start_of(c), chunk), :]
            return tuple(acc + jnp.sum(jnp.where(pred(s, c), 1, 0), axis=0, keepdims=True)
                         for pred, acc in zip(preds, accs))
        accs = lax.fori_loop(0, nch, body, (jnp.zeros((1, width), jnp.int32),) * len(preds))
        return tuple(jnp.sum(acc, axis=1, keepdims=True) for acc in accs)

    def value_pass(i, t):
        cand = t | (jnp.int32(1) << (bits - 1 - i))
        n_ge, = count_where(lambda s, c: s >= (cand ^ flip))
        return jnp.where(n_ge >= count, cand, t)
    t = lax.fori_loop(0, bits, value_pass, jnp.zeros((1, 1), jnp.int32)) ^ flip

    if ties == "ge":
        def selected(s, c):
            return s >= t
    else:
        n_gt, n_eq = count_where(lambda s, c: s > t, lambda s, c: s == t)
        need = count - n_gt
        nb = lay.index_bits

        def index_pass(i, j):
            cand = j | (jnp.int32(1) << (nb - 1 - i))
            n_lt, = count_where(lambda s, c: (s == t) & (local < cand - c * chunk * width))
            return jnp.where(n_lt < need, cand, j)
        # Every tie is selected (the usual case with continuous scores): no search.
        take_all = jnp.where(n_eq == need, 1, 0)[0, 0]
        j = lax.fori_loop(0, nb * (1 - take_all), index_pass,
                          jnp.full((1, 1), lay.positions, jnp.int32) * take_all)

        def selected(s, c):
            return (s > t) | ((s == t) & (local <= j - c * chunk * width))

    def emit(c, acc):
        hit = jnp.where(selected(keys_ref[pl.ds(start_of(c), chunk), :], c), 1, 0)
        mask_ref[pl.ds(start_of(c), chunk), :] = hit.astype(jnp.int8)
        return acc + jnp.sum(hit, axis=0, keepdims=True)
    stats_ref[pl.ds(0, 1), :] = lax.fori_loop(0, nch, emit, jnp.zeros((1, width), jnp.int32))
    stats_ref[pl.ds(1, 1), :] = jnp.broadcast_to(t, (1, width))


def expert_race_tpu(scores, count: int, *, ties: str = "index",
                    tiles: _config.TpuTiles | None = None, interpret=False):
    """The top-``count`` race over all of scores [..., E] (float32 | bfloat16 | float16;
    1 <= count <= scores.size; forward only, see api.py) ->
    (mask bool like scores, kth [] float32, excess [] int32, counts [E] int32)."""
    if tiles is None:
        tiles = _config.INTERPRET_TILES if interpret else _config.tpu_tiles()
    bits = reference.key_bits(scores.dtype)
    kernel_dtype = jnp.bfloat16 if scores.dtype == jnp.bfloat16 else jnp.float32
    if bits == 16 and kernel_dtype == jnp.float32:
        bits = 32            # float16: upcast exactly to float32, race its 32-bit keys
    lay = layout(scores.shape, tiles.chunk_rows)
    if isinstance(count, bool) or not isinstance(count, int) or not (
            1 <= count <= lay.tokens * lay.experts):
        raise ValueError(f"expert_race_tpu: count={count!r} must be an integer in [1, "
                         f"{lay.tokens * lay.experts}] (K = 0 needs no kernel, see api.py)")
    x = scores.reshape(lay.tokens, lay.experts).astype(kernel_dtype)
    x = jnp.pad(x, ((0, 0), (0, lay.e_pad - lay.experts))).reshape(-1)
    x = jnp.pad(x, (0, lay.positions - lay.valid)).reshape(lay.rows, lay.width)
    itemsize = jnp.dtype(kernel_dtype).itemsize
    passes = bits + (lay.index_bits + 1 if ties == "index" else 0) + 2    # at most
    cost = pl.CostEstimate(flops=3 * passes * lay.positions, transcendentals=0,
                           bytes_accessed=lay.positions * (itemsize + 1) + 8 * lay.width)
    kernel = functools.partial(_race_kernel, count=count, bits=bits, ties=ties, lay=lay)
    vmem = pl.BlockSpec(memory_space=pltpu.VMEM)
    mask, stats = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((lay.rows, lay.width), jnp.int8),
                   jax.ShapeDtypeStruct((2, lay.width), jnp.int32)],
        in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=[vmem, vmem],
        scratch_shapes=[pltpu.VMEM((lay.rows, lay.width), jnp.int32),
                        pltpu.VMEM((2, lay.chunk, lay.width), kernel_dtype),
                        pltpu.SemaphoreType.DMA((2,))],
        compiler_params=pltpu.CompilerParams(vmem_limit_bytes=tiles.vmem_limit_bytes),
        interpret=interpret, cost_estimate=cost, name="expert_race",
    )(x)
    lanes, t = stats[0], stats[1, 0]
    key = t - 1 if bits == 32 else t - (2**15 + 1)
    kth = reference.key_to_score(key, jnp.float32 if bits == 32 else scores.dtype)
    if lay.e_pad <= 128:
        lanes = lanes.reshape(-1, lay.e_pad).sum(axis=0)
    counts = lanes[:lay.experts]
    excess = (jnp.sum(counts) - count if ties == "ge" else jnp.zeros((), jnp.int32))
    mask = mask.reshape(-1)[:lay.valid].reshape(lay.tokens, lay.e_pad)[:, :lay.experts]
    return (mask.reshape(scores.shape).astype(bool), kth.astype(jnp.float32),
            excess.astype(jnp.int32), counts.astype(jnp.int32))
