"""Tucker-decomposed query-key retrieval (TDQKR; UltraMem arXiv 2411.12364, eqs. 6-10 as recapped
in UltraMemV2 §3.1) with Multi-Core Scoring: the retrieval entry point of UltraMem and
UltraMemV2, with an ``implementation=`` switch for the Pallas kernels.

Per head h (row side; the column side is the same with ``t``):

    S_row[j, ρ] = <q_row[ρ], K_row[j, ρ]>                 j < n row keys, ρ < r Tucker ranks
    G_c[i, j]   = sum_{ρ,σ} S_row[i, ρ] C_c[ρ, σ] S_col[j, σ]     core c < h_c;  G = sum_c G_c
    u, t        = leading left/right singular vectors of sum_c C_c   (stop-gradient)
    I_row       = top_{k_s}(S_row u),  I_col = top_{k_s}(S_col t)     rank-1 pre-selection
    (sel, G)    = top_{topk} of G on the k_s x k_s grid I_row x I_col  (exact rescoring)
    scores[.., c] = G_c at sel;  index = I_row[a] * n + I_col[b]

Scores are raw (no softmax), computed in float32 or wider; gradients reach the queries, keys
and cores through the exact scores of the selected cells. With k_s = n nothing is pre-selected
and the result is the exact top-``topk`` of the full n x n grid (brute force). With k_s < n the
rank-1 filter is a heuristic (exact only when C is rank 1 and the factors non-negative; see
``tests/ops/test_tucker_keys.py`` for measured recall).

``preselect="abs"`` (not in the papers) ranks rows and columns by |S u| instead, so cells
whose two factors are both large and negative (large positive products the papers' filter
never selects) are candidates too; measured recall is in the tests and the results pages.

SVD sign: u t^T is unique but (u, t) and (-u, -t) are both valid, and the separable filter is
not invariant to the flip. The official code aligns the sign to the previous step's vectors;
here the sign is fixed canonically so that sum(u) + sum(t) >= 0, which needs no state and
agrees with the Perron vectors of the non-negative cores at init (U(0,1) cores).

Shapes:
    tucker_rank1: cores [h_c, H, r, r] -> (u [H, r], t [H, r])
    tucker_topk:  q_row, q_col [..., H, r, Dk]; k_row, k_col [H, n, r, Dk] (``keys_layout=
                  "hnrd"``, the parameters' layout) or [H, r, n, Dk] ("hrnd"); cores
                  [h_c, H, r, r] -> (scores [..., H, topk, h_c] float, indices [..., H, topk]
                  int32 in [0, n^2))

Key layout: the score product contracts Dk per (head, rank), so XLA wants each rank's keys as
a contiguous [n, Dk] slab; from "hnrd" keys XLA:CPU copies the whole key table into that layout
at every call (not hoisted out of a decode loop either). Keys prepared once in "hrnd" (see
``TuckerRetrieval.prepare_decode``) are read in place: same values, same results.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from seedjax.ops.common import (INT32_MAX, check_implementation, resolve_implementation,
                                score_dtype, top_k)

PRESELECT = ("top", "abs")
KEYS_LAYOUTS = ("hnrd", "hrnd")


def tucker_rank1(cores: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Leading singular vectors (u, t) [H, r] of the summed core sum_c C_c, canonical sign,
    without gradient."""
    if cores.ndim != 4 or cores.shape[-1] != cores.shape[-2]:
        raise ValueError(f"tucker_rank1: cores must be [h_c, H, r, r], got shape {cores.shape}")
    c = jax.lax.stop_gradient(jnp.sum(cores.astype(score_dtype(cores)), axis=0))
    left, _, right_t = jnp.linalg.svd(c)                     # [H, r, r], [H, r], [H, r, r]
    u, t = left[..., :, 0], right_t[..., 0, :]
    sign = jnp.where(jnp.sum(u, -1) + jnp.sum(t, -1) < 0, -1.0, 1.0).astype(u.dtype)[:, None]
    return u * sign, t * sign


