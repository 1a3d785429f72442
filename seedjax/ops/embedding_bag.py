"""Weighted gather-reduce of memory-table rows (an embedding bag), the memory-bandwidth-bound
half of every memory layer, and the PEER-style row dot product. Entry points for the XLA
reference and (through ``implementation=``) the Pallas kernels.

embedding_bag (with optional value slices S and output groups G):

    out[..., g, s] = sum_k [groups[..., k] == g] * weights[..., k, s] * values[indices[..., k], s]

where ``values[i, s]`` is slice s of row i (Dv split into S equal slices of Dv/S). S = 1 with
[..., K] weights is PKM's read; S = h_c slices weighted by per-core scores is UltraMem's
Multi-Core Scoring; G = E groups is UltraMem's Implicit Value Expansion (each group is later
projected by its own W_p). Without ``groups`` the G axis is dropped.

row_dot (PEER / UltraMemV2 pre-value coefficients):

    out[..., k] = < table[indices[..., k]], x[...] >

The XLA implementations gather with ``jnp.take`` (whose transpose, the gradient to the table,
is XLA's scatter-add; duplicate indices add up) and accumulate in at least float32. Indices
outside [0, N) read a zero row and receive no gradient (a "pad slot" for sharded lookups).

Shapes:
    embedding_bag: values [N, Dv]; indices int [..., K]; weights [..., K] or [..., K, S];
                   groups int [..., K] in [0, n_groups) -> [..., Dv] or [..., n_groups, Dv]
    weighted_value_sum: values [N, Dv]; indices, weights [..., K] -> [..., Dv]
    row_dot: table [N, Dp]; indices int [..., K]; x [..., Dp] -> [..., K] (float32 or wider)
All outputs of embedding_bag have ``values.dtype``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from seedjax.ops.common import check_implementation, resolve_implementation, score_dtype


def _check_table(fn: str, table, indices) -> None:
    if table.ndim != 2:
        raise ValueError(f"{fn}: the table must be [N, D], got shape {table.shape}")
    if indices.ndim < 1:
        raise ValueError(f"{fn}: indices must be [..., K] with at least one dim")
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"{fn}: indices must be integers, got {indices.dtype}")


def gather_rows(table: jax.Array, indices: jax.Array) -> jax.Array:
    """table [N, D], indices [...] -> [..., D]; indices outside [0, N) (negative ones too) read a
    zero row and pass no gradient."""
    n = table.shape[0]
    safe = jnp.where((indices >= 0) & (indices < n), indices, n)   # negative would wrap
    return jnp.take(table, safe, axis=0, mode="fill", fill_value=0)


def embedding_bag(values: jax.Array, indices: jax.Array, weights: jax.Array, *,
                  groups: jax.Array | None = None, n_groups: int = 1,
                  implementation: str = "auto") -> jax.Array:
    """Weighted sum of gathered rows, optionally per value slice and per output group (see the
    module docstring). Returns [..., Dv] (no ``groups``) or [..., n_groups, Dv]."""
    fn = "embedding_bag"
    check_implementation(fn, implementation)
    _check_table(fn, values, indices)
    sliced = weights.ndim == indices.ndim + 1
    if weights.shape[:indices.ndim] != indices.shape or not (sliced or
                                                             weights.ndim == indices.ndim):
        raise ValueError(f"{fn}: weights shape {weights.shape} must be indices shape "
                         f"{indices.shape} or that plus a slice axis [..., K, S]")
    n_slices = weights.shape[-1] if sliced else 1
    if values.shape[1] % n_slices:
        raise ValueError(f"{fn}: value dim {values.shape[1]} is not divisible by the number of "
                         f"weight slices S={n_slices}")
    if groups is not None:
        if groups.shape != indices.shape:
            raise ValueError(f"{fn}: groups shape {groups.shape} != indices shape "
                             f"{indices.shape}")
        if isinstance(n_groups, bool) or not isinstance(n_groups, int) or n_groups < 1:
            raise ValueError(f"{fn}: n_groups={n_groups!r} must be a positive integer")
    impl = resolve_implementation(implementation, values, weights)
    if impl != "xla":
        from kernels_pallas.embedding_bag import api

        from seedjax.ops.token_shards import over_token_shards
        k = indices.shape[-1]
        tokens = [(indices.reshape(-1, k), -1),                     # -1: a pad slot
                  (weights.reshape(-1, *weights.shape[indices.ndim - 1:]), 0)]
        if groups is not None:
            tokens.append((groups.reshape(-1, k), 0))
        kernel = lambda i, wt, *rest: api.embedding_bag(
            rest[-1], i, wt, groups=rest[0] if groups is not None else None,
            n_groups=n_groups, implementation=impl)
        out = over_token_shards(kernel, tokens, [values])
        return out.reshape(*indices.shape[:-1], *out.shape[1:])
    w = weights if sliced else weights[..., None]
    return _embedding_bag_xla(values, indices, w, groups, n_groups)


def _embedding_bag_xla(values, indices, weights, groups, n_groups):
    acc = score_dtype(values, weights)
    n_slices = weights.shape[-1]
    rows = gather_rows(values, indices)                                      # [..., K, Dv]
    rows = rows.reshape(*rows.shape[:-1], n_slices, -1).astype(acc)         # [..., K, S, Dv/S]
    w = weights.astype(acc)
    if groups is None and n_slices == 1:
        out = jnp.einsum("...k,...kd->...d", w[..., 0], rows[..., 0, :], preferred_element_type=acc)
        return out.astype(values.dtype)
    if groups is None:
        # every (slice weight, value column) pair from the rows in their gathered layout, then
        # the S diagonal blocks: S x the (tiny) FLOPs, but no transposed copy of the rows
        full = jnp.einsum("...ks,...kd->...sd", w, rows.reshape(*rows.shape[:-2], -1),
                          preferred_element_type=acc)                       # [..., S, Dv]
        dv = full.shape[-1] // n_slices
        out = jnp.stack([full[..., s, s * dv:(s + 1) * dv] for s in range(n_slices)], axis=-2)
        return out.reshape(*out.shape[:-2], -1).astype(values.dtype)
    onehot = jax.nn.one_hot(groups, n_groups, dtype=acc)                     # [..., K, G]
    out = jnp.einsum("...kg,...ks,...ksd->...gsd", onehot, w, rows, preferred_element_type=acc)
    return out.reshape(*out.shape[:-2], -1).astype(values.dtype)


def weighted_value_sum(values: jax.Array, indices: jax.Array, weights: jax.Array, *,
                       implementation: str = "auto") -> jax.Array:
    """``out[..., :] = sum_k weights[..., k] * values[indices[..., k], :]`` -> [..., Dv] (PKM's
    read; ``embedding_bag`` without slices or groups)."""
    if indices.shape != weights.shape:
        raise ValueError(f"weighted_value_sum: indices shape {indices.shape} != weights shape "
                         f"{weights.shape}")
    return embedding_bag(values, indices, weights, implementation=implementation)


def row_dot(table: jax.Array, indices: jax.Array, x: jax.Array, *,
            implementation: str = "auto") -> jax.Array:
    """``out[..., k] = <table[indices[..., k]], x[...]>`` -> [..., K] in float32 or wider."""
    fn = "row_dot"
    check_implementation(fn, implementation)
    _check_table(fn, table, indices)
    if x.shape != indices.shape[:-1] + (table.shape[1],):
        raise ValueError(f"{fn}: x shape {x.shape} must be indices' leading shape "
                         f"{indices.shape[:-1]} plus the table dim ({table.shape[1]},)")
    impl = resolve_implementation(implementation, table, x)
    if impl != "xla":
        from kernels_pallas.embedding_bag import api

        from seedjax.ops.token_shards import over_token_shards
        k = indices.shape[-1]
        kernel = lambda i, xx, tab: api.row_dot(tab, i, xx, implementation=impl)
        out = over_token_shards(kernel, [(indices.reshape(-1, k), -1),
                                         (x.reshape(-1, x.shape[-1]), 0)], [table])
        return out.reshape(indices.shape)
    acc = score_dtype(table, x)
    rows = gather_rows(table, indices)                                       # [..., K, Dp]
    return jnp.einsum("...kd,...d->...k", rows.astype(acc), x.astype(acc),
                      preferred_element_type=acc)
