"""Triton (Pallas) forward kernel of the embedding bag: one program per (token, block of value
columns), a loop over the K slots that loads one row block per slot and accumulates
``w * row`` in f32 registers, one store per group. Each gathered row is read once from HBM and
nothing of size [T, K, Dv] is materialised (XLA's gather + einsum writes and re-reads the
gathered rows unless it fuses the gather into the reduction).

Not the GPU default in ``api.py``: it lowers for CUDA (``jax.export(..., platforms=["cuda"])``)
and matches the reference in interpret mode, but it has never been compiled by Triton or timed
on a GPU here, and Pallas' Triton backend is deprecated from jax 0.11. The backward stays XLA.

Shapes: values [N, Dv]; idx int32 [T, K] clamped to [0, N); w f32 [T, K, S] (zero at padded
slots); groups int32 [T, K] -> [T, G, Dv] in values.dtype. ``block_dim`` is a power of two that
divides Dv / S (so a column block lies in one value slice).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels_pallas.embedding_bag.config import GpuTiles


def column_block(dim: int, n_slices: int, tiles: GpuTiles) -> int:
    """Largest power of two <= tiles.block_dim dividing the slice width Dv / S."""
    width = dim // n_slices
    b = 1
    while b * 2 <= tiles.block_dim and width % (b * 2) == 0:
        b *= 2
    return b


def bag(values, idx, w, groups, n_groups: int, tiles: GpuTiles, *, interpret=False):
    """Forward bag (see the module docstring) -> [T, G, Dv] in values.dtype."""
    t, k = idx.shape
    n_slices = w.shape[-1]
    dim = values.shape[1]
    bd = column_block(dim, n_slices, tiles)
    slice_width = dim // n_slices
    if bd < 16:
        raise ValueError(f"pallas_gpu: the value slice width Dv/S={slice_width} has no power-of-"
                         "two column block >= 16; use implementation='xla'")

    def kernel(idx_ref, w_ref, g_ref, table_ref, out_ref):
        tok = pl.program_id(0)
        d0 = pl.program_id(1) * bd
        s = d0 // slice_width
        cols = pl.ds(pl.multiple_of(d0, bd), bd)

        def body(j, accs):
            row_id = idx_ref[tok, j]
            coef = w_ref[tok, j, s]
            row = table_ref[row_id, cols].astype(jnp.float32) * coef
            if n_groups == 1:
                return (accs[0] + row,)
            g = g_ref[tok, j]
            return tuple(a + jnp.where(g == gi, row, 0.0) for gi, a in enumerate(accs))

        zero = jnp.zeros((bd,), jnp.float32)
        accs = lax.fori_loop(0, k, body, (zero,) * n_groups)
        for gi, a in enumerate(accs):
            out_ref[tok, gi, cols] = a.astype(out_ref.dtype)

    any_spec = pl.BlockSpec(memory_space=pl.ANY)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((t, n_groups, dim), values.dtype),
        grid=(t, dim // bd),
        in_specs=[any_spec] * 4,
        out_specs=any_spec,
        compiler_params=pltriton.CompilerParams(num_warps=tiles.num_warps,
                                                num_stages=tiles.num_stages),
        interpret=interpret,
        name="embedding_bag_triton",
    )(idx, w, groups, values)
