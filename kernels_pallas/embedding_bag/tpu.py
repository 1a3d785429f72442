"""Mosaic TPU kernels: weighted gather-reduce of table rows (``bag``) and its dual, the gather-dot
(``gather_dot``: the weight gradient of the bag and PEER's ``row_dot``).

Both kernels share one DMA pipeline. The table stays in HBM (``memory_space=pl.ANY``); every
gathered row is its own async DMA into a VMEM row buffer. Per grid step (one tile of
``tile_tokens`` tokens = ``R = tile_tokens * K`` rows):

    step j:  [j == 0]  copy index tile 0 -> SMEM slot 0, issue its R row DMAs -> row slot 0,
                       start the index DMA of tile 1 -> SMEM slot 1
             [j+1 < n] wait index tile j+1, issue its R row DMAs -> row slot (j+1)%2,
                       start the index DMA of tile j+2 -> SMEM slot j%2
             wait the R rows of tile j (one wait for the whole slot: DMA semaphores count
             bytes), reduce them on the MXU, write the output tile once.

so the rows of tile j+1 are in flight while tile j is reduced. Indices are not scalar-prefetched
as a whole: production index arrays (T*K = 4096*256 int32 = 4 MiB) exceed the 1 MiB SMEM, so each
tile's indices are DMA'd into a double-buffered SMEM scratch one step ahead. Groups and weights
are ordinary pipelined VMEM blocks. A leading "parallel" grid axis of size ``num_cores`` splits
the tiles between the TensorCores of a megacore chip (v5p); the tile axis is "arbitrary"
because each step starts the next step's DMAs.

Reduction on the MXU: tokens are processed in chunks of ``c`` tokens (``c * K`` rows). For a chunk,
C[(t, g), (t', k)] = [t == t'] [groups[t, k] == g] w[t, k, s] is a block-diagonal (c*G, c*K)
coefficient matrix built with iota masks, and ``out = C_s @ rows`` (f32, HIGHEST precision) for
the lanes of value slice s. ``gather_dot`` is the transpose: ``P_s = y_s @ rows^T`` and the
(t, g) == (t', groups) entries of P are summed over the sublanes.

Row layouts (the "row word" is what one DMA moves; single-row DMAs need 32-bit rows):
  * float32 tables: the table itself, [N, D].
  * bfloat16 tables: uint32 words [N, D/2], word j = column j | column j + D/2 << 16
    (``pack_bf16_table``). In VMEM a word row becomes two f32 "planes" (the column halves);
    with S = 2 each half is exactly one value slice, so no lane masks are needed. The forward
    output is repacked the same way. XLA's native bf16 [N, D] layout interleaves row pairs in
    32-bit words, so a single bf16 row cannot be DMA'd from it; packing is one elementwise pass
    over the table (fused into the cast that produced a bf16 table from f32 params). The notes'
    other fix, reshaping to a (N, 1, D) bf16 table, also compiles, but XLA then relayouts the
    table into a T(2,128)(2,1) tiling: a copy of twice the table's bytes on every call
    (``bench.bf16_layout_probe``).

Padding: callers (``api.py``) clamp out-of-range indices to 0 and zero their weights, pad K to a
multiple of 8 and T to whole tiles; a padded slot still moves one row (so the byte count of the
single wait is static) but contributes zero. A non-finite row 0 would turn those zeros into NaN;
tables are assumed finite.

Shapes (after ``plan``: c | tile_tokens, T % (tile_tokens * num_cores) == 0, K % 8 == 0):
    bag:        idx int32 [T/tile, tile*K], w f32 [T/c, S, c*K], groups int32 [T/c, 1, c*K],
                table [N, Dw] -> f32 [T/c, c*G, Dw] per plane (1 plane f32, 2 for packed bf16)
                or uint32 [T/c, c*G, Dw] (packed bf16 output)
    gather_dot: idx, groups as above, y f32 [T/c, c*G, Dw] per plane, table -> f32 [T/c, S, c*K]
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.embedding_bag.config import TpuTiles

SUPPORTED_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static tiling of one call (see the module docstring)."""
    n_tokens: int          # T after padding
    k: int                 # K after padding to a multiple of 8
    chunk_tokens: int      # c
    tile_tokens: int
    num_cores: int
    n_slices: int          # S
    n_groups: int          # G
    dim: int               # Dv (columns of the logical table)
    packed: bool           # bf16 table as uint32 pairs

    @property
    def word_dim(self) -> int:
        return self.dim // 2 if self.packed else self.dim

    @property
    def tiles_per_core(self) -> int:
        return self.n_tokens // (self.tile_tokens * self.num_cores)

    @property
    def rows_per_tile(self) -> int:
        return self.tile_tokens * self.k

    def vmem_bytes(self) -> int:
        """Rough VMEM footprint: double-buffered rows, blocks and the f32 chunk temporaries."""
        pad = lambda x, m: -(-x // m) * m  # noqa: E731
        dw = pad(self.word_dim, 128)
        ck, cg = self.chunk_tokens * self.k, self.chunk_tokens * self.n_groups
        rows = 2 * self.rows_per_tile * dw * 4
        blocks = 2 * (self.tile_tokens // self.chunk_tokens) * (
            pad(self.n_slices, 8) * pad(ck, 128) * 4 + 8 * pad(ck, 128) * 4
            + pad(cg, 8) * dw * 4 * (2 if self.packed else 1))
        temps = (3 + self.n_slices) * ck * dw * 4 + 4 * pad(cg, 8) * pad(ck, 128) * 4
        return rows + blocks + temps


def plan(n_tokens: int, k: int, n_slices: int, n_groups: int, dim: int, dtype,
         tiles: TpuTiles) -> Plan:
    """Chunk and tile sizes for T tokens of K slots (K is padded to a multiple of 8)."""
    k8 = -(-k // 8) * 8
    c = max(1, tiles.rows_per_dot // k8)
    tile = c * max(1, tiles.rows_per_tile // (c * k8))
    per_core = -(-n_tokens // tiles.num_cores)
    tile = min(tile, -(-per_core // c) * c)           # small problems: one tile per core
    step = tile * tiles.num_cores
    t_pad = -(-n_tokens // step) * step
    p = Plan(n_tokens=t_pad, k=k8, chunk_tokens=c, tile_tokens=tile,
             num_cores=tiles.num_cores, n_slices=n_slices, n_groups=n_groups, dim=dim,
             packed=jnp.dtype(dtype) == jnp.bfloat16)
    if p.vmem_bytes() > tiles.vmem_limit_bytes:
        raise ValueError(f"embedding_bag TPU plan needs ~{p.vmem_bytes() >> 20} MiB of VMEM "
                         f"(tile {tile} tokens x K={k8}, D={dim}) > vmem_limit_bytes="
                         f"{tiles.vmem_limit_bytes >> 20} MiB; lower TpuTiles.rows_per_tile")
    return p


def pack_bf16_table(table: jax.Array) -> jax.Array:
    """bf16 [N, D] (D even) -> uint32 [N, D/2]: word j = bits(col j) | bits(col j + D/2) << 16.
    Pairing the two contiguous halves keeps this an elementwise XLA fusion (one pass over the
    table, fusable with the cast that produced it); pairing adjacent columns through a
    [N, D/2, 2] bitcast costs XLA:TPU several relayout passes."""
    h = table.shape[1] // 2
    bits = lambda x: lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)  # noqa: E731
    return jnp.bitwise_or(bits(table[:, :h]), jnp.left_shift(bits(table[:, h:]), jnp.uint32(16)))


def unpack_bf16_words(words: jax.Array) -> jax.Array:
    """uint32 [..., W] in the ``pack_bf16_table`` layout -> bf16 [..., 2W]."""
    half = lambda x: lax.bitcast_convert_type(x.astype(jnp.uint16), jnp.bfloat16)  # noqa: E731
    return jnp.concatenate([half(jnp.bitwise_and(words, jnp.uint32(0xFFFF))),
                            half(jnp.right_shift(words, jnp.uint32(16)))], axis=-1)


# ----------------------------------------------------------------------------- shared pieces

def _row_pipeline(p: Plan, idx_hbm, table_hbm, rows, idx_sm, row_sem, idx_sem, unroll: int):
    """Runs the DMA schedule of the module docstring for this grid step; returns the row slot
    holding the current tile once all of its rows have landed."""
    core, j, n = pl.program_id(0), pl.program_id(1), pl.num_programs(1)
    tile = core * n + j
    slot = j % 2
    r_tile = p.rows_per_tile

    def idx_copy(t, s):
        return pltpu.make_async_copy(idx_hbm.at[t], idx_sm.at[s], idx_sem.at[s])

    def issue_rows(s):
        def body(r, carry):
            row = idx_sm[s, r]
            pltpu.make_async_copy(table_hbm.at[pl.ds(row, 1)], rows.at[s, pl.ds(r, 1)],
                                  row_sem.at[s]).start()
            return carry
        lax.fori_loop(0, r_tile, body, 0, unroll=min(unroll, r_tile))

    @pl.when(j == 0)
    def _prologue():
        first = idx_copy(tile, 0)
        first.start()
        first.wait()
        issue_rows(0)

        @pl.when(n > 1)
        def _():
            idx_copy(tile + 1, 1).start()

    @pl.when(j + 1 < n)
    def _prefetch_next():
        nxt = 1 - slot
        idx_copy(tile + 1, nxt).wait()
        issue_rows(nxt)

        @pl.when(j + 2 < n)
        def _():
            idx_copy(tile + 2, slot).start()

    # All R row copies of this slot signal row_sem[slot]; one wait for the slot's total bytes.
    pltpu.make_async_copy(rows.at[slot], rows.at[slot], row_sem.at[slot]).wait()
    return slot


def _planes(p: Plan, words):
    """Row words [rows, Dw] -> f32 planes: [rows] for f32 tables; for packed bf16 tables
    [columns 0..D/2-1, columns D/2..D-1] (the low and high halves of each word)."""
    if not p.packed:
        return [words.astype(jnp.float32)]
    lo = lax.bitcast_convert_type(jnp.left_shift(words, jnp.uint32(16)), jnp.float32)
    hi = lax.bitcast_convert_type(jnp.bitwise_and(words, jnp.uint32(0xFFFF0000)), jnp.float32)
    return [lo, hi]


def _plane_slices(p: Plan, plane: int, shape):
    """[(s, lane mask or None)] for the value slices that plane ``plane`` (columns
    [plane*Dw, (plane+1)*Dw)) intersects; None when the whole plane lies in slice s."""
    dw, width = p.word_dim, p.dim // p.n_slices
    lo, hi = plane * dw, (plane + 1) * dw
    out = []
    for s in range(p.n_slices):
        a, b = max(lo, s * width), min(hi, (s + 1) * width)
        if a >= b:
            continue
        if a == lo and b == hi:
            out.append((s, None))
        else:
            lane = lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)
            out.append((s, jnp.logical_and(lane >= a - lo, lane < b - lo)))
    return out


def _block_masks(p: Plan, grp_row):
    """same[(t, g), (t', k)] = [t == t'] [groups[t', k] == g] for one chunk: bool (c*G, c*K)."""
    c, g, k = p.chunk_tokens, p.n_groups, p.k
    shape = (c * g, c * k)
    r = lax.broadcasted_iota(jnp.int32, shape, 0)
    col = lax.broadcasted_iota(jnp.int32, shape, 1)
    r_tok = jnp.zeros(shape, jnp.int32)
    for t in range(1, c):                     # no vector integer division: count thresholds
        r_tok += (r >= t * g).astype(jnp.int32)
    # A range test rather than comparing two bool-derived ints: Mosaic folds that compare to
    # an i1 `cmpi`, which it cannot legalize.
    first = r_tok * k
    same = jnp.logical_and(col >= first, col < first + k)
    if g > 1:
        same = jnp.logical_and(same, (r - r_tok * g) == grp_row)
    return same


def _dot(a, b, contract_b: int):
    return lax.dot_general(a, b, (((1,), (contract_b,)), ((), ())),
                           precision=lax.Precision.HIGHEST, preferred_element_type=jnp.float32)


def _bf16_bits_hi(x):
    """f32 -> its bf16 rounding, as the high 16 bits of a uint32 (low bits zero)."""
    return lax.bitcast_convert_type(x.astype(jnp.bfloat16).astype(jnp.float32), jnp.uint32)


def _scratch(p: Plan, word_dtype):
    return [
        pltpu.VMEM((2, p.rows_per_tile, p.word_dim), word_dtype),
        pltpu.SMEM((2, p.rows_per_tile), jnp.int32),
        pltpu.SemaphoreType.DMA((2,)),
        pltpu.SemaphoreType.DMA((2,)),
    ]


def _grid_specs(p: Plan):
    n = p.tiles_per_core
    blocks_per_tile = p.tile_tokens // p.chunk_tokens
    ck, cg = p.chunk_tokens * p.k, p.chunk_tokens * p.n_groups

    def tile_map(core, j):
        return (core * n + j, 0, 0)

    def block(second, last):
        return pl.BlockSpec((blocks_per_tile, second, last), tile_map)

    return (p.num_cores, n), block, ck, cg


def _compiler_params(tiles: TpuTiles):
    return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"),
                                vmem_limit_bytes=tiles.vmem_limit_bytes)


# ------------------------------------------------------------------------------------- bag

def bag(p: Plan, tiles: TpuTiles, idx, w, groups, table, *, pack_output: bool,
        interpret=False):
    """Weighted gather-reduce on padded, kernel-layout operands (shapes in the module docstring).
    Returns a list of f32 planes, or [uint32 words] when ``pack_output`` (bf16 tables only)."""
    grid, block, ck, cg = _grid_specs(p)
    n_chunks = p.tile_tokens // p.chunk_tokens
    dw = p.word_dim
    n_planes = 2 if p.packed else 1
    pack = pack_output and p.packed

    def kernel(idx_hbm, w_ref, g_ref, table_hbm, *refs):
        out_refs = refs[:1 if pack else n_planes]
        rows, idx_sm, row_sem, idx_sem = refs[len(out_refs):]
        slot = _row_pipeline(p, idx_hbm, table_hbm, rows, idx_sm, row_sem, idx_sem,
                             tiles.dma_unroll)
        plane_slices = [_plane_slices(p, i, (cg, dw)) for i in range(n_planes)]

        def chunk(q, carry):
            start = pl.multiple_of(q * ck, 8)
            planes = _planes(p, rows[slot, pl.ds(start, ck), :])
            same = _block_masks(p, g_ref[q] if p.n_groups > 1 else None)
            w_q = w_ref[q]                                            # (S, c*K)
            coefs = {}
            outs = []
            for plane, slices in zip(planes, plane_slices):
                acc = None
                for s, mask in slices:
                    if s not in coefs:                                 # (c*G, c*K)
                        coefs[s] = jnp.where(same, w_q[s:s + 1, :], 0.0)
                    o = _dot(coefs[s], plane, 0)                       # (c*G, Dw)
                    if mask is not None:
                        o = jnp.where(mask, o, 0.0)
                    acc = o if acc is None else acc + o
                outs.append(acc)
            if pack:
                out_refs[0][q] = jnp.bitwise_or(
                    jnp.bitwise_and(_bf16_bits_hi(outs[1]), jnp.uint32(0xFFFF0000)),
                    jnp.right_shift(_bf16_bits_hi(outs[0]), jnp.uint32(16)))
            else:
                for ref, o in zip(out_refs, outs):
                    ref[q] = o
            return carry

        lax.fori_loop(0, n_chunks, chunk, 0)

    n_blocks = p.n_tokens // p.chunk_tokens
    if pack:
        out_shape = [jax.ShapeDtypeStruct((n_blocks, cg, dw), jnp.uint32)]
    else:
        out_shape = [jax.ShapeDtypeStruct((n_blocks, cg, dw), jnp.float32)] * n_planes
    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    call = pl.pallas_call(
        kernel,
        out_shape=out_shape,
        grid=grid,
        in_specs=[any_spec, block(p.n_slices, ck), block(1, ck), any_spec],
        out_specs=[block(cg, dw)] * len(out_shape),
        scratch_shapes=_scratch(p, table.dtype),
        compiler_params=_compiler_params(tiles),
        interpret=interpret,
        name="embedding_bag_tpu",
    )
    return call(idx, w, groups, table)


# ------------------------------------------------------------------------------ gather_dot

def gather_dot(p: Plan, tiles: TpuTiles, idx, ys, groups, table, *, interpret=False):
    """dw[t, k, s] = sum_g [groups[t, k] == g] <y[t, g, slice s], row(idx[t, k])[slice s]>.
    ``ys`` are f32 planes matching the table's row planes; returns f32 [T/c, S, c*K]."""
    grid, block, ck, cg = _grid_specs(p)
    n_chunks = p.tile_tokens // p.chunk_tokens
    dw = p.word_dim
    n_planes = len(ys)

    def kernel(idx_hbm, *refs):
        y_refs = refs[:n_planes]
        g_ref, table_hbm, out_ref, rows, idx_sm, row_sem, idx_sem = refs[n_planes:]
        slot = _row_pipeline(p, idx_hbm, table_hbm, rows, idx_sm, row_sem, idx_sem,
                             tiles.dma_unroll)
        plane_slices = [_plane_slices(p, i, (cg, dw)) for i in range(n_planes)]

        def chunk(q, carry):
            start = pl.multiple_of(q * ck, 8)
            planes = _planes(p, rows[slot, pl.ds(start, ck), :])
            same = _block_masks(p, g_ref[q] if p.n_groups > 1 else None)
            prods = [None] * p.n_slices
            for y_ref, plane, slices in zip(y_refs, planes, plane_slices):
                y = y_ref[q]                                           # (c*G, Dw)
                for s, mask in slices:
                    ys = y if mask is None else jnp.where(mask, y, 0.0)
                    d = _dot(ys, plane, 1)                             # (c*G, c*K)
                    prods[s] = d if prods[s] is None else prods[s] + d
            for s in range(p.n_slices):
                if prods[s] is None:
                    out_ref[q, pl.ds(s, 1), :] = jnp.zeros((1, ck), jnp.float32)
                else:
                    sel = jnp.where(same, prods[s], 0.0)
                    out_ref[q, pl.ds(s, 1), :] = jnp.sum(sel, axis=0, keepdims=True)
            return carry

        lax.fori_loop(0, n_chunks, chunk, 0)

    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    call = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((p.n_tokens // p.chunk_tokens, p.n_slices, ck),
                                       jnp.float32),
        grid=grid,
        in_specs=[any_spec] + [block(cg, dw)] * n_planes + [block(1, ck), any_spec],
        out_specs=block(p.n_slices, ck),
        scratch_shapes=_scratch(p, table.dtype),
        compiler_params=_compiler_params(tiles),
        interpret=interpret,
        name="embedding_gather_dot_tpu",
    )
    return call(idx, *ys, groups, table)


# --------------------------------------------------------------------- layout conversions

def to_kernel_layout(p: Plan, indices, weights, groups):
    """[T, K] indices (already clamped), f32 [T, K, S] weights (zero at pads), [T, K] groups ->
    the padded kernel operands (idx tiles, w blocks, group blocks)."""
    t, k = indices.shape
    pad_t, pad_k = p.n_tokens - t, p.k - k
    idx = jnp.pad(indices.astype(jnp.int32), ((0, pad_t), (0, pad_k)))
    w = jnp.pad(weights.astype(jnp.float32), ((0, pad_t), (0, pad_k), (0, 0)))
    grp = jnp.pad(groups.astype(jnp.int32), ((0, pad_t), (0, pad_k)))
    c, ck = p.chunk_tokens, p.chunk_tokens * p.k
    idx = idx.reshape(p.n_tokens // p.tile_tokens, p.rows_per_tile)
    w = w.reshape(p.n_tokens // c, c, p.k, p.n_slices).transpose(0, 3, 1, 2).reshape(
        p.n_tokens // c, p.n_slices, ck)
    grp = grp.reshape(p.n_tokens // c, 1, ck)
    return idx, w, grp


def rows_to_planes(p: Plan, y):
    """f32 [T, G, Dv] (T padded) -> the kernel's y planes [T/c, c*G, Dw] (the two column halves
    for packed bf16 tables)."""
    c = p.chunk_tokens
    shape = (p.n_tokens // c, c * p.n_groups, p.word_dim)
    if not p.packed:
        return [y.reshape(shape)]
    h = p.word_dim
    return [y[..., :h].reshape(shape), y[..., h:].reshape(shape)]


def planes_to_rows(p: Plan, outs, n_tokens: int):
    """Bag kernel outputs -> [n_tokens, G, Dv] (f32 planes are concatenated; packed words are
    unpacked to bf16)."""
    if outs[0].dtype == jnp.uint32:
        words = outs[0].reshape(p.n_tokens, p.n_groups, p.word_dim)[:n_tokens]
        return unpack_bf16_words(words)
    planes = [o.reshape(p.n_tokens, p.n_groups, p.word_dim)[:n_tokens] for o in outs]
    return planes[0] if len(planes) == 1 else jnp.concatenate(planes, axis=-1)


@functools.lru_cache(maxsize=None)
def interpret_params(detect_races: bool = True):
    """TPU-semantics interpreter: DMA/semaphore simulation, race and dynamic-OOB detection."""
    return pltpu.InterpretParams(detect_races=detect_races, out_of_bounds_reads="raise")
