"""Pure-JAX specification of product-key retrieval: PKM additive scores and UltraMem's TDQKR
(rank-r Tucker core) scores with Multi-Core Scoring. Every kernel in this folder is tested
against these functions.

PKM (per token, per head; n sub-keys per side, half dimension d = Dk/2):

    s1 = K1 q1 [n], s2 = K2 q2 [n]
    (v1, I1) = top_{k_s}(s1), (v2, I2) = top_{k_s}(s2)          k_s = topk_side
    grid[a, b] = v1[a] + v2[b]                                  a, b < k_s (rank positions)
    (scores, f) = top_{topk}(grid flattened as a * k_s + b)
    index = I1[f // k_s] * n + I2[f % k_s]

TDQKR (per token, per head; r Tucker ranks, Dk per rank, h_c cores C_c [r, r]):

    S[j, rho] = <q[rho], K[j, rho]>                      per side (row uses u, column uses t)
    approx[j] = sum_rho S[j, rho] u[rho]   (|approx| with preselect="abs")
    I = top_{k_s}(approx);  S_sel = S[I]                [k_s, r]
    P_c[b, rho] = sum_sigma C_c[rho, sigma] S_col_sel[b, sigma]
    G_c[a, b] = sum_rho S_row_sel[a, rho] P_c[b, rho];  G = sum_c G_c
    f = top_{topk}(G flattened as a * k_s + b);  scores[.., c] = G_c at f
    index = I_row[f // k_s] * n + I_col[f % k_s]

The r- and h_c-contractions are written as explicit sums in the order above (not einsum), so
a kernel that evaluates them in the same order can reproduce the scores bit for bit.

Ties: the lowest position first, i.e. the lowest sub-key index in the side stage and the
lexicographically smallest rank pair (a, b) in the grid stage; -0.0 and +0.0 tie (``_top_k``:
``lax.top_k`` alone ranks -0 below +0, while the kernels' max comparison treats them as equal).

Gradients flow through the selected scores only (the top-k's JVP is a gather); ``pk_rescore``
and ``tucker_rescore`` recompute those scores from returned indices and give the same VJP.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def score_dtype(*xs) -> jnp.dtype:
    """float32 at least: bf16 inputs score in f32; float64 stays float64 under x64."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def _top_k(x, k):
    """lax.top_k (last axis) with signed zeros tied; values and gradients from x."""
    _, idx = jax.lax.top_k(jnp.where(x == 0, jnp.zeros_like(x), x), k)
    return jnp.take_along_axis(x, idx, axis=-1), idx


def _side_scores(q, k, dt):
    """q [T, H, d], k [H, n, d] -> [T, H, n] in dtype dt."""
    return jnp.einsum("thd,hnd->thn", q.astype(dt), k.astype(dt), preferred_element_type=dt)


