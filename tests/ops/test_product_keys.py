"""seedjax.ops.product_keys: two-stage product-key top-k == brute force over all n_sub^2 slots
(scores, indices and gradients); weighted_value_sum == a dense one-hot matmul (forward and VJP,
duplicate and pad indices); argument errors. References are numpy (float64)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedjax.ops import product_key_topk, weighted_value_sum

N_SUB, HEADS, HALF, LEAD = 8, 2, 4, (4, 6)


def _inputs(seed, lead=LEAD):
    rng = np.random.default_rng(seed)
    q1, q2 = (rng.standard_normal((*lead, HEADS, HALF)).astype(np.float32) for _ in range(2))
    k1, k2 = (rng.standard_normal((HEADS, N_SUB, HALF)).astype(np.float32) for _ in range(2))
    return q1, q2, k1, k2


def _side(q, k):
    return np.einsum("...hd,hnd->...hn", q.astype(np.float64), k.astype(np.float64))


def _brute_force(q1, q2, k1, k2, allowed=None):
    """All n_sub^2 additive scores (slot i * n_sub + j) [..., H, N], optionally restricted."""
    s1, s2 = _side(q1, k1), _side(q2, k2)
    full = (s1[..., :, None] + s2[..., None, :]).reshape(*s1.shape[:-1], -1)
    return full if allowed is None else np.where(allowed, full, -np.inf)


@functools.partial(jax.jit, static_argnames=("topk_side", "topk"))
def _ours(q1, q2, k1, k2, *, topk_side, topk):
    return product_key_topk(q1, q2, k1, k2, topk_side=topk_side, topk=topk)


def _check_against(scores, idx, ref_full, topk):
    """Ours == top-k of ``ref_full``: scores everywhere; indices on rows without a near tie
    among the first topk + 1 places (ties excluded); indices distinct and in range."""
    order = np.argsort(-ref_full, axis=-1, kind="stable")
    ref_idx = order[..., :topk]
    ref_sorted = np.take_along_axis(ref_full, order[..., :topk + 1], -1)
    np.testing.assert_allclose(scores, ref_sorted[..., :topk], rtol=1e-5, atol=1e-5)
    gaps = ref_sorted[..., :-1] - ref_sorted[..., 1:]
    ok = gaps.min(-1) > 1e-4 if gaps.shape[-1] else np.ones(gaps.shape[:-1], bool)
    assert ok.mean() > 0.7, "too many near ties; change the seed"
    np.testing.assert_array_equal(np.asarray(idx)[ok], ref_idx[ok])
    flat = np.asarray(idx).reshape(-1, topk)
    assert all(len(set(row)) == topk for row in flat)
    assert flat.min() >= 0 and flat.max() < ref_full.shape[-1]


# exact cases: topk <= topk_side (PKM's theorem) or topk_side == n_sub (nothing pruned),
# including topk_side == n_sub and topk == topk_side**2 (== N here)
@pytest.mark.parametrize("topk_side,topk", [(3, 3), (4, 2), (8, 8), (8, 20), (8, 64), (1, 1)])
def test_topk_equals_brute_force(topk_side, topk):
    for seed in range(3):
        q1, q2, k1, k2 = _inputs(seed)
        scores, idx = _ours(q1, q2, k1, k2, topk_side=topk_side, topk=topk)
        assert scores.shape == idx.shape == (*LEAD, HEADS, topk)
        assert idx.dtype == jnp.int32 and scores.dtype == jnp.float32
        full = _brute_force(q1, q2, k1, k2)
        _check_against(scores, idx, full, topk)
        # the returned scores are the scores of the returned slots
        np.testing.assert_allclose(np.take_along_axis(full, np.asarray(idx), -1), scores,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("topk_side,topk", [(3, 5), (4, 16)])
def test_topk_beyond_topk_side_is_top_of_candidate_grid(topk_side, topk):
    """topk_side < topk <= topk_side**2 (as UltraMemV2, which caps the side at 128 < TopM) is not
    exact: the result is the top-topk of the topk_side x topk_side candidate grid, and its first
    topk_side entries are still the global top-topk_side."""
    for seed in range(2):
        q1, q2, k1, k2 = _inputs(seed)
        scores, idx = _ours(q1, q2, k1, k2, topk_side=topk_side, topk=topk)
        rows = np.argsort(-_side(q1, k1), -1)[..., :topk_side]
        cols = np.argsort(-_side(q2, k2), -1)[..., :topk_side]
        r = np.zeros((*LEAD, HEADS, N_SUB), bool)
        c = np.zeros_like(r)
        np.put_along_axis(r, rows, True, -1)
        np.put_along_axis(c, cols, True, -1)
        grid = (r[..., :, None] & c[..., None, :]).reshape(*LEAD, HEADS, -1)
        _check_against(scores, idx, _brute_force(q1, q2, k1, k2, grid), topk)
        _check_against(scores[..., :topk_side], idx[..., :topk_side],
                       _brute_force(q1, q2, k1, k2), topk_side)


def test_topk_any_leading_dims_and_bf16_scores_in_f32():
    q1, q2, k1, k2 = _inputs(3, lead=())
    s, i = _ours(q1, q2, k1, k2, topk_side=4, topk=4)
    assert s.shape == i.shape == (HEADS, 4)
    s16, _ = _ours(*(jnp.asarray(a, jnp.bfloat16) for a in (q1, q2, k1, k2)),
                   topk_side=4, topk=4)
    assert s16.dtype == jnp.float32


def test_topk_gradient_equals_brute_force_gradient():
    """d sum(c * scores) / d(q1, q2, k1, k2) == the gradient of the selected additive scores:
    dq1 = sum_t c_t k1[i_t], dk1[i] = sum_{t: i_t = i} c_t q1 (and likewise for side 2)."""
    q1, q2, k1, k2 = _inputs(4)
    ct = np.random.default_rng(9).standard_normal((*LEAD, HEADS, 4)).astype(np.float32)
    loss = lambda *a: jnp.sum(product_key_topk(*a, topk_side=5, topk=4)[0] * ct)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(q1, q2, k1, k2)
    full = _brute_force(q1, q2, k1, k2)
    idx = np.argsort(-full, -1)[..., :4]
    refs = []
    for side, (q, k) in enumerate(((q1, k1), (q2, k2))):
        sub = idx // N_SUB if side == 0 else idx % N_SUB                  # [..., H, topk]
        dq = np.einsum("...hk,...hkd->...hd", ct, k[np.arange(HEADS)[:, None], sub])
        dk = np.zeros_like(k, np.float64)
        h = np.broadcast_to(np.arange(HEADS)[:, None], sub.shape)
        np.add.at(dk, (h, sub), ct[..., None] * q[..., None, :])
        refs.append((dq, dk))
    for got, ref in zip(grads, (refs[0][0], refs[1][0], refs[0][1], refs[1][1])):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def _bag_inputs(seed, n=40, dv=6, lead=(3, 4), k=5):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal((n, dv)).astype(np.float32)
    idx = rng.integers(0, n, (*lead, k)).astype(np.int32)
    idx[..., 1] = idx[..., 0]  # duplicates in every bag
    w = rng.standard_normal((*lead, k)).astype(np.float32)
    return values, idx, w


def _onehot(idx, n):
    return (idx[..., None] == np.arange(n)).astype(np.float64)          # [..., K, N]


@jax.jit
def _bag_and_grads(values, idx, w, ct):
    f = lambda v, ww: jnp.sum(weighted_value_sum(v, idx, ww) * ct)
    return weighted_value_sum(values, idx, w), jax.grad(f, (0, 1))(values, w)


def test_weighted_value_sum_forward_and_vjp_equal_dense_onehot():
    values, idx, w = _bag_inputs(0)
    ct = np.random.default_rng(1).standard_normal((3, 4, 6))
    out, (gv, gw) = _bag_and_grads(values, idx, w, ct.astype(np.float32))
    assert out.shape == (3, 4, 6) and out.dtype == jnp.float32
    oh = _onehot(idx, 40)
    np.testing.assert_allclose(out, np.einsum("...k,...kn,nd->...d", w, oh, values),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gv, np.einsum("bkn,bk,bd->nd", oh.reshape(12, 5, 40),
                                             w.reshape(12, 5), ct.reshape(12, 6)),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gw, np.einsum("...kn,nd,...d->...k", oh, values, ct),
                               rtol=1e-5, atol=1e-5)
    unused = np.setdiff1d(np.arange(40), idx.ravel())
    assert len(unused) and np.all(np.asarray(gv)[unused] == 0)


def test_weighted_value_sum_pad_index_and_bf16():
    values, idx, w = _bag_inputs(1)
    padded = idx.copy()
    padded[..., -1] = values.shape[0]                      # out of range = pad slot
    keep = w.copy()
    keep[..., -1] = 0.0
    ct = np.ones((3, 4, 6), np.float32)
    out_pad, (g_pad, _) = _bag_and_grads(values, padded, w, ct)
    out_ref, (g_ref, _) = _bag_and_grads(values, idx, keep, ct)
    np.testing.assert_allclose(out_pad, out_ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g_pad, g_ref, rtol=1e-6, atol=1e-6)
    out16 = weighted_value_sum(jnp.asarray(values, jnp.bfloat16), idx, w)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(out16.astype(jnp.float32),
                               np.einsum("...k,...kn,nd->...d", w, _onehot(idx, 40), values),
                               atol=0.1)


def test_errors_name_the_argument():
    q1, q2, k1, k2 = _inputs(0)
    with pytest.raises(ValueError, match=r"topk=17 exceeds .*topk_side\*\*2=16"):
        product_key_topk(q1, q2, k1, k2, topk_side=4, topk=17)
    with pytest.raises(ValueError, match="topk_side=9 exceeds .*n_sub=8"):
        product_key_topk(q1, q2, k1, k2, topk_side=9, topk=4)
    with pytest.raises(ValueError, match="topk=0"):
        product_key_topk(q1, q2, k1, k2, topk_side=4, topk=0)
    with pytest.raises(ValueError, match="q1 shape"):
        product_key_topk(q1, q2[..., :3], k1, k2, topk_side=4, topk=4)
    with pytest.raises(ValueError, match="k1 shape"):
        product_key_topk(q1, q2, k1, k2[:, :5], topk_side=4, topk=4)
    with pytest.raises(ValueError, match=r"\(H, Dk/2\)"):
        product_key_topk(q1, q2, k1[:1], k2[:1], topk_side=4, topk=4)
    with pytest.raises(ValueError, match=r"implementation='pallas' .*allowed: \('xla', 'auto'"):
        product_key_topk(q1, q2, k1, k2, topk_side=4, topk=4, implementation="pallas")
    values, idx, w = (jnp.asarray(a) for a in _bag_inputs(0))
    with pytest.raises(ValueError, match="indices shape"):
        weighted_value_sum(values, idx, w[..., :3])
    with pytest.raises(ValueError, match=r"table must be \[N, D\]"):
        weighted_value_sum(values[0], idx, w)
    with pytest.raises(ValueError, match="indices must be integers"):
        weighted_value_sum(values, idx.astype(jnp.float32), w)
    with pytest.raises(ValueError, match="implementation='triton'"):
        weighted_value_sum(values, idx, w, implementation="triton")
