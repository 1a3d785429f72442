"""ProductKeyMemory (PKM): retrieval == brute force over all N slots, forward == an explicit
reference, finite-difference gradients (float64) to queries, sub-keys and values, the "pkm" LM
FFN (loop, scan, jitted train step, value lr group) and config errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.nn.memory import PKMConfig, ProductKeyMemory
from seedjax.nn.params import param_metadata
from seedjax.train.optim import make_optimizer
from seedjax.train.state import abstract_model, model_def, param_labels
from seedjax.train.step import make_train_step

SMALL = PKMConfig(d_model=16, n_keys=6, heads=2, k_dim=8, topk=4)


def _x(shape=(2, 5, 16), seed=1, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _reference_forward(m: ProductKeyMemory, x):
    """Numpy (float64) brute force: query + per-head LayerNorm, all N = n^2 additive scores
    per head, global top-k, softmax over the k, one shared table summed over heads."""
    c = m.config
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(m)))
    q = (x.astype(np.float64) @ p["w_query"]).reshape(*x.shape[:-1], c.heads, c.k_dim)
    if c.query_norm == "layernorm":
        q = (q - q.mean(-1, keepdims=True)) / np.sqrt(q.var(-1, keepdims=True) + c.norm_eps)
        q = q * p["query_scale"].reshape(c.heads, -1) + p["query_bias"].reshape(c.heads, -1)
    half = c.k_dim // 2
    s1 = np.einsum("...hd,hnd->...hn", q[..., :half], p["sub_keys"][:, 0])
    s2 = np.einsum("...hd,hnd->...hn", q[..., half:], p["sub_keys"][:, 1])
    full = (s1[..., :, None] + s2[..., None, :]).reshape(*s1.shape[:-1], -1)
    idx = np.argsort(-full, -1)[..., :c.topk]
    scores = np.take_along_axis(full, idx, -1)
    w = scores
    if c.score_fn == "softmax":
        w = np.exp(scores - scores.max(-1, keepdims=True))
        w = w / w.sum(-1, keepdims=True)
    y = np.einsum("...hk,...hkd->...d", w, p["values"][idx])
    return (y @ p["w_out"] if m.w_out is not None else y), scores, idx


@nnx.jit
def _forward_and_retrieve(m, x):
    return m(x), m.retrieve(x)


# second config: output projection, raw scores, no query norm, topk_side == n_keys
OTHER = {"v_dim": 12, "score_fn": "none", "query_norm": "none", "topk_side": 6, "topk": 20}


@pytest.mark.parametrize("kw", [{}, OTHER])
def test_forward_and_retrieval_equal_brute_force(kw):
    m = ProductKeyMemory(dataclasses.replace(SMALL, **kw), rngs=nnx.Rngs(0))
    x = _x((4, 6, 16))
    y, (scores, idx) = _forward_and_retrieve(m, x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert idx.shape == (4, 6, 2, m.config.topk) and idx.dtype == jnp.int32
    ref_y, ref_s, ref_i = _reference_forward(m, x)
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(idx, ref_i)   # random inputs: no ties
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-5)
    assert (m.w_out is not None) == ("v_dim" in kw)


def test_parameters_axes_and_optimizer_labels():
    m = ProductKeyMemory(SMALL, rngs=nnx.Rngs(0))
    assert m.w_out is None and m.values[...].shape == (36, 16)
    m = ProductKeyMemory(dataclasses.replace(SMALL, v_dim=12), rngs=nnx.Rngs(0))
    assert m.values[...].shape == (36, 12) and m.sub_keys[...].shape == (2, 2, 6, 4)
    assert m.w_query[...].shape == (16, 16) and m.w_out[...].shape == (12, 16)
    axes = param_metadata(m, "out_sharding")
    assert axes["values"] == ("mem_rows", "mem_dim")
    assert axes["sub_keys"] == ("mem_heads", None, "mem_keys", "mem_kdim")
    assert axes["w_query"] == ("embed", "mem_query")
    groups, decay = param_metadata(m, "lr_group"), param_metadata(m, "weight_decay")
    assert groups["values"] == "memory_values" and decay["values"] is False
    assert groups["w_query"] == "default" and decay["query_scale"] is False
    # PKM reference init: values ~ N(0, 1/Dv), sub-keys ~ U(+-1/sqrt(Dk/2))
    assert float(jnp.max(jnp.abs(m.sub_keys[...]))) <= 0.5
    np.testing.assert_allclose(float(jnp.std(m.values[...])), 12 ** -0.5, rtol=0.2)


def test_bf16_compute_keeps_f32_scores():
    m = ProductKeyMemory(SMALL, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y, (scores, _) = _forward_and_retrieve(m, jnp.asarray(_x((4, 6, 16)), jnp.bfloat16))
    assert scores.dtype == jnp.float32 and y.dtype == jnp.bfloat16
    assert bool(jnp.all(jnp.isfinite(y.astype(jnp.float32))))


def test_finite_difference_gradients_float64():
    """Directional derivatives of sum(y * c) w.r.t. every parameter match central differences
    in float64 (eps small enough that the selected slots do not change)."""
    m = ProductKeyMemory(dataclasses.replace(SMALL, v_dim=12), dtype=jnp.float64,
                         rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(m)
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(state))
    x, ct = _x((3, 16), dtype=np.float64), _x((3, 16), seed=2, dtype=np.float64)
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        def f(p):
            st = jax.tree.map(lambda v: v, state)
            nnx.replace_by_pure_dict(st, p)
            return jnp.sum(nnx.merge(graphdef, st)(x) * ct)

        grads = jax.jit(jax.grad(f))(params)
        f = jax.jit(f)
        eps = 1e-6
        for name in ("w_query", "sub_keys", "values", "w_out", "query_scale", "query_bias"):
            g = np.asarray(grads[name])
            assert g.dtype == np.float64 and np.abs(g).max() > 0, name
            d = rng.standard_normal(g.shape)
            fd = (f({**params, name: params[name] + eps * d})
                  - f({**params, name: params[name] - eps * d})) / (2 * eps)
            np.testing.assert_allclose(np.vdot(g, d), float(fd), rtol=1e-6, atol=1e-8,
                                       err_msg=name)
    # only the selected value rows (at most tokens * heads * topk) get gradient
    rows = np.flatnonzero(np.any(np.asarray(grads["values"]) != 0, axis=1))
    assert 0 < len(rows) <= 3 * 2 * 4


LM_CFG = LMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=24,
                  ffn="pkm", ffn_kwargs={"n_keys": 8, "heads": 2, "k_dim": 16, "topk": 4})


@pytest.fixture(scope="module")
def lms():
    """(loop LM, scan LM) with ffn="pkm", same init stream (built once for this file)."""
    return (LM(LM_CFG, rngs=nnx.Rngs(0)), LM(LM_CFG.replace(scan_layers=True), rngs=nnx.Rngs(0)))


def _jit_forward(model, toks):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda st, t: nnx.merge(graphdef, st)(t))(state, toks)


def test_lm_with_pkm_ffn_loop_and_scan_agree(lms):
    loop, scan = lms
    toks = jax.random.randint(jax.random.key(0), (2, 12), 0, 256)
    assert isinstance(loop.layers.blocks[0].ffn, ProductKeyMemory)
    lo, so = _jit_forward(loop, toks), _jit_forward(scan, toks)
    assert lo.logits.shape == (2, 12, 256) and lo.aux_losses == {}
    assert bool(jnp.all(jnp.isfinite(lo.logits)))
    np.testing.assert_allclose(lo.logits, so.logits, atol=1e-5)
    values = scan.layers.stacked["ffn"]["values"]
    assert values[...].shape == (2, 64, 32)
    assert values.get_metadata()["out_sharding"] == ("layers", "mem_rows", "mem_dim")
    assert values.get_metadata()["lr_group"] == "memory_values"
    loop_groups = param_labels(loop)[1]["layers"]["blocks"][1]["ffn"]
    assert loop_groups["values"] == "memory_values" and loop_groups["w_query"] == "default"


def test_lm_pkm_jitted_train_step(lms):
    """make_optimizer accepts the memory_values multiplier; a jitted step has finite, falling
    loss and moves the values, sub-keys and query projection of every layer."""
    loop = lms[0]
    abstract = abstract_model(lambda: LM(LM_CFG, rngs=nnx.Rngs(0)))
    decay, groups = param_labels(abstract)
    for i in range(LM_CFG.n_layers):
        ffn_groups, ffn_decay = groups["layers"]["blocks"][i]["ffn"], decay["layers"]["blocks"][
            i]["ffn"]
        assert ffn_groups["values"] == "memory_values" and ffn_decay["values"] is False
        assert ffn_groups["sub_keys"] == "default" and ffn_decay["sub_keys"] is True
    train = {"lr": 1e-2, "steps": 10, "warmup_steps": 0, "weight_decay": 0.1,
             "lr_multipliers": {"memory_values": 4.0}}
    tx, sched = make_optimizer(train, decay, groups)
    params = nnx.to_pure_dict(nnx.state(loop, nnx.Param))   # = init_params(...) of this config
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    step = jax.jit(make_train_step(model_def(abstract), tx, sched))
    x = jax.random.randint(jax.random.key(1), (2, 17), 0, 256)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    new, metrics = step(state, batch)
    new, metrics2 = step(new, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics2["loss"]) < float(metrics["loss"])
    for i in range(LM_CFG.n_layers):
        before, after = params["layers"]["blocks"][i]["ffn"], new["params"]["layers"]["blocks"][i][
            "ffn"]
        for name in ("values", "sub_keys", "w_query"):
            assert float(jnp.max(jnp.abs(after[name] - before[name]))) > 0, (i, name)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"PKMConfig.topk=17 must be <= topk_side\*\*2=16"):
        PKMConfig(d_model=8, n_keys=8, topk=17, topk_side=4)
    with pytest.raises(ValueError, match="PKMConfig.k_dim=7 must be even"):
        PKMConfig(d_model=8, k_dim=7)
    with pytest.raises(ValueError, match="PKMConfig.topk_side=9 must be <= n_keys=8"):
        PKMConfig(d_model=8, n_keys=8, topk=4, topk_side=9)
    with pytest.raises(ValueError, match="PKMConfig.heads=0"):
        PKMConfig(d_model=8, heads=0)
    with pytest.raises(ValueError, match="query_norm='batchnorm'.*leak future tokens"):
        PKMConfig(d_model=8, query_norm="batchnorm")
    with pytest.raises(ValueError, match="PKMConfig.score_fn='relu'"):
        PKMConfig(d_model=8, score_fn="relu")
    with pytest.raises(ValueError, match="PKMConfig.value_init_std=-1"):
        PKMConfig(d_model=8, value_init_std=-1)
    with pytest.raises(ValueError, match=r"PKMConfig.implementation='pallas'.*\('xla', 'auto'"):
        PKMConfig(d_model=8, implementation="pallas")
    with pytest.raises(ValueError, match="input last dim 7 != d_model=16"):
        ProductKeyMemory(SMALL, rngs=nnx.Rngs(0))(jnp.zeros((2, 7)))
    with pytest.raises(ValueError, match="model.ffn_kwargs"):
        LM(LM_CFG.replace(ffn_kwargs={"n_keys": 8, "mem_size": 3}), rngs=nnx.Rngs(0))
    # defaults resolve to concrete values: topk_side = min(topk, n_keys), v_dim = d_model
    c = PKMConfig(d_model=8, n_keys=4, topk=6)
    assert (c.topk_side, c.v_dim, c.n_slots) == (4, 8, 16)


def test_forward_flops_per_token():
    c = PKMConfig(d_model=16, n_keys=6, heads=2, k_dim=8, topk=4, v_dim=12)
    assert c.forward_flops_per_token() == {"mem_query": 2 * 16 * 2 * 8, "mem_keys": 2 * 2 * 6 * 8,
                                           "mem_values": 2 * 2 * 4 * 12, "mem_out": 2 * 12 * 16}
    assert "mem_out" not in SMALL.forward_flops_per_token()
