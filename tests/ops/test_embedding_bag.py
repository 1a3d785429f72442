"""embedding_bag with MCS slices and IVE groups == an explicit per-(k, slice, group) loop,
forward and VJP; row_dot == gathered dot products; pad indices read zero."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seedjax.ops import embedding_bag, row_dot, weighted_value_sum


def _inputs(seed, n=11, dv=8, lead=(2, 3), k=5, s=2, g=3):
    r = np.random.default_rng(seed)
    values = r.normal(size=(n, dv)).astype(np.float32)
    idx = r.integers(0, n, size=lead + (k,)).astype(np.int32)
    idx[..., 1] = idx[..., 0]                                 # duplicate indices add up
    w = r.normal(size=lead + (k, s)).astype(np.float32)
    groups = r.integers(0, g, size=lead + (k,)).astype(np.int32)
    return values, idx, w, groups


def _loop(values, idx, w, groups, g):
    lead, k, s = idx.shape[:-1], idx.shape[-1], w.shape[-1]
    dv = values.shape[1]
    out = np.zeros(lead + (g, dv), np.float64)
    for pos in np.ndindex(*lead):
        for j in range(k):
            i = idx[pos + (j,)]
            if not 0 <= i < values.shape[0]:
                continue
            for c in range(s):
                sl = slice(c * dv // s, (c + 1) * dv // s)
                out[pos + (groups[pos + (j,)], sl)] += w[pos + (j, c)] * values[i, sl]
    return out


def test_sliced_grouped_bag_equals_loop_forward_and_vjp():
    values, idx, w, groups = _inputs(0)
    idx[0, 0, 4] = 11                                        # a pad index (out of range)
    out = embedding_bag(jnp.asarray(values), jnp.asarray(idx), jnp.asarray(w),
                        groups=jnp.asarray(groups), n_groups=3)
    np.testing.assert_allclose(out, _loop(values, idx, w, groups, 3), rtol=1e-5, atol=1e-5)
    # VJP w.r.t. values and weights: the loop is linear in each, so compare with autodiff of an
    # independent dense formulation (one-hot matrices), which has no gather
    ct = np.random.default_rng(1).normal(size=out.shape).astype(np.float32)

    def dense(v, ww):
        onehot_i = jax.nn.one_hot(idx, values.shape[0])                   # pad -> zero row
        onehot_g = jax.nn.one_hot(groups, 3)
        vs = v.reshape(v.shape[0], w.shape[-1], -1)
        o = jnp.einsum("...kn,...kg,...ks,nsd->...gsd", onehot_i, onehot_g, ww, vs)
        return jnp.sum(o.reshape(out.shape) * ct)

    def bag(v, ww):
        return jnp.sum(embedding_bag(v, jnp.asarray(idx), ww, groups=jnp.asarray(groups),
                                     n_groups=3) * ct)

    got = jax.grad(bag, (0, 1))(jnp.asarray(values), jnp.asarray(w))
    want = jax.grad(dense, (0, 1))(jnp.asarray(values), jnp.asarray(w))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(got[0][idx[0, 0, 4] % 11]).sum()) >= 0   # pad row untouched below
    assert np.all(np.asarray(got[0]).shape == values.shape)


def test_unsliced_ungrouped_is_weighted_value_sum_and_one_slice():
    values, idx, w, _ = _inputs(2, s=1)
    a = embedding_bag(jnp.asarray(values), jnp.asarray(idx), jnp.asarray(w[..., 0]))
    b = embedding_bag(jnp.asarray(values), jnp.asarray(idx), jnp.asarray(w))
    c = weighted_value_sum(jnp.asarray(values), jnp.asarray(idx), jnp.asarray(w[..., 0]))
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(a, c, rtol=1e-6)
    np.testing.assert_allclose(a, _loop(values, idx, w, np.zeros_like(idx), 1)[..., 0, :],
                               rtol=1e-5, atol=1e-5)


def test_row_dot_equals_gathered_dot_and_pad_is_zero():
    r = np.random.default_rng(3)
    table = r.normal(size=(9, 4)).astype(np.float32)
    idx = r.integers(0, 9, size=(2, 5)).astype(np.int32)
    idx[1, 2] = -1
    x = r.normal(size=(2, 4)).astype(np.float32)
    got = row_dot(jnp.asarray(table), jnp.asarray(idx), jnp.asarray(x))
    want = np.einsum("bkd,bd->bk", table[np.clip(idx, 0, 8)], x)
    want[1, 2] = 0.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_bad_shapes_raise_naming_the_argument():
    values, idx, w, groups = (jnp.asarray(a) for a in _inputs(0))
    with pytest.raises(ValueError, match="not divisible by the number of weight slices S=3"):
        embedding_bag(values, idx, jnp.ones(idx.shape + (3,)))
    with pytest.raises(ValueError, match="groups shape"):
        embedding_bag(values, idx, w, groups=groups[..., :2], n_groups=3)
    with pytest.raises(ValueError, match="n_groups=0"):
        embedding_bag(values, idx, w, groups=groups, n_groups=0)
    with pytest.raises(ValueError, match="weights shape"):
        embedding_bag(values, idx, w[..., :2, :])
    with pytest.raises(ValueError, match="x shape"):
        row_dot(values, idx, jnp.ones((2, 3, 5)))