def product_key_topk_reference(q1, q2, k1, k2, *, topk_side: int, topk: int):
    """PKM retrieval. q1, q2 [..., H, d]; k1, k2 [H, n, d] -> (scores [..., H, topk] descending,
    indices [..., H, topk] int32 = i1 * n + i2)."""
    lead = q1.shape[:-2]
    heads, n, d = k1.shape
    dt = score_dtype(q1, q2, k1, k2)
    s1 = _side_scores(q1.reshape(-1, heads, d), k1, dt)
    s2 = _side_scores(q2.reshape(-1, heads, d), k2, dt)
    v1, i1 = _top_k(s1, topk_side)                               # [T, H, ks]
    v2, i2 = _top_k(s2, topk_side)
    grid = (v1[..., :, None] + v2[..., None, :]).reshape(*v1.shape[:-1], topk_side ** 2)
    scores, flat = _top_k(grid, topk)                            # [T, H, topk]
    row = jnp.take_along_axis(i1, flat // topk_side, axis=-1)
    col = jnp.take_along_axis(i2, flat % topk_side, axis=-1)
    indices = (row * n + col).astype(jnp.int32)
    return scores.reshape(*lead, heads, topk), indices.reshape(*lead, heads, topk)


def tucker_rank1(cores):
    """Leading singular vectors (u, t) [H, r] of sum_c C_c (cores [h_c, H, r, r]), sign fixed so
    that sum(u) + sum(t) >= 0, without gradient (the papers' detached pre-selection vectors)."""
    c = jax.lax.stop_gradient(jnp.sum(cores.astype(score_dtype(cores)), axis=0))
    left, _, right_t = jnp.linalg.svd(c)
    u, t = left[..., :, 0], right_t[..., 0, :]
    sign = jnp.where(jnp.sum(u, -1) + jnp.sum(t, -1) < 0, -1.0, 1.0).astype(u.dtype)[:, None]
    return u * sign, t * sign


def _rank_sum(terms):
    """Left-to-right sum (fixed order, see the module docstring)."""
    acc = terms[0]
    for x in terms[1:]:
        acc = acc + x
    return acc


def _grid(s_row, s_col, cores):
    """s_row [T, H, A, r], s_col [T, H, B, r], cores [h_c, H, r, r] -> list of G_c [T, H, A, B]."""
    rank = s_row.shape[-1]
    out = []
    for c in range(cores.shape[0]):
        p = [_rank_sum([cores[c, :, rho, sg][None, :, None] * s_col[..., sg]
                        for sg in range(rank)]) for rho in range(rank)]          # [T, H, B]
        out.append(_rank_sum([s_row[..., :, None, rho] * p[rho][..., None, :]
                              for rho in range(rank)]))
    return out


def _pointwise(s_row, s_col, cores):
    """s_row, s_col [T, H, K, r] (matched cells) -> list of G_c [T, H, K]."""
    rank = s_row.shape[-1]
    out = []
    for c in range(cores.shape[0]):
        p = [_rank_sum([cores[c, :, rho, sg][None, :, None] * s_col[..., sg]
                        for sg in range(rank)]) for rho in range(rank)]
        out.append(_rank_sum([s_row[..., rho] * p[rho] for rho in range(rank)]))
    return out


def tucker_topk_reference(q_row, q_col, k_row, k_col, cores, *, topk_side: int, topk: int,
                          rank1=None, preselect: str = "top"):
    """TDQKR retrieval with MCS. q_row, q_col [..., H, r, Dk]; k_row, k_col [H, n, r, Dk];
    cores [h_c, H, r, r]; rank1 = (u, t) [H, r] or None (-> ``tucker_rank1(cores)``).
    Returns (scores [..., H, topk, h_c] ordered by descending summed score,
    indices [..., H, topk] int32 = row * n + col)."""
    heads, n, rank, dk = k_row.shape
    lead = q_row.shape[:-3]
    dt = score_dtype(q_row, q_col, k_row, k_col, cores)
    u, t = tucker_rank1(cores) if rank1 is None else rank1
    cores = cores.astype(dt)

    def side(q, k, vec):
        s = jnp.einsum("thrd,hnrd->thnr", q.reshape(-1, heads, rank, dk).astype(dt),
                       k.astype(dt), preferred_element_type=dt)               # [T, H, n, r]
        vec = jax.lax.stop_gradient(vec.astype(dt))
        approx = _rank_sum([s[..., rho] * vec[None, :, None, rho] for rho in range(rank)])
        _, idx = _top_k(jnp.abs(approx) if preselect == "abs" else approx, topk_side)
        return jnp.take_along_axis(s, idx[..., None], axis=2), idx              # [T, H, ks, r]

    s_row, i_row = side(q_row, k_row, u)
    s_col, i_col = side(q_col, k_col, t)
    per_core = _grid(s_row, s_col, cores)                                      # h_c x [T,H,ks,ks]
    total = _rank_sum(per_core).reshape(*s_row.shape[:2], topk_side ** 2)
    _, flat = _top_k(total, topk)                                       # [T, H, topk]
    scores = jnp.stack([jnp.take_along_axis(g.reshape(total.shape), flat, axis=-1)
                        for g in per_core], axis=-1)                           # [T, H, topk, h_c]
    row = jnp.take_along_axis(i_row, flat // topk_side, axis=-1)
    col = jnp.take_along_axis(i_col, flat % topk_side, axis=-1)
    indices = (row * n + col).astype(jnp.int32)
    return (scores.reshape(*lead, heads, topk, cores.shape[0]),
            indices.reshape(*lead, heads, topk))


def _gather_rows(k, idx):
    """k [H, n, ...], idx [T, H, K] -> [T, H, K, ...] (row idx of head h's table)."""
    return jax.vmap(lambda kh, ih: kh[ih], in_axes=(0, 1), out_axes=1)(k, idx)


def pk_rescore(q1, q2, k1, k2, indices):
    """Scores of given PKM slots: <q1, k1[i // n]> + <q2, k2[i % n]>.
    q [..., H, d], k [H, n, d], indices [..., H, K] -> [..., H, K] in the score dtype."""
    heads, n, d = k1.shape
    lead = q1.shape[:-2]
    dt = score_dtype(q1, q2, k1, k2)
    idx = indices.reshape(-1, heads, indices.shape[-1])
    s = 0
    for q, k, i in ((q1, k1, idx // n), (q2, k2, idx % n)):
        rows = _gather_rows(k.astype(dt), i)                                   # [T, H, K, d]
        s = s + jnp.einsum("thd,thkd->thk", q.reshape(-1, heads, d).astype(dt), rows,
                           preferred_element_type=dt)
    return s.reshape(*lead, heads, indices.shape[-1])


def tucker_rescore(q_row, q_col, k_row, k_col, cores, indices):
    """Per-core TDQKR scores of given slots. q [..., H, r, Dk], k [H, n, r, Dk],
    cores [h_c, H, r, r], indices [..., H, K] -> [..., H, K, h_c] in the score dtype."""
    heads, n, rank, dk = k_row.shape
    lead = q_row.shape[:-3]
    dt = score_dtype(q_row, q_col, k_row, k_col, cores)
    idx = indices.reshape(-1, heads, indices.shape[-1])

    def side(q, k, i):
        rows = _gather_rows(k.astype(dt), i)                                   # [T, H, K, r, Dk]
        return jnp.einsum("thrd,thkrd->thkr", q.reshape(-1, heads, rank, dk).astype(dt), rows,
                          preferred_element_type=dt)
    per_core = _pointwise(side(q_row, k_row, idx // n), side(q_col, k_col, idx % n),
                          cores.astype(dt))
    return jnp.stack(per_core, axis=-1).reshape(*lead, heads, indices.shape[-1], -1)
