"""Pure-JAX specification of the embedding bag and the row dot (flattened tokens).

    embedding_bag: out[t, g, s-th slice] = sum_k [groups[t, k] == g] * w[t, k, s]
                                                 * values[indices[t, k], s-th slice]
    row_dot:       out[t, k] = < table[indices[t, k]], x[t] >

Shapes: values [N, Dv]; indices int [T, K]; w [T, K, S] with Dv % S == 0 (slice s is columns
[s*Dv/S, (s+1)*Dv/S)); groups int [T, K] (values outside [0, G) select no group) or None
(G = 1); out [T, G, Dv] in values.dtype. row_dot: table [N, Dp], x [T, Dp] -> [T, K].
Indices outside [0, N) read a zero row and receive no gradient. Products and sums are formed
in float32 (or wider, e.g. float64 under x64). The gradients of these functions (jax.grad) are
the reference for the kernels' custom VJPs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def acc_dtype(*xs) -> jnp.dtype:
    """float32 at least; wider inputs keep their width."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def gather_rows(table: jax.Array, indices: jax.Array) -> jax.Array:
    """table [N, D], indices int [...] -> [..., D]; out-of-range (and negative) indices read
    zeros and pass no gradient."""
    n = table.shape[0]
    safe = jnp.where((indices >= 0) & (indices < n), indices, n)
    return jnp.take(table, safe, axis=0, mode="fill", fill_value=0)


def embedding_bag(values: jax.Array, indices: jax.Array, weights: jax.Array,
                  groups: jax.Array | None = None, n_groups: int = 1) -> jax.Array:
    """values [N, Dv], indices [T, K], weights [T, K, S], groups [T, K] | None -> [T, G, Dv]."""
    acc = acc_dtype(values, weights)
    n_slices = weights.shape[-1]
    rows = gather_rows(values, indices).astype(acc)                     # [T, K, Dv]
    rows = rows.reshape(*rows.shape[:-1], n_slices, -1)                 # [T, K, S, Dv/S]
    if groups is None:
        onehot = jnp.ones(indices.shape + (1,), acc)
    else:
        onehot = jax.nn.one_hot(groups, n_groups, dtype=acc)            # [T, K, G]
    out = jnp.einsum("tkg,tks,tksd->tgsd", onehot, weights.astype(acc), rows,
                     preferred_element_type=acc, precision="highest")
    return out.reshape(*out.shape[:2], -1).astype(values.dtype)


def row_dot(table: jax.Array, indices: jax.Array, x: jax.Array) -> jax.Array:
    """table [N, Dp], indices [T, K], x [T, Dp] -> [T, K] in float32 (or wider)."""
    acc = acc_dtype(table, x)
    rows = gather_rows(table, indices).astype(acc)                      # [T, K, Dp]
    return jnp.einsum("tkd,td->tk", rows, x.astype(acc), preferred_element_type=acc,
                      precision="highest")