def check_tucker_args(q_shape, k_shape, cores_shape, *, topk_side: int, topk: int) -> None:
    """Validates a TDQKR retrieval (see the module docstring for the shapes)."""
    fn = "tucker_topk"
    for name, v in (("topk_side", topk_side), ("topk", topk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{fn}: {name}={v!r} must be a positive integer")
    if len(k_shape) != 4:
        raise ValueError(f"{fn}: keys must be [H, n, r, Dk], got shape {tuple(k_shape)}")
    heads, n, rank, dk = k_shape
    if len(q_shape) < 3 or tuple(q_shape[-3:]) != (heads, rank, dk):
        raise ValueError(f"{fn}: queries must be [..., H, r, Dk] = [..., {heads}, {rank}, {dk}], "
                         f"got shape {tuple(q_shape)}")
    if len(cores_shape) != 4 or tuple(cores_shape[1:]) != (heads, rank, rank):
        raise ValueError(f"{fn}: cores must be [h_c, H, r, r] = [h_c, {heads}, {rank}, {rank}], "
                         f"got shape {tuple(cores_shape)}")
    if n * n > INT32_MAX:
        raise ValueError(f"{fn}: n={n} keys per side give more slots than int32 can address")
    if topk_side > n:
        raise ValueError(f"{fn}: topk_side={topk_side} exceeds the keys per side n={n}")
    if topk > topk_side * topk_side:
        raise ValueError(f"{fn}: topk={topk} exceeds the candidate grid topk_side**2="
                         f"{topk_side * topk_side}")


def tucker_topk(q_row, q_col, k_row, k_col, cores, *, topk_side: int, topk: int,
                rank1: tuple[jax.Array, jax.Array] | None = None, preselect: str = "top",
                keys_layout: str = "hnrd",
                implementation: str = "auto") -> tuple[jax.Array, jax.Array]:
    """TDQKR top-``topk`` with per-core scores (see the module docstring).

    ``rank1`` = (u, t) [H, r] overrides the pre-selection vectors (default
    ``tucker_rank1(cores)``). ``preselect``: "top" keeps the k_s rows with the largest S_row u
    (the papers' filter); "abs" keeps the k_s largest |S_row u|, which also finds cells whose
    two factors are both large and negative (same cost; an option of this library).
    ``keys_layout``: "hnrd" (keys [H, n, r, Dk]) or "hrnd" (keys [H, r, n, Dk], read without a
    relayout copy by the XLA path; the kernels get them swapped back). Returns (scores [..., H,
    topk, h_c] ordered by descending summed score, indices [..., H, topk] int32 = row * n + col).
    """
    check_implementation("tucker_topk", implementation)
    if keys_layout not in KEYS_LAYOUTS:
        raise ValueError(f"tucker_topk: keys_layout={keys_layout!r} is not one of {KEYS_LAYOUTS}")
    for a, b, what in ((q_row, q_col, "queries"), (k_row, k_col, "keys")):
        if a.shape != b.shape:
            raise ValueError(f"tucker_topk: row and column {what} differ in shape: {a.shape} vs "
                             f"{b.shape}")
    rank_major = keys_layout == "hrnd"
    if rank_major and k_row.ndim != 4:
        raise ValueError(f"tucker_topk: keys must be [H, r, n, Dk], got shape {k_row.shape}")
    check_tucker_args(q_row.shape, _hnrd(k_row.shape, rank_major), cores.shape,
                      topk_side=topk_side, topk=topk)
    if preselect not in PRESELECT:
        raise ValueError(f"tucker_topk: preselect={preselect!r} is not one of {PRESELECT}")
    u, t = tucker_rank1(cores) if rank1 is None else rank1
    impl = resolve_implementation(implementation, q_row, q_col, k_row, k_col, cores)
    if impl != "xla" and rank_major:
        k_row, k_col = (jnp.swapaxes(k, 1, 2) for k in (k_row, k_col))
    if impl != "xla":
        from kernels_pallas.pk_retrieval import api

        from seedjax.ops.token_shards import over_token_shards
        kernel = lambda a, b, *shared: api.tucker_topk(
            a, b, *shared[:3], topk_side=topk_side, topk=topk, rank1=shared[3:],
            preselect=preselect, implementation=impl)
        flat = lambda q: q.reshape(-1, *q.shape[-3:])
        s, i = over_token_shards(kernel, [(flat(q_row), 0), (flat(q_col), 0)],
                                 [k_row, k_col, cores, u, t])
        lead = q_row.shape[:-2]                                   # [..., H]
        return s.reshape(*lead, topk, cores.shape[0]), i.reshape(*lead, topk)
    return _tucker_topk_xla(q_row, q_col, k_row, k_col, cores, u, t, topk_side=topk_side,
                            topk=topk, preselect=preselect, keys_layout=keys_layout)


def _hnrd(k_shape, rank_major: bool) -> tuple:
    """(H, n, r, Dk) of keys in either layout."""
    return (k_shape[0], k_shape[2], k_shape[1], k_shape[3]) if rank_major else tuple(k_shape)


def _tucker_topk_xla(q_row, q_col, k_row, k_col, cores, u, t, *, topk_side, topk, preselect,
                     keys_layout="hnrd"):
    heads, n, rank, dk = _hnrd(k_row.shape, keys_layout == "hrnd")
    lead = q_row.shape[:-3]
    dt = score_dtype(q_row, k_row, cores)
    cores = cores.astype(dt)

    def side(q, k, vec):
        s = jnp.einsum(f"thrd,{keys_layout}->thnr", q.reshape(-1, heads, rank, dk).astype(dt),
                       k.astype(dt), preferred_element_type=dt)             # [T, H, n, r]
        approx = jnp.einsum("thnr,hr->thn", s, jax.lax.stop_gradient(vec.astype(dt)))
        _, idx = top_k(jnp.abs(approx) if preselect == "abs" else approx,
                               topk_side)                                     # [T, H, ks]
        return jnp.take_along_axis(s, idx[..., None], axis=2), idx            # [T, H, ks, r]

    s_row, i_row = side(q_row, k_row, u)
    s_col, i_col = side(q_col, k_col, t)
    per_core = jnp.einsum("thar,chrs,thbs->thabc", s_row, cores, s_col,
                          preferred_element_type=dt)                         # [T, H, ks, ks, h_c]
    per_core = per_core.reshape(*per_core.shape[:2], topk_side * topk_side, -1)
    _, flat = top_k(jnp.sum(per_core, axis=-1), topk)                # [T, H, topk]
    scores = jnp.take_along_axis(per_core, flat[..., None], axis=2)          # [T, H, topk, h_c]
    # the candidates' cell ids first, then one gather by ``flat``: decoding flat into (row, col)
    # after the top-k gives XLA:CPU a longer index chain, which it fuses into (and repeats for
    # every element of) the value gather that consumes the indices: 2.7x slower decode gathers
    cells = (i_row[..., :, None] * n + i_col[..., None, :]).reshape(*i_row.shape[:-1], -1)
    indices = jnp.take_along_axis(cells, flat, axis=-1).astype(jnp.int32)   # [T, H, topk]
    return (scores.reshape(*lead, heads, topk, cores.shape[0]),
            indices.reshape(*lead, heads, topk))
