"""SeeDNorm and DyT: init equivalence with RMSNorm, the formula per activation, multi-head
shapes and per-head scope, dtypes, optimizer labels, errors, and use inside the LM."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.nn.norms import DyT, RMSNorm, SeeDNorm
from seedjax.nn.params import param_metadata

X = 3.0 * jax.random.normal(jax.random.key(0), (2, 5, 32))


def _reference(x, gamma, alpha, beta, heads, act, eps=1e-6):
    x = np.asarray(x, np.float64)
    d = x.shape[-1]
    xh = x.reshape(*x.shape[:-1], heads, d // heads)
    s = np.einsum("...hc,hc->...h", xh, np.asarray(beta, np.float64).reshape(heads, -1))
    from scipy.special import erf
    a = {"tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
         "hardtanh": lambda v: np.clip(v, -1, 1),
         "gelu": lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))),
         "swish": lambda v: v / (1 + np.exp(-v))}[act](s)
    gain = np.asarray(gamma).reshape(heads, -1) + a[..., None] * np.asarray(alpha).reshape(heads, -1)
    rms = np.sqrt(np.mean(x * x, -1, keepdims=True) + eps)
    return (gain * xh).reshape(x.shape) / rms


@pytest.mark.parametrize("heads", [1, 4])
@pytest.mark.parametrize("act", ["tanh", "hardtanh"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_init_equals_unit_gain_rmsnorm(heads, act, dtype):
    x = X.astype(dtype)
    y = SeeDNorm(32, num_heads=heads, activation=act)(x)
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_array_equal(y, RMSNorm(32)(x))
    z = SeeDNorm(32, num_heads=heads, zero_centered_gamma=True)(x)
    np.testing.assert_array_equal(z, RMSNorm(32)(x))


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "hardtanh", "gelu", "swish"])
@pytest.mark.parametrize("heads", [1, 2, 8])
def test_formula_against_numpy(act, heads):
    norm = SeeDNorm(32, num_heads=heads, activation=act, alpha_init=0.7)
    keys = jax.random.split(jax.random.key(1), 2)
    norm.beta[...] = 0.2 * jax.random.normal(keys[0], (32,))
    norm.gamma[...] = 1.0 + 0.1 * jax.random.normal(keys[1], (32,))
    y = norm(X)
    ref = _reference(X, norm.gamma[...], norm.alpha[...], norm.beta[...], heads, act)
    np.testing.assert_allclose(y, ref, rtol=2e-5, atol=2e-5)
    assert norm.dynamic_scalar(X).shape == (2, 5, heads)


@pytest.mark.parametrize("dot_scale,divisor", [("sqrt_dim", 8 ** 0.5), ("dim", 8.0)])
def test_dot_scale_divides_the_per_head_dot_product(dot_scale, divisor):
    """dot_scale="sqrt_dim"/"dim" equals the unscaled norm with beta divided by sqrt(D/h) / D/h."""
    beta = 0.3 * jax.random.normal(jax.random.key(3), (32,))
    scaled, plain = SeeDNorm(32, num_heads=4, dot_scale=dot_scale), SeeDNorm(32, num_heads=4)
    scaled.beta[...], plain.beta[...] = beta, beta / divisor
    np.testing.assert_allclose(scaled(X), plain(X), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(scaled(X) - SeeDNorm(32, num_heads=4)(X)))) > 0  # not a no-op


def test_scalar_alpha_equals_a_constant_alpha_vector():
    """scalar_alpha=True (one learned alpha) == the vector form with every alpha equal; the
    element-wise ablation (num_heads = dim) has one tanh per channel."""
    beta = 0.3 * jax.random.normal(jax.random.key(4), (32,))
    scalar, vector = SeeDNorm(32, scalar_alpha=True, alpha_init=0.7), SeeDNorm(32, alpha_init=0.7)
    scalar.beta[...], vector.beta[...] = beta, beta
    assert scalar.alpha[...].shape == (1,)
    np.testing.assert_allclose(scalar(X), vector(X), rtol=1e-6, atol=1e-6)
    per_channel = SeeDNorm(32, num_heads=32)
    per_channel.beta[...] = beta
    ref = _reference(X, per_channel.gamma[...], per_channel.alpha[...], beta, 32, "tanh")
    np.testing.assert_allclose(per_channel(X), ref, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(per_channel.dynamic_scalar(X), np.tanh(X * beta), rtol=1e-5,
                               atol=1e-6)


def test_sigmoid_at_init_is_rmsnorm_times_one_plus_half_alpha():
    y = SeeDNorm(32, activation="sigmoid", alpha_init=1.0)(X)
    np.testing.assert_allclose(y, 1.5 * RMSNorm(32)(X), rtol=1e-6)


def test_multi_head_scope_and_input_norm_dependence():
    """tanh(x_(j) . beta_(j)) only rescales head j's channels; the RMS stays over all channels;
    unlike RMSNorm the output depends on the input's scale through s = x . beta."""
    norm = SeeDNorm(32, num_heads=4)
    norm.beta[...] = jnp.zeros((32,)).at[:8].set(0.5)  # only head 0 has a dynamic term
    y, base = norm(X), RMSNorm(32)(X)
    np.testing.assert_array_equal(y[..., 8:], base[..., 8:])
    assert float(jnp.max(jnp.abs(y[..., :8] - base[..., :8]))) > 1e-3
    np.testing.assert_allclose(RMSNorm(32)(2.0 * X), base, rtol=1e-5)
    assert float(jnp.max(jnp.abs(norm(2.0 * X) - y))) > 1e-3


