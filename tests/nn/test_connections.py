"""Hyper-, Frac- and manifold Hyper-Connections: pre-norm equivalence at init (logits and
gradients), the sequential-parallel duality of HC section 3.2, shapes/dtypes, optimizer labels,
Sinkhorn, errors, and a short training smoke."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.nn.connections import (FracConnection, HyperConnection, ManifoldHyperConnection,
                                    depth_connection, expand_streams, merge_fracs,
                                    reduce_streams, sinkhorn, split_fracs, width_connection)
from seedjax.nn.params import param_metadata

# norm_eps=0: with HC's sum-reduction the final norm sees n * h, and RMSNorm is exactly
# scale-invariant only without eps (see test_hc_default_eps_needs_mean_reduce_for_exactness).
# (Shapes as in tests/models/test_lm.py, so eagerly compiled primitives are shared.)
CFG = LMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=24,
               norm_eps=0.0)
TOKENS = jax.random.randint(jax.random.key(0), (2, 16), 0, 256)
TARGETS = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)


def _loss_from_logits(logits):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, TARGETS[..., None], -1))


def _loss(model):
    return _loss_from_logits(model(TOKENS).logits)


def _flat(state):
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state)}


def _logits_and_grads(cfg):
    """Eager (op-by-op) forward and backward: the primitives' compilations are shared by all
    cases, which is much faster here than compiling one jitted graph per configuration."""
    model = LM(cfg, rngs=nnx.Rngs(0))

    def f(m):
        logits = m(TOKENS).logits
        return _loss_from_logits(logits), logits

    (_, logits), grads = nnx.value_and_grad(f, has_aux=True)(model)
    return np.asarray(logits), _flat(nnx.state(model, nnx.Param)), _flat(grads)


_BASE = {}


def _baseline(cfg):
    key = hash(cfg)
    if key not in _BASE:
        _BASE[key] = _logits_and_grads(cfg)
    return _BASE[key]


def _assert_equivalent(cfg_conn, cfg_base, atol=1e-6):
    lb, pb, gb = _baseline(cfg_base)
    lc, pc, gc = _logits_and_grads(cfg_conn)
    shared = [k for k in pb if "_conn" not in k]
    assert shared and all(k in pc for k in shared)
    for k in shared:  # same shared weights (connections consume no init randomness)
        np.testing.assert_array_equal(pc[k], pb[k], err_msg=k)
    np.testing.assert_allclose(lc, lb, atol=atol, rtol=0)
    for k in shared:
        np.testing.assert_allclose(gc[k], gb[k], atol=atol, rtol=0, err_msg=k)
    conn = [k for k in pc if "_conn" in k]
    assert conn or cfg_conn.connection == "residual"


HC_CASES = [(n, False, True) for n in (1, 2, 4)] + [(n, True, t) for n in (1, 2, 4)
                                                    for t in (True, False)]


@pytest.mark.parametrize("n,dynamic,use_tanh", HC_CASES)
def test_fresh_hc_lm_equals_prenorm_logits_and_grads(n, dynamic, use_tanh):
    kw = dict(rate=n, dynamic=dynamic, use_tanh=use_tanh)
    _assert_equivalent(CFG.replace(connection="hyper", connection_kwargs=kw), CFG)


@pytest.mark.parametrize("m,dynamic", [(m, d) for m in (1, 2, 4) for d in (False, True)])
def test_fresh_fc_lm_equals_prenorm_logits_and_grads(m, dynamic):
    cfg = CFG.replace(norm_eps=1e-6)  # FC keeps width d: exact with any eps
    _assert_equivalent(cfg.replace(connection="frac",
                                   connection_kwargs=dict(rate=m, dynamic=dynamic)), cfg)


def test_hc_default_eps_needs_mean_reduce_for_exactness():
    cfg = CFG.replace(norm_eps=1e-6)
    _assert_equivalent(cfg.replace(connection="hyper",
                                   connection_kwargs=dict(rate=4, reduce="mean")), cfg)
    # the paper's sum: equal up to the final norm's eps (relative ~ eps / mean(h^2))
    hc = LM(cfg.replace(connection="hyper", connection_kwargs=dict(rate=4)), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(hc(TOKENS).logits, _baseline(cfg)[0], atol=5e-3)


@pytest.mark.parametrize("conn,kw", [("hyper", dict(rate=2)), ("mhc", dict(rate=2))])
def test_scan_layers_blocks_identical_and_equal_to_loop(conn, kw):
    cfg = CFG.replace(connection=conn, connection_kwargs=kw)
    loop = LM(cfg, rngs=nnx.Rngs(0))
    scan = LM(cfg.replace(scan_layers=True), rngs=nnx.Rngs(0))
    # the sublayer-dependent init lives in parameter values, stacked along "layers"
    stacked = scan.layers.stacked["ffn_conn"]
    name = "bias_pre" if conn == "mhc" else "static_alpha"
    assert stacked[name][...].shape[0] == CFG.n_layers
    scan_logits = scan(TOKENS).logits
    np.testing.assert_allclose(loop(TOKENS).logits, scan_logits, atol=1e-5)
    if conn != "mhc":
        np.testing.assert_allclose(scan_logits, _baseline(CFG)[0], atol=1e-6)


def test_rate_one_static_hc_is_exactly_the_plain_residual():
    cfg = CFG.replace(norm_eps=1e-6)
    base = LM(cfg, rngs=nnx.Rngs(0))(TOKENS).logits
    hc = LM(cfg.replace(connection="hyper", connection_kwargs=dict(rate=1, dynamic=False)),
            rngs=nnx.Rngs(0))(TOKENS).logits
    np.testing.assert_array_equal(hc, base)
    x = jax.random.normal(jax.random.key(2), (2, 16, 32))
    y = jax.random.normal(jax.random.key(3), (2, 16, 32))
    for conn in (HyperConnection(32, 1, dynamic=False), FracConnection(32, 1, dynamic=False)):
        H = x[..., None, :]
        h, ctx = conn.read(H)
        np.testing.assert_array_equal(h, x)
        np.testing.assert_array_equal(conn.write(y, ctx)[..., 0, :], x + y)


# ----------------------------------------------------------------- HC section 1.6/1.7 algebra

def _branches(k, d=32):
    keys = jax.random.split(jax.random.key(10), k)
    ws = [jax.random.normal(kk, (d, d)) / math.sqrt(d) for kk in keys]
    return [lambda h, w=w: jnp.tanh(h @ w) for w in ws]


def _set_static(conn, a_m, a_r, b):
    conn.static_alpha[...] = jnp.concatenate([jnp.asarray(a_m, jnp.float32)[:, None],
                                              jnp.asarray(a_r, jnp.float32)], axis=1)
    conn.static_beta[...] = jnp.asarray(b, jnp.float32)


def _apply(conn, H, fn):
    h, ctx = conn.read(H)
    return conn.write(fn(h), ctx), h


@pytest.mark.parametrize("n", [2, 4])
def test_duality_sequential_matrices_give_the_residual_net(n):
    """Eq. 17 / 42: B = 1, A_m = e_0, A_r = I -> x_{k} = x_{k-1} + T_k(x_{k-1})."""
    fns = _branches(4)
    x = jax.random.normal(jax.random.key(4), (2, 16, 32))
    H, ref = expand_streams(x, n), x
    for fn in fns:
        conn = HyperConnection(32, n, dynamic=False)
        _set_static(conn, np.eye(n)[0], np.eye(n), np.ones(n))
        H, _ = _apply(conn, H, fn)
        ref = ref + fn(ref)
        for s in range(n):
            np.testing.assert_allclose(H[..., s, :], ref, atol=1e-6)
    np.testing.assert_allclose(reduce_streams(H), n * ref, atol=1e-5)


@pytest.mark.parametrize("n", [2, 4])
def test_duality_parallel_matrices_give_the_parallel_block(n):
    """Eqs. 18/19 (n = 2) and 54/55 (0-based slots): a group of n sublayers reads the same h and
    the next group reads sum_i (T_i(h) + h)."""
    fns = _branches(2 * n)
    H = jax.random.normal(jax.random.key(5), (2, 16, n, 32))  # arbitrary (non-identical) streams
    h_ref = jnp.sum(H, axis=-2)
    for g in range(2):
        inputs = []
        for i in range(n):
            conn = HyperConnection(32, n, dynamic=False)
            if i == 0:   # HC_odd: B = e_0, A_m = 1, A_r = 1 1^T
                _set_static(conn, np.ones(n), np.ones((n, n)), np.eye(n)[0])
            else:        # HC_even: B = e_i, A_m = e_i, A_r = I
                _set_static(conn, np.eye(n)[i], np.eye(n), np.eye(n)[i])
            H, h_in = _apply(conn, H, fns[g * n + i])
            inputs.append(h_in)
        for h_in in inputs:
            np.testing.assert_allclose(h_in, h_ref, rtol=1e-5, atol=1e-5)
        h_ref = sum(fn(h_ref) + h_ref for fn in fns[g * n:(g + 1) * n])
        np.testing.assert_allclose(jnp.sum(H, axis=-2), h_ref, rtol=1e-5, atol=1e-5)
    if n == 2:  # the printed Eq. 18/19 matrices, row 0 = [0 | B], rows 1.. = [A_m | A_r]
        odd = np.array([[0, 1, 0], [1, 1, 1], [1, 1, 1]])
        even = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 1]])
        assert odd[0, 1:].tolist() == [1, 0] and odd[1:, 0].tolist() == [1, 1]
        assert even[0, 1:].tolist() == [0, 1] and even[1:, 1:].tolist() == np.eye(2).tolist()


def test_prenorm_and_postnorm_as_hc_matrices():
    """Eq. 15: HC_PreNorm = [[0, 1], [1, 1]] with T := T o Norm; Eq. 16: HC_PostNorm scales both
    A_r and B by 1 / sqrt(var_i + var_o + 2 cov_io), which equals Norm(x + T(x))."""
    d = 32
    x = jax.random.normal(jax.random.key(6), (2, 16, d))
    x = x - x.mean(-1, keepdims=True)
    w = jax.random.normal(jax.random.key(7), (d, d)) / math.sqrt(d)
    T = lambda h: (h @ w) - (h @ w).mean(-1, keepdims=True)  # re-centring absorbed (Eq. 36)
    norm = lambda h: h / jnp.sqrt(jnp.mean(h * h, -1, keepdims=True))
    pre = HyperConnection(d, 1, dynamic=False)
    _set_static(pre, [1.0], [[1.0]], [1.0])
    out, _ = _apply(pre, x[..., None, :], lambda h: T(norm(h)))
    np.testing.assert_allclose(out[..., 0, :], x + T(norm(x)), atol=1e-6)
    # Post-Norm: per-token constants, applied through the same width/depth functions
    t = T(x)
    var_i, var_o = jnp.mean(x * x, -1), jnp.mean(t * t, -1)
    cov = jnp.mean(x * t, -1)
    c = 1.0 / jnp.sqrt(var_i + var_o + 2 * cov)
    alpha = jnp.stack([jnp.ones_like(c), c], -1)[..., None, :]  # [B, T, 1, 2] = [A_m | A_r]
    h, res = width_connection(x[..., None, :], alpha, 1)
    out = depth_connection(T(h[..., 0, :])[..., None, :], res, c[..., None])
    np.testing.assert_allclose(out[..., 0, :], norm(x + t), atol=1e-5)


# ----------------------------------------------------------------- unit tests

def test_shapes_and_dtypes():
    """bf16 state in, bf16 h and state out; coefficients and the context in float32."""
    cases = [(HyperConnection, 4, (2, 16, 4, 32), True), (HyperConnection, 4, (2, 16, 4, 32), False),
             (FracConnection, 4, (2, 16, 4, 8), True),
             (ManifoldHyperConnection, 2, (2, 16, 2, 32), True)]
    for cls, rate, state, dynamic in cases:
        conn = cls(32, rate, dynamic=dynamic)
        H = jax.random.normal(jax.random.key(8), state).astype(jnp.bfloat16)
        h, ctx = conn.read(H)
        res, beta, coeffs = ctx.res, ctx.beta, conn.coefficients(H)
        out = conn.write(jnp.ones_like(h), ctx)
        assert h.shape == (2, 16, 32) and h.dtype == jnp.bfloat16
        assert res.dtype == jnp.float32 and beta.dtype == jnp.float32
        assert all(c.dtype == jnp.float32 for c in coeffs)
        assert out.shape == state and out.dtype == jnp.bfloat16
        y_rows = jnp.ones(state) if cls is FracConnection else 1.0
        expected = (res + beta[..., None] * y_rows).astype(jnp.bfloat16)
        np.testing.assert_array_equal(out, expected)
        batched = coeffs[0].ndim > (1 if cls is ManifoldHyperConnection else 2)
        assert batched == dynamic  # static coefficients are shared by all tokens


def test_stream_utilities():
    x = jax.random.normal(jax.random.key(9), (2, 3, 8))
    H = expand_streams(x, 3)
    assert H.shape == (2, 3, 3, 8)
    np.testing.assert_allclose(reduce_streams(H), 3 * x, rtol=1e-6)
    np.testing.assert_allclose(reduce_streams(H, "mean"), x, rtol=1e-6)
    F = split_fracs(x, 4)
    assert F.shape == (2, 3, 4, 2)
    np.testing.assert_array_equal(merge_fracs(F), x)
    assert reduce_streams(H.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_static_dynamic_switch_and_tanh():
    static = HyperConnection(32, 2, dynamic=False)
    names = set(_flat(nnx.state(static, nnx.Param)))
    assert names == {"static_alpha", "static_beta"}
    H = jax.random.normal(jax.random.key(11), (2, 16, 2, 32))
    for use_tanh in (True, False):
        dyn = HyperConnection(32, 2, dynamic=True, use_tanh=use_tanh)
        assert {"dynamic_alpha", "dynamic_beta", "scale_alpha", "scale_beta",
                "norm_scale"} <= set(_flat(nnx.state(dyn, nnx.Param)))
        a, b = dyn.coefficients(H)  # W = 0: dynamic part vanishes
        np.testing.assert_array_equal(a, jnp.broadcast_to(dyn.static_alpha[...], a.shape))
        dyn.dynamic_alpha[...] = 100.0 * jax.random.normal(jax.random.key(12), (32, 3))
        a, _ = dyn.coefficients(H)
        dev = jnp.abs(a - dyn.static_alpha[...])
        assert float(jnp.std(a[..., 0, 0])) > 0  # token-dependent
        assert (float(dev.max()) <= 0.01 + 1e-6) == use_tanh  # tanh bounds by s_alpha
    # static init per sublayer index: A_m = e_(k mod n), A_r = I, B = 1
    for k in range(5):
        a = np.asarray(HyperConnection(8, 3, sublayer_idx=k, dynamic=False).static_alpha[...])
        np.testing.assert_array_equal(a[:, 0], np.eye(3)[k % 3])
        np.testing.assert_array_equal(a[:, 1:], np.eye(3))


@pytest.mark.parametrize("cls,rate", [(HyperConnection, 2), (FracConnection, 4)])
def test_without_rescale_the_dynamic_terms_enter_with_weight_one(cls, rate):
    """FC's "w/o rescale" ablation: no s_alpha / s_beta parameters, and the coefficients equal
    those of the rescaled module whose scales are set to 1 (same W, same norm)."""
    plain = cls(32, rate, rescale=False, rngs=nnx.Rngs(0))
    scaled = cls(32, rate, rngs=nnx.Rngs(0))
    names = set(_flat(nnx.state(plain, nnx.Param)))
    assert "scale_alpha" not in names and "dynamic_alpha" in names
    for m in (plain, scaled):
        m.dynamic_alpha[...] = jax.random.normal(jax.random.key(3), m.dynamic_alpha.shape)
        m.dynamic_beta[...] = jax.random.normal(jax.random.key(4), m.dynamic_beta.shape)
    scaled.scale_alpha[...] = jnp.ones(())
    scaled.scale_beta[...] = jnp.ones(())
    width = 32 if cls is HyperConnection else 32 // rate  # HC copies d, FC splits it
    H = jax.random.normal(jax.random.key(5), (2, 8, rate, width))
    for got, want in zip(plain.coefficients(H), scaled.coefficients(H)):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    a, _ = plain.coefficients(H)  # tanh bounds the deviation by 1, not by 0.01
    assert 0.1 < float(jnp.abs(a - plain.static_alpha[...]).max()) <= 1.0


def test_optimizer_labels():
    for conn in (HyperConnection(8, 2), FracConnection(8, 2), ManifoldHyperConnection(8, 2)):
        wd = param_metadata(conn, "weight_decay")
        lr = param_metadata(conn, "lr_group")
        depth = {"static_beta", "dynamic_beta", "scale_beta", "bias_post", "scale_post"}
        for k, v in lr.items():  # width/depth groups drive HC Table 3's freezing ablations
            assert v == ("connection_depth" if k in depth else "connection_width"), (k, v)
        static = {"static_alpha", "static_beta", "bias_pre", "bias_post", "bias_res",
                  "norm_scale"}
        for k, v in wd.items():
            assert v == (k not in static), (type(conn).__name__, k, v)
    lm = LM(CFG.replace(connection="hyper", connection_kwargs=dict(rate=2), scan_layers=True),
            rngs=nnx.Rngs(0))
    lr = param_metadata(lm, "lr_group")
    assert lr["layers"]["stacked"]["attn_conn"]["static_alpha"] == "connection_width"
    assert lr["layers"]["stacked"]["attn_conn"]["static_beta"] == "connection_depth"
    assert param_metadata(lm, "weight_decay")["layers"]["stacked"]["attn_conn"]["dynamic_alpha"]


def test_mhc_mixing_is_doubly_stochastic():
    logits = jax.random.normal(jax.random.key(13), (50, 4, 4))
    P = sinkhorn(logits, 20)
    assert bool(jnp.all(P >= 0))
    np.testing.assert_allclose(P.sum(-2), 1.0, atol=1e-5)   # exact after the last step
    np.testing.assert_allclose(P.sum(-1), 1.0, atol=1e-4)
    # (larger logits converge more slowly: 20 iterations are approximate, as in the mHC paper)
    conn = ManifoldHyperConnection(32, 2)  # defaults: 20 iterations, b_res = 2 I
    conn.phi[...] = 0.05 * jax.random.normal(jax.random.key(14), conn.phi[...].shape)
    conn.scale_res[...] = jnp.float32(1.0)
    H = jax.random.normal(jax.random.key(15), (2, 16, 2, 32))
    R = conn.mixing_matrix(H)
    assert R.shape == (2, 16, 2, 2) and float(jnp.std(R)) > 0
    np.testing.assert_allclose(R.sum(-1), 1.0, atol=1e-3)
    np.testing.assert_allclose(R.sum(-2), 1.0, atol=1e-3)
    # n = 1: the projection is the identity; the static default init is near-identity
    np.testing.assert_allclose(ManifoldHyperConnection(8, 1).mixing_matrix(H[..., :1, :8]), 1.0)
    R0 = ManifoldHyperConnection(8, 4, dynamic=False).mixing_matrix(H)
    np.testing.assert_allclose(np.diag(R0), math.e ** 2 / (math.e ** 2 + 3), rtol=1e-5)


def test_mhc_uniform_pre_init_matches_prenorm():
    """Function-equal to pre-norm at init up to sigmoid/Sinkhorn rounding (the default one-hot
    pre-init differs by the block norm's eps only; see the module docstring)."""
    cfg = CFG.replace(connection="mhc", connection_kwargs=dict(rate=2, pre_init="uniform"))
    logits = LM(cfg, rngs=nnx.Rngs(0))(TOKENS).logits
    np.testing.assert_allclose(logits, _baseline(CFG)[0], atol=1e-5)


@pytest.mark.parametrize("make,match", [
    (lambda: HyperConnection(8, 0), "rate"),
    (lambda: FracConnection(8, 0), "rate"),
    (lambda: ManifoldHyperConnection(8, 0), "rate"),
    (lambda: FracConnection(10, 4), "divide"),
    (lambda: HyperConnection(8, 2, coeff_norm="batchnorm"), "coeff_norm"),
    (lambda: ManifoldHyperConnection(8, 2, sinkhorn_iters=0), "sinkhorn_iters"),
    (lambda: ManifoldHyperConnection(8, 2, pre_init="random"), "pre_init"),
    (lambda: HyperConnection(8, 2, sublayer_idx=-1), "sublayer_idx"),
    (lambda: expand_streams(jnp.ones((2, 8)), 0), "rate"),
    (lambda: split_fracs(jnp.ones((2, 10)), 4), "divide"),
    (lambda: reduce_streams(jnp.ones((2, 2, 8)), "max"), "reduce"),
    (lambda: HyperConnection(8, 2).read(jnp.ones((2, 3, 8))), "state"),
    (lambda: LM(CFG.replace(connection="frac", connection_kwargs=dict(rate=3)),
                rngs=nnx.Rngs(0)), "divide"),
    (lambda: LM(CFG.replace(connection="hyper", connection_kwargs=dict(rate=2, bogus=1)),
                rngs=nnx.Rngs(0)), "bogus"),
])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_out_proj_init_scale_option():
    """``out_proj_init_scale`` multiplies the init std of attention wo and FFN w_down (and so
    breaks the exact pre-norm equivalence); the default 1 leaves them untouched."""
    base = LM(CFG.replace(connection="hyper", connection_kwargs=dict(rate=4)), rngs=nnx.Rngs(0))
    for scale, factor in (("sqrt_n", 2.0), ("inv_sqrt_n", 0.5), (3.0, 3.0)):
        cfg = CFG.replace(connection="hyper",
                          connection_kwargs=dict(rate=4, out_proj_init_scale=scale))
        model = LM(cfg, rngs=nnx.Rngs(0))
        for name in ("attn", "ffn"):
            w = "wo" if name == "attn" else "w_down"
            got = getattr(getattr(model.layers.blocks[1], name), w)[...]
            want = getattr(getattr(base.layers.blocks[1], name), w)[...] * factor
            np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(jnp.max(jnp.abs(model(TOKENS).logits - _baseline(CFG)[0]))) > 1e-4
    with pytest.raises(ValueError, match="out_proj_init_scale"):
        LM(CFG.replace(connection="hyper", connection_kwargs=dict(out_proj_init_scale=-1)),
           rngs=nnx.Rngs(0))


def _check_two_step_grads(conn, g0, g1):
    flat = {k: v for k, v in _flat(g1).items() if "_conn" in k}
    assert len(flat) == 2 * CFG.n_layers * 7
    for k, v in flat.items():
        assert np.all(np.isfinite(v)), (conn, k)
        assert np.abs(v).max() > 0, (conn, k)
    # at init only the parts behind W = 0 (and mHC's R, while the streams are identical) are flat
    zero_at_init = {k.split("/")[-1] for k, v in _flat(g0).items()
                    if "_conn" in k and not np.abs(v).max() > 0}
    expected = ({"scale_pre", "scale_post", "scale_res"} if conn == "mhc"
                else {"scale_alpha", "scale_beta", "norm_scale"})
    assert expected <= zero_at_init <= expected | {"bias_res"}


def test_training_smoke_every_connection_param_gets_gradient():
    """One jitted SGD step on a dynamic HC LM and a dynamic FC LM (one compiled function), then
    the gradient: the dynamic W and the scales (zero gradient at init because tanh(Hn W) = 0)
    receive finite, nonzero gradients. mHC runs the same two steps eagerly."""
    models = [LM(CFG.replace(connection=c, connection_kwargs=dict(rate=2, dynamic=True)),
                 rngs=nnx.Rngs(0)) for c in ("hyper", "frac", "mhc")]
    splits = [nnx.split(m, nnx.Param, ...) for m in models]

    def step(i, p):
        graphdef, _, rest = splits[i]
        g = jax.grad(lambda q: _loss(nnx.merge(graphdef, q, rest)))(p)
        return jax.tree.map(lambda a, b: a - 0.5 * b, p, g), g

    both = jax.jit(lambda ps: [step(i, p) for i, p in enumerate(ps)])
    params = [sp[1] for sp in splits[:2]]
    first = both(params)
    second = both([p for p, _ in first])
    for conn, (_, g0), (_, g1) in zip(("hyper", "frac"), first, second):
        _check_two_step_grads(conn, g0, g1)
    p, g0 = step(2, splits[2][1])
    _check_two_step_grads("mhc", g0, step(2, p)[1])


@pytest.mark.parametrize("conn", ["hyper", "frac", "mhc"])
def test_recompute_gives_identical_outputs_and_gradients(conn):
    """``recompute`` (jax.checkpoint around the stream read) changes what the backward pass
    stores, not what it computes: logits and every gradient equal the stored variant's (nonzero
    dynamic weights, so the recomputed coefficient path matters)."""
    def run(recompute):
        cfg = dataclasses.replace(CFG, connection=conn, n_layers=1,
                                  connection_kwargs={"rate": 4, "recompute": recompute})
        model = LM(cfg, rngs=nnx.Rngs(0))
        for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            if "dynamic" in str(path) or "phi" in str(path):
                v.set_value(0.1 * jax.random.normal(jax.random.key(len(str(path))), v.shape))
        g, s = nnx.split(model)
        f = jax.jit(jax.value_and_grad(lambda s: _loss(nnx.merge(g, s))))
        return f(s)

    (l0, g0), (l1, g1) = run(False), run(True)
    assert float(l0) == float(l1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
