"""Public entry points: ``embedding_bag`` and ``row_dot`` with an ``implementation=`` switch and
custom VJPs for the kernel paths.

    embedding_bag(values [N, Dv], indices int [..., K], weights [..., K] | [..., K, S],
                  groups int [..., K] | None, n_groups) -> [..., Dv] | [..., n_groups, Dv]
        out[..., g, slice s] = sum_k [groups == g] w[..., k, s] values[indices[..., k], slice s]
    row_dot(table [N, Dp], indices int [..., K], x [..., Dp]) -> [..., K] float32
        out[..., k] = < table[indices[..., k]], x >

Indices outside [0, N) read zero rows and get no gradient; accumulation is in float32; the bag
returns values.dtype.

implementation:
  None          by ``jax.default_backend()``: tpu -> "pallas_tpu" (float32/bfloat16 tables, else
                "xla"); gpu -> "xla"; cpu -> "xla". On GPU the Triton kernel is opt-in
                ("pallas_gpu"): it lowers for CUDA but has not been compiled or timed on a GPU, so
                XLA's gather + einsum stays the default there.
  "xla"         the pure-JAX reference (``reference.py``), differentiated by JAX.
  "pallas_tpu"  Mosaic TPU DMA kernels (``tpu.py``): forward bag, and in the VJP the gather-dot
                kernel for d_weights plus an XLA scatter-add (f32) for d_values.
  "interpret"   the same TPU kernels under ``interpret`` (True: the fast HLO interpreter, or a
                ``pltpu.InterpretParams`` for the TPU-semantics simulator with race detection).
  "pallas_gpu"  Triton forward (``gpu.py``); the backward is XLA.
row_dot's kernel path is the gather-dot kernel forward; its VJP uses the bag kernel for d_x.
There is no fused PEER kernel (row_dot on the pre-value rows, times the score, then the bag of
value rows): the two steps read different tables, so fusing them would save only the [T, K]
coefficients' round trip (K floats per token against K rows per token), not row traffic.

Under a mesh, call these inside ``jax.shard_map`` (Mosaic kernels are not auto-partitioned).
bfloat16 tables are bit-packed to uint32 row words for the TPU kernels (``tpu.pack_bf16_table``):
XLA fuses that into whatever produced the bf16 table (e.g. the cast of f32 params), but it is a
full pass over the table; f32 tables are gathered in place.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from kernels_pallas.embedding_bag import gpu, reference, tpu
from kernels_pallas.embedding_bag.config import (GPU_TILES, TPU_TILES, GpuTiles, TpuTiles,
                                                 gpu_tiles, tpu_tiles)

IMPLEMENTATIONS = ("xla", "pallas_tpu", "pallas_gpu", "interpret")


def default_implementation(dtype=None, backend: str | None = None) -> str:
    """The implementation ``implementation=None`` picks (see the module docstring)."""
    backend = backend or jax.default_backend()
    if backend == "tpu" and (dtype is None or jnp.dtype(dtype) in tpu.SUPPORTED_DTYPES):
        return "pallas_tpu"
    return "xla"


@dataclasses.dataclass(frozen=True)
class _Opts:
    impl: str
    n_groups: int
    tiles: Any            # TpuTiles | GpuTiles | None
    interpret: Any        # False | True | pltpu.InterpretParams


# ------------------------------------------------------------------------------ validation

def _check_table(fn, table, indices):
    if table.ndim != 2:
        raise ValueError(f"{fn}: the table must be [N, D], got shape {table.shape}")
    if not jnp.issubdtype(table.dtype, jnp.floating):
        raise ValueError(f"{fn}: the table must be floating point, got {table.dtype}")
    if indices.ndim < 1:
        raise ValueError(f"{fn}: indices must be [..., K] with at least one dim, got shape "
                         f"{indices.shape}")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"{fn}: indices must be integers, got {indices.dtype}")


def _resolve(fn, implementation, dtype, dim, n_slices, tiles, interpret) -> _Opts:
    impl = default_implementation(dtype) if implementation is None else implementation
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"{fn}: implementation={implementation!r} is unknown; allowed: None or "
                         f"one of {IMPLEMENTATIONS}")
    if impl in ("pallas_tpu", "interpret"):
        if jnp.dtype(dtype) not in tpu.SUPPORTED_DTYPES:
            raise ValueError(f"{fn}: implementation={impl!r} supports float32 and bfloat16 "
                             f"tables, got {jnp.dtype(dtype)}")
        if jnp.dtype(dtype) == jnp.bfloat16 and dim % 2:
            raise ValueError(f"{fn}: bfloat16 tables need an even row dim for the packed-row "
                             f"TPU kernel, got D={dim}")
        if tiles is None:
            tiles = TPU_TILES["interpret"] if impl == "interpret" else tpu_tiles()
        if not isinstance(tiles, TpuTiles):
            raise ValueError(f"{fn}: tiles must be a TpuTiles for {impl!r}, got {tiles!r}")
    elif impl == "pallas_gpu":
        if tiles is None:
            tiles = gpu_tiles(jax.devices()[0].device_kind) if jax.default_backend() == "gpu" \
                else GPU_TILES["gpu"]
        if not isinstance(tiles, GpuTiles):
            raise ValueError(f"{fn}: tiles must be a GpuTiles for 'pallas_gpu', got {tiles!r}")
    if impl != "interpret":
        interpret = False
    return _Opts(impl=impl, n_groups=1, tiles=tiles, interpret=interpret)


# ---------------------------------------------------------------------------- embedding_bag

def embedding_bag(values: jax.Array, indices: jax.Array, weights: jax.Array, *,
                  groups: jax.Array | None = None, n_groups: int = 1,
                  implementation: str | None = None, tiles: TpuTiles | GpuTiles | None = None,
                  interpret: Any = True) -> jax.Array:
    """Weighted gather-reduce of table rows (module docstring). ``tiles`` overrides the per-chip
    tile table (``config.py``); ``interpret`` is used by implementation="interpret" only."""
    fn = "embedding_bag"
    _check_table(fn, values, indices)
    sliced = weights.ndim == indices.ndim + 1
    if weights.shape[:indices.ndim] != indices.shape or not (sliced or
                                                             weights.ndim == indices.ndim):
        raise ValueError(f"{fn}: weights shape {weights.shape} must be the indices shape "
                         f"{indices.shape} or that plus a slice axis [..., K, S]")
    if not jnp.issubdtype(weights.dtype, jnp.floating):
        raise ValueError(f"{fn}: weights must be floating point, got {weights.dtype}")
    n_slices = weights.shape[-1] if sliced else 1
    dim = values.shape[1]
    if n_slices < 1 or dim % n_slices:
        raise ValueError(f"{fn}: value dim Dv={dim} is not divisible by the number of weight "
                         f"slices S={n_slices}")
    if groups is not None:
        if groups.shape != indices.shape:
            raise ValueError(f"{fn}: groups shape {groups.shape} != indices shape "
                             f"{indices.shape}")
        if not jnp.issubdtype(groups.dtype, jnp.integer):
            raise ValueError(f"{fn}: groups must be integers, got {groups.dtype}")
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
            raise ValueError(f"{fn}: n_groups={n_groups!r} must be a positive integer")
    else:
        n_groups = 1
    opts = dataclasses.replace(
        _resolve(fn, implementation, values.dtype, dim, n_slices, tiles, interpret),
        n_groups=n_groups)

    lead, k = indices.shape[:-1], indices.shape[-1]
    t = math.prod(lead)
    idx = indices.reshape(t, k)
    w = weights.reshape(t, k, n_slices)
    grp = None if groups is None else groups.reshape(t, k)
    if t == 0 or k == 0:
        out = jnp.zeros((t, n_groups, dim), values.dtype)
    elif opts.impl == "xla":
        out = reference.embedding_bag(values, idx, w, grp, n_groups)
    else:
        if grp is None:
            grp = jnp.zeros((t, k), jnp.int32)
        else:  # group ids outside [0, G) contribute nothing (the kernels mask only G > 1)
            grp = grp.astype(jnp.int32)
            w = jnp.where(((grp >= 0) & (grp < n_groups))[..., None], w, jnp.zeros_like(w))
        out = _bag(opts, values, idx.astype(jnp.int32), w, grp)
    shape = lead + ((n_groups,) if groups is not None else ()) + (dim,)
    return out.reshape(shape)


def _valid_clamped(indices, n):
    valid = (indices >= 0) & (indices < n)
    return valid, jnp.where(valid, indices, 0)


def _bag_forward(opts: _Opts, values, idx, w, grp, *, out_f32: bool = False):
    """Kernel forward on flat operands -> [T, G, Dv] (values.dtype, or f32 if ``out_f32``)."""
    t, k = idx.shape
    valid, idx_c = _valid_clamped(idx, values.shape[0])
    w = jnp.where(valid[..., None], w.astype(jnp.float32), 0.0)
    if opts.impl == "pallas_gpu":
        out = gpu.bag(values, idx_c, w, grp, opts.n_groups, opts.tiles)
        return out.astype(jnp.float32) if out_f32 else out
    p = tpu.plan(t, k, w.shape[-1], opts.n_groups, values.shape[1], values.dtype, opts.tiles)
    kidx, kw, kgrp = tpu.to_kernel_layout(p, idx_c, w, grp)
    table = tpu.pack_bf16_table(values) if p.packed else values
    outs = tpu.bag(p, opts.tiles, kidx, kw, kgrp, table, pack_output=p.packed and not out_f32,
                   interpret=opts.interpret)
    out = tpu.planes_to_rows(p, outs, t)
    return out if out_f32 else out.astype(values.dtype)


def _gather_dot(opts: _Opts, values, idx, y, grp, n_slices):
    """d[t, k, s] = sum_g [grp == g] <y[t, g, slice s], values[idx[t, k], slice s]> (f32),
    zero at out-of-range indices. y: [T, G, Dv]."""
    t, k = idx.shape
    valid, idx_c = _valid_clamped(idx, values.shape[0])
    y = y.astype(jnp.float32)
    if opts.impl not in ("pallas_tpu", "interpret"):
        rows = reference.gather_rows(values, idx).astype(jnp.float32)
        rows = rows.reshape(t, k, n_slices, -1)
        y = y.reshape(t, opts.n_groups, n_slices, -1)
        onehot = jax.nn.one_hot(grp, opts.n_groups, dtype=jnp.float32)
        return jnp.einsum("tkg,tgsd,tksd->tks", onehot, y, rows, precision="highest")
    p = tpu.plan(t, k, n_slices, opts.n_groups, values.shape[1], values.dtype, opts.tiles)
    kidx, _, kgrp = tpu.to_kernel_layout(p, idx_c, jnp.zeros((t, k, n_slices), jnp.float32),
                                         grp)
    table = tpu.pack_bf16_table(values) if p.packed else values
    ys = tpu.rows_to_planes(p, jnp.pad(y, ((0, p.n_tokens - t), (0, 0), (0, 0))))
    d = tpu.gather_dot(p, opts.tiles, kidx, ys, kgrp, table, interpret=opts.interpret)
    c = p.chunk_tokens
    d = d.reshape(p.n_tokens // c, n_slices, c, p.k).transpose(0, 2, 3, 1)
    d = d.reshape(p.n_tokens, p.k, n_slices)[:t, :k]
    return jnp.where(valid[..., None], d, 0.0)


def _scatter_rows(n, idx, rows):
    """sum of rows [T, K, D] into an f32 [N, D] table at idx (out-of-range slots dropped)."""
    safe = jnp.where((idx >= 0) & (idx < n), idx, n)
    d = rows.shape[-1]
    return jnp.zeros((n, d), jnp.float32).at[safe.reshape(-1)].add(
        rows.reshape(-1, d).astype(jnp.float32), mode="drop")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _bag(opts: _Opts, values, idx, w, grp):
    return _bag_forward(opts, values, idx, w, grp)


def _bag_fwd(opts, values, idx, w, grp):
    return _bag_forward(opts, values, idx, w, grp), (values, idx, w, grp)


def _bag_bwd(opts, res, ct):
    values, idx, w, grp = res
    t, k, n_slices = w.shape
    ct = ct.astype(jnp.float32)                                       # [T, G, Dv]
    d_w = _gather_dot(opts, values, idx, ct, grp, n_slices)
    ct_s = ct.reshape(t, opts.n_groups, n_slices, -1)
    w32 = w.astype(jnp.float32)
    if opts.n_groups == 1:
        contrib = jnp.einsum("tks,tsd->tksd", w32, ct_s[:, 0])
    else:
        onehot = jax.nn.one_hot(grp, opts.n_groups, dtype=jnp.float32)
        contrib = jnp.einsum("tkg,tks,tgsd->tksd", onehot, w32, ct_s, precision="highest")
    d_values = _scatter_rows(values.shape[0], idx, contrib.reshape(t, k, -1))
    return d_values.astype(values.dtype), None, d_w.astype(w.dtype), None


_bag.defvjp(_bag_fwd, _bag_bwd)


# ---------------------------------------------------------------------------------- row_dot

def row_dot(table: jax.Array, indices: jax.Array, x: jax.Array, *,
            implementation: str | None = None, tiles: TpuTiles | None = None,
            interpret: Any = True) -> jax.Array:
    """``out[..., k] = <table[indices[..., k]], x[...]>`` -> [..., K] float32 (PEER's pre-value
    coefficients). implementation "pallas_gpu" is not provided for row_dot and raises."""
    fn = "row_dot"
    _check_table(fn, table, indices)
    if x.shape != indices.shape[:-1] + (table.shape[1],):
        raise ValueError(f"{fn}: x shape {x.shape} must be the indices' leading shape "
                         f"{indices.shape[:-1]} plus the table dim ({table.shape[1]},)")
    if implementation == "pallas_gpu":
        raise ValueError(f"{fn}: implementation='pallas_gpu' is not provided (no GPU gather-dot "
                         "kernel); use None, 'xla', 'pallas_tpu' or 'interpret'")
    opts = _resolve(fn, implementation, table.dtype, table.shape[1], 1, tiles, interpret)
    lead, k = indices.shape[:-1], indices.shape[-1]
    t = math.prod(lead)
    idx, xf = indices.reshape(t, k), x.reshape(t, -1)
    if t == 0 or k == 0:
        out = jnp.zeros((t, k), reference.acc_dtype(table, x))
    elif opts.impl == "xla":
        out = reference.row_dot(table, idx, xf)
    else:
        out = _row_dot(opts, table, idx.astype(jnp.int32), xf)
    return out.reshape(indices.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _row_dot(opts: _Opts, table, idx, x):
    grp = jnp.zeros(idx.shape, jnp.int32)
    return _gather_dot(opts, table, idx, x[:, None, :], grp, 1)[..., 0]


def _row_dot_fwd(opts, table, idx, x):
    return _row_dot(opts, table, idx, x), (table, idx, x)


def _row_dot_bwd(opts, res, ct):
    table, idx, x = res
    grp = jnp.zeros(idx.shape, jnp.int32)
    d_x = _bag_forward(opts, table, idx, ct[..., None], grp, out_f32=True)[:, 0]
    contrib = ct[..., None].astype(jnp.float32) * x[:, None, :].astype(jnp.float32)
    d_table = _scatter_rows(table.shape[0], idx, contrib)
    return d_table.astype(table.dtype), None, d_x.astype(x.dtype)


_row_dot.defvjp(_row_dot_fwd, _row_dot_bwd)