def test_beta_and_alpha_get_gradient_at_init():
    norm = SeeDNorm(32)
    grads = nnx.grad(lambda m: jnp.sum(m(X) * jnp.arange(32.0)))(norm)
    assert float(jnp.max(jnp.abs(grads["beta"][...]))) > 0  # d/dbeta = alpha x_hat (1-tanh^2) x
    np.testing.assert_array_equal(grads["alpha"][...], 0.0)   # tanh(0) = 0 at init


def test_weight_decay_labels():
    assert param_metadata(SeeDNorm(8), "weight_decay") == {"alpha": True, "beta": True,
                                                           "gamma": False}
    assert param_metadata(SeeDNorm(8, decay_alpha_beta=False), "weight_decay") == {
        "alpha": False, "beta": False, "gamma": False}  # the paper's weight-decay ablation
    assert param_metadata(SeeDNorm(8), "lr_group") == {
        "alpha": "seednorm_alpha", "beta": "seednorm_beta", "gamma": "seednorm_gamma"}


def test_a_zero_lr_group_holds_that_parameter_at_init():
    """The "without alpha" ablation: lr multiplier 0 on seednorm_alpha keeps alpha at its init
    through AdamW steps (weight decay included) while beta and gamma train; beta_init sets the
    fixed direction used by "without beta"."""
    from seedjax.train.optim import make_optimizer
    norm = SeeDNorm(8, beta_init=0.25)
    np.testing.assert_array_equal(norm.beta[...], 0.25)
    params = nnx.to_pure_dict(nnx.state(norm, nnx.Param))
    tx, _ = make_optimizer({"lr": 0.1, "steps": 10, "weight_decay": 0.1,
                            "lr_multipliers": {"seednorm_alpha": 0.0}},
                           param_metadata(norm, "weight_decay"), param_metadata(norm, "lr_group"))
    x = jax.random.normal(jax.random.key(1), (4, 8))

    graphdef, state0 = nnx.split(norm)

    def loss(p):
        st = jax.tree.map(lambda v: v, state0)
        nnx.replace_by_pure_dict(st, p)
        return jnp.sum(nnx.merge(graphdef, st)(x) ** 3)
    state = tx.init(params)
    for _ in range(3):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        params = jax.tree.map(lambda p, u: p + u, params, updates)
    np.testing.assert_array_equal(params["alpha"], 1.0)
    assert float(jnp.abs(params["beta"] - 0.25).max()) > 0
    assert float(jnp.abs(params["gamma"] - 1.0).max()) > 0
    assert param_metadata(DyT(8), "weight_decay") == {"alpha": False, "bias": False,
                                                      "gamma": False}


@pytest.mark.parametrize("make,match", [
    (lambda: SeeDNorm(32, activation="relu"), "activation"),
    (lambda: SeeDNorm(32, activation="elu"), "tanh"),
    (lambda: SeeDNorm(32, num_heads=5), "num_heads"),
    (lambda: SeeDNorm(32, dot_scale="half"), "dot_scale"),
    (lambda: SeeDNorm(32, num_heads=0), "num_heads"),
    (lambda: SeeDNorm(0), "dim"),
    (lambda: DyT(0), "dim"),
    (lambda: SeeDNorm(32)(jnp.ones((2, 16))), "last dim"),
])
def test_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dyt(dtype):
    norm = DyT(32)
    assert float(norm.alpha[...]) == 0.5
    x = X.astype(dtype)
    y = norm(x)
    assert y.shape == x.shape and y.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, np.float32),
                               np.tanh(0.5 * np.asarray(x, np.float32)), rtol=1e-2, atol=1e-2)
    norm.gamma[...] = jnp.full((32,), 2.0)
    norm.bias[...] = jnp.full((32,), 0.1)
    np.testing.assert_allclose(norm(X), 2.0 * jnp.tanh(0.5 * X) + 0.1, rtol=1e-6)
    assert float(DyT(32, alpha_init=1.5).alpha[...]) == 1.5


CFG = LMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=24)
TOKENS = jax.random.randint(jax.random.key(0), (2, 16), 0, 256)


@pytest.mark.parametrize("scan", [False, True])
def test_seednorm_lm_equals_rmsnorm_lm_at_init(scan):
    base = LM(CFG.replace(scan_layers=scan), rngs=nnx.Rngs(0))(TOKENS).logits
    seed = LM(CFG.replace(scan_layers=scan, norm="seednorm", norm_kwargs={"num_heads": 4}),
              rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(seed(TOKENS).logits, base)
    labels = param_metadata(seed, "weight_decay")
    norm = labels["final_norm"]
    assert norm == {"alpha": True, "beta": True, "gamma": False}


def test_dyt_lm_runs_and_bad_kwargs_are_reported():
    out = LM(CFG.replace(norm="dyt", norm_kwargs={"alpha_init": 1.0}), rngs=nnx.Rngs(0))(TOKENS)
    assert out.logits.shape == (2, 16, 256) and bool(jnp.all(jnp.isfinite(out.logits)))
    with pytest.raises(ValueError, match="activation"):
        LM(CFG.replace(norm="seednorm", norm_kwargs={"activation": "relu"}), rngs=nnx.Rngs(0))


def test_rmsnorm_scale_init_multiplies_the_output():
    np.testing.assert_allclose(RMSNorm(32, scale_init=1.5)(X), 1.5 * RMSNorm(32)(X), rtol=1e-6)
    lm = LM(CFG.replace(norm_kwargs={"scale_init": 1.5}), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(lm.final_norm.scale[...], 1.5)
