"""Product-key retrieval (PKM's additive two-stage top-k): the entry point that memory layers call
and that Pallas kernels plug into through ``implementation=``.

Product-key top-k (PKM, Lample et al. 2019). A head's key set is the Cartesian product of two
sub-key codebooks k1, k2 [n_sub, Dk/2], so slot (i, j), flat index i * n_sub + j, has the
additive score

    s(i, j) = <q1, k1_i> + <q2, k2_j>,        N = n_sub^2 slots, never materialised.

Two stages: I1 = top_{k_s}(k1 q1), I2 = top_{k_s}(k2 q2) (k_s = ``topk_side``), then the
k_s x k_s candidate grid s1[a] + s2[b] and its top-``topk``. This is exact whenever
topk <= k_s (PKM's setting): a cell (i, j) with i outside I1 is beaten by the k_s cells (i', j),
i' in I1 (same for j), so it cannot be among the top-topk (up to ties). It is also exact when
k_s = n_sub (nothing is pruned). k_s < topk <= k_s^2 is allowed (UltraMemV2 caps the side at
128 below its TopM) but then returns the top-topk of the candidate grid: an approximation whose
first k_s entries are still the exact global ones.

The value read that follows lives in ``seedjax.ops.embedding_bag``.

Shapes:
    product_key_topk: q1, q2 [..., H, Dk/2]; k1, k2 [H, n_sub, Dk/2]
                      -> scores [..., H, topk] (float, descending), indices [..., H, topk] int32
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from seedjax.ops.common import INT32_MAX as _INT32_MAX
from seedjax.ops.common import check_implementation as _check_implementation
from seedjax.ops.common import resolve_implementation, top_k
from seedjax.ops.common import score_dtype as _score_dtype


def check_product_key_args(q_shape, k_shape, *, topk_side: int, topk: int) -> None:
    """Validates a product-key retrieval: q [..., H, d], k [H, n_sub, d]."""
    for name, v in (("topk_side", topk_side), ("topk", topk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"product_key_topk: {name}={v!r} must be a positive integer")
    if len(k_shape) != 3:
        raise ValueError(f"product_key_topk: sub-keys must be [H, n_sub, Dk/2], got shape "
                         f"{tuple(k_shape)}")
    if len(q_shape) < 2:
        raise ValueError(f"product_key_topk: half-queries must be [..., H, Dk/2], got shape "
                         f"{tuple(q_shape)}")
    heads, n_sub, half = k_shape
    if q_shape[-2] != heads or q_shape[-1] != half:
        raise ValueError(f"product_key_topk: half-query dims (H, Dk/2)={tuple(q_shape[-2:])} do "
                         f"not match the sub-keys' (H, Dk/2)={(heads, half)}")
    if n_sub * n_sub > _INT32_MAX:
        raise ValueError(f"product_key_topk: n_sub={n_sub} gives {n_sub * n_sub} slots, more "
                         "than int32 indices can address")
    if topk_side > n_sub:
        raise ValueError(f"product_key_topk: topk_side={topk_side} exceeds the number of "
                         f"sub-keys per side n_sub={n_sub}")
    if topk > topk_side * topk_side:
        raise ValueError(f"product_key_topk: topk={topk} exceeds the candidate grid "
                         f"topk_side**2={topk_side * topk_side}")


def product_key_topk(q1: jax.Array, q2: jax.Array, k1: jax.Array, k2: jax.Array, *,
                     topk_side: int, topk: int, implementation: str = "auto"
                     ) -> tuple[jax.Array, jax.Array]:
    """Top-``topk`` over the n_sub^2 product keys of each head: exact if topk <= topk_side or
    topk_side == n_sub, otherwise the top of the candidate grid (see the module docstring).

    Returns ``(scores [..., H, topk], indices [..., H, topk] int32)``, scores in descending
    order, index = i1 * n_sub + i2. Scores are computed in float32 (or wider) and are
    differentiable w.r.t. q1, q2, k1 and k2 (through the selected entries only).
    """
    _check_implementation("product_key_topk", implementation)
    if q1.shape != q2.shape:
        raise ValueError(f"product_key_topk: q1 shape {q1.shape} != q2 shape {q2.shape}")
    if k1.shape != k2.shape:
        raise ValueError(f"product_key_topk: k1 shape {k1.shape} != k2 shape {k2.shape}")
    check_product_key_args(q1.shape, k1.shape, topk_side=topk_side, topk=topk)
    impl = resolve_implementation(implementation, q1, q2, k1, k2)
    if impl != "xla":
        from kernels_pallas.pk_retrieval import api

        from seedjax.ops.token_shards import over_token_shards
        kernel = lambda a, b, c, d: api.product_key_topk(a, b, c, d, topk_side=topk_side,
                                                         topk=topk, implementation=impl)
        flat = lambda q: q.reshape(-1, *q.shape[-2:])
        s, i = over_token_shards(kernel, [(flat(q1), 0), (flat(q2), 0)], [k1, k2])
        return s.reshape(*q1.shape[:-1], topk), i.reshape(*q1.shape[:-1], topk)
    return _product_key_topk_xla(q1, q2, k1, k2, topk_side=topk_side, topk=topk)


def _side_scores(q: jax.Array, k: jax.Array, dtype) -> jax.Array:
    """q [T, H, d] . k [H, n, d] -> [T, H, n] (batched over heads)."""
    return jnp.einsum("thd,hnd->thn", q.astype(dtype), k.astype(dtype),
                      preferred_element_type=dtype)


def _product_key_topk_xla(q1, q2, k1, k2, *, topk_side: int, topk: int):
    lead = q1.shape[:-2]
    heads, n_sub, half = k1.shape
    dtype = _score_dtype(q1, q2, k1, k2)
    q1 = q1.reshape(-1, heads, half)
    q2 = q2.reshape(-1, heads, half)
    s1, i1 = top_k(_side_scores(q1, k1, dtype), topk_side)   # [T, H, ks]
    s2, i2 = top_k(_side_scores(q2, k2, dtype), topk_side)
    grid = (s1[..., :, None] + s2[..., None, :]).reshape(*s1.shape[:-1], topk_side * topk_side)
    scores, flat = top_k(grid, topk)                           # [T, H, topk]
    row = jnp.take_along_axis(i1, flat // topk_side, axis=-1)
    col = jnp.take_along_axis(i2, flat % topk_side, axis=-1)
    indices = (row * n_sub + col).astype(jnp.int32)
    return scores.reshape(*lead, heads, topk), indices.reshape(*lead, heads, topk)
