"""MoEFFN (token-choice top-k MoE): forward and gradients == a brute-force reference (every
expert on every token) for each dispatch kernel, capacity drops, load-balance and z-losses,
bf16 shapes, the "moe" LM FFN (factory defaults; a Trainer run with scanned layers logging its
aux losses), FLOPs == MoECost, and config errors."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.nn.moe import MoEConfig, MoEFFN, load_balance_loss
from seedjax.nn.moe.experts import blocked_linear, blocked_rows, block_rows, n_blocks
from seedjax.nn.params import param_metadata
from seedjax.train.flops import lm_forward_flops_per_token
from seedjax.train.loop import Trainer
from seedjax.train.memory_cost import MoECost
from tests.conftest import smoke_config

SMALL = MoEConfig(d_model=16, n_experts=6, top_k=2, expert_dim=8)


def _x(shape=(2, 7, 16), seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _swiglu(x, w_gate, w_up, w_down):
    return (jax.nn.silu(x @ w_gate) * (x @ w_up)) @ w_down


def _reference(c: MoEConfig, params, x, keep=None):
    """Brute force in jnp (differentiable): router with argsort top-k, all E experts on all T
    tokens, y = sum_j keep w_j FFN_{I_j}(x) + shared(x); aux losses from their definitions.
    Returns (y [T, d], aux, experts [T, k])."""
    x = jnp.asarray(x).reshape(-1, c.d_model)
    logits = x @ params["router"]["w_router"]
    if c.router_score == "softmax":
        scores = probs = jax.nn.softmax(logits, -1)
    else:
        scores = jax.nn.sigmoid(logits)
        probs = scores / scores.sum(-1, keepdims=True)
    idx = jnp.argsort(-scores, axis=-1)[:, :c.top_k]
    w = jnp.take_along_axis(scores, idx, -1)
    if c.normalize_topk_weights:
        w = w / w.sum(-1, keepdims=True)
    if keep is not None:
        w = w * keep
    e = params["experts"]
    every = jax.vmap(lambda g, u, dn: _swiglu(x, g, u, dn))(e["w_gate"], e["w_up"], e["w_down"])
    y = sum(w[:, j, None] * every[idx[:, j], jnp.arange(x.shape[0])] for j in range(c.top_k))
    if c.n_shared_experts:
        s = params["shared"]
        y = y + _swiglu(x, s["w_gate"], s["w_up"], s["w_down"])
    f = jax.nn.one_hot(idx, c.n_experts).sum((0, 1)) / idx.size
    aux = {"moe_load_balance": c.load_balance_coef * c.n_experts * jnp.sum(f * probs.mean(0))}
    if c.z_loss_coef:
        aux["moe_z_loss"] = c.z_loss_coef * jnp.mean(jax.nn.logsumexp(logits, -1) ** 2)
    return y, aux, idx


_reference_jit = jax.jit(_reference, static_argnums=0)


def _loss(y, aux, ct):
    return jnp.sum(y * ct) + sum(aux.values())


_apply = nnx.jit(lambda m, x: m(x))


@nnx.jit
def _forward_and_grads(m, x, ct):
    def f(m):
        y, aux = m(x)
        return _loss(y.reshape(ct.shape), aux, ct), (y, aux)
    (_, (y, aux)), grads = nnx.value_and_grad(f, has_aux=True)(m)
    return y, aux, m.route(x), grads


DROPLESS = {
    # two shared experts of width 4, z-loss, 4-row blocks (several blocks per expert)
    "blocked": dict(n_shared_experts=2, shared_dim=4, z_loss_coef=1e-2, block_size=4),
    "blocked_sliced": dict(grouped_matmul="blocked_sliced", block_size=4),
    "ragged_dot": dict(grouped_matmul="ragged_dot", router_score="sigmoid",
                       normalize_topk_weights=False, n_shared_experts=1),
    "capacity_huge": dict(capacity_factor=1e3, top_k=3),
}


@pytest.mark.parametrize("name", list(DROPLESS))
def test_forward_and_gradients_equal_brute_force(name):
    """Output, aux losses, routing and every parameter's gradient equal the reference that runs
    every expert on every token (float32, highest matmul precision), for the dropless kernels
    and for capacity mode with a capacity that drops nothing."""
    c = dataclasses.replace(SMALL, **DROPLESS[name])
    m = MoEFFN(c, rngs=nnx.Rngs(0))
    x, ct = _x(), _x((14, 16), seed=2)
    y, aux, (w, idx, probs), grads = _forward_and_grads(m, x, ct)
    params = nnx.to_pure_dict(nnx.state(m, nnx.Param))

    def ref_loss(p):
        y, aux, idx = _reference(c, p, x)
        return _loss(y, aux, ct), (y, aux, idx)

    (_, (ref_y, ref_aux, ref_idx)), ref_grads = jax.jit(
        jax.value_and_grad(ref_loss, has_aux=True))(params)
    assert y.shape == x.shape and w.shape == idx.shape == (2, 7, c.top_k)
    assert probs.shape == (2, 7, 6) and idx.dtype == jnp.int32 and w.dtype == jnp.float32
    np.testing.assert_array_equal(idx.reshape(-1, c.top_k), ref_idx)   # random x: no ties
    np.testing.assert_allclose(y.reshape(-1, 16), ref_y, atol=1e-5, rtol=1e-5)
    assert set(aux) == set(ref_aux)
    for k in aux:
        np.testing.assert_allclose(aux[k], ref_aux[k], rtol=1e-5, err_msg=k)
    ref_flat = dict(jax.tree_util.tree_flatten_with_path(ref_grads)[0])
    for path, g in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]:
        np.testing.assert_allclose(g, ref_flat[path], atol=1e-5, rtol=1e-4, err_msg=str(path))


def test_sliced_blocks_equal_gathered_blocks_with_skipped_experts():
    """The per-expert loop of "blocked_sliced" equals the [G, i, o] gather kernel, output and
    both gradients, on a routing where experts 1 and 4 get nothing, expert 2 fills three
    blocks and the trailing blocks are unused (marked E, left zero)."""
    n_exp, block, i, o = 6, 2, 5, 3
    sizes = jnp.array([1, 0, 5, 2, 0, 1], jnp.int32)
    sorted_expert = jnp.repeat(jnp.arange(n_exp, dtype=jnp.int32), sizes,
                               total_repeat_length=12)                  # A = 12, 9 valid
    r = blocked_rows(sorted_expert, sizes, n_exp, block)
    g = n_blocks(12, n_exp, block)
    assert r.groups.tolist() == [0, 2, 2, 2, 3, 5] + [n_exp] * (g - 6)
    rng = np.random.default_rng(0)
    rows = jnp.where(r.row_valid[:, None], rng.standard_normal((g * block, i)), 0)
    rows = rows.astype(jnp.float32).reshape(g, block, i)
    w = jnp.asarray(rng.standard_normal((n_exp, i, o)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal((n_exp, o)), jnp.float32)
    ct = jnp.asarray(rng.standard_normal((g, block, o)), jnp.float32)

    def loss(sliced):
        lin = blocked_linear(r.groups, sliced=sliced)
        return lambda a, w, b: jnp.sum(lin(a, w, b) * jnp.where(r.row_valid.reshape(g, block, 1),
                                                                 ct, 0))
    with jax.default_matmul_precision("highest"):
        got = jax.value_and_grad(loss(True), argnums=(0, 1, 2))(rows, w, bias)
        ref = jax.value_and_grad(loss(False), argnums=(0, 1, 2))(rows, w, bias)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not np.any(np.asarray(got[1][1])[[1, 4]])   # untouched experts: zero weight gradient


def test_capacity_huge_equals_dropless_kernels():
    """Capacity >= tokens drops nothing: capacity mode == blocked == ragged_dot (same init)."""
    x = _x((3, 10, 16))
    outs = [_apply(MoEFFN(dataclasses.replace(SMALL, **kw), rngs=nnx.Rngs(3)), x)[0] for kw in
            ({}, {"grouped_matmul": "ragged_dot"}, {"capacity_factor": 1e6})]
    for y in outs[1:]:
        np.testing.assert_allclose(y, outs[0], atol=1e-6)


def _capacity_keep(idx: np.ndarray, n_experts: int, capacity: int) -> np.ndarray:
    """Queues filled choice by choice, tokens in order: keep the first `capacity` per expert."""
    keep, used = np.zeros(idx.shape, np.float32), np.zeros(n_experts, int)
    for j in range(idx.shape[1]):
        for t in range(idx.shape[0]):
            keep[t, j] = used[idx[t, j]] < capacity
            used[idx[t, j]] += 1
    return keep


def test_tiny_capacity_drops_assignments():
    """capacity_factor 0.25 (T=14, k=2, E=6 -> C=2): dropped assignments contribute zero and
    the kept weights are not renormalised, i.e. == reference with those assignments masked."""
    c = dataclasses.replace(SMALL, capacity_factor=0.25)
    assert c.capacity(14) == 2
    m = MoEFFN(c, rngs=nnx.Rngs(0))
    x = _x()
    y, _ = _apply(m, x)
    params = nnx.to_pure_dict(nnx.state(m, nnx.Param))
    full, _, idx = _reference_jit(c, params, x)
    keep = _capacity_keep(np.asarray(idx), 6, 2)
    assert 0 < keep.sum() < keep.size          # some kept, some dropped
    ref_y, _, _ = _reference_jit(c, params, x, keep)
    np.testing.assert_allclose(y.reshape(-1, 16), ref_y, atol=1e-5)
    assert float(jnp.max(jnp.abs(y.reshape(-1, 16) - full))) > 1e-3


def test_load_balance_loss_uniform_and_collapsed():
    """E * sum f P is 1 (loss = coef) when probabilities or assignments are uniform and E/k
    when k experts take all tokens and all probability; z-loss = coef * mean lse^2."""
    E, k, T = 8, 2, 16
    lb = jax.jit(load_balance_loss)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, E, (T, k)).astype(np.int32)
    assert float(lb(np.full((T, E), 1 / E, np.float32), idx)) == pytest.approx(1.0)
    balanced = (np.arange(T * k, dtype=np.int32) % E).reshape(T, k)
    probs = rng.dirichlet(np.ones(E), T).astype(np.float32)
    assert float(lb(probs, balanced)) == pytest.approx(1.0, rel=1e-6)
    collapsed = np.zeros((T, E), np.float32)
    collapsed[:, :k] = 1 / k
    assert float(lb(collapsed, np.tile(np.arange(k, dtype=np.int32), (T, 1)))) == \
        pytest.approx(E / k)
    # through the module: a zero router is uniform; a router preferring expert 0 collapses
    c = MoEConfig(d_model=16, n_experts=E, top_k=k, expert_dim=4, load_balance_coef=0.05,
                  z_loss_coef=0.1)
    m = MoEFFN(c, rngs=nnx.Rngs(0))
    x = np.abs(_x((4, 5, 16)))
    m.router.w_router[...] = np.zeros((16, E), np.float32)
    _, aux = _apply(m, x)
    assert float(aux["moe_load_balance"]) == pytest.approx(0.05, rel=1e-6)
    assert float(aux["moe_z_loss"]) == pytest.approx(0.1 * np.log(E) ** 2, rel=1e-6)
    collapse = np.zeros((16, E), np.float32)
    collapse[:, 0] = 10.0
    m.router.w_router[...] = collapse
    _, aux = _apply(m, x)
    assert 0.05 < float(aux["moe_load_balance"]) == pytest.approx(0.05 * E / k, rel=1e-3)
    # only nonzero-coefficient losses are reported
    _, aux = _apply(MoEFFN(dataclasses.replace(c, load_balance_coef=0.0, z_loss_coef=0.0),
                           rngs=nnx.Rngs(0)), x)
    assert aux == {}


def test_gradients_reach_router_experts_shared():
    """With a shared expert and capacity drops (C < T), every parameter (router, the three
    expert stacks, the shared SwiGLU) gets a finite, nonzero gradient."""
    c = dataclasses.replace(SMALL, n_shared_experts=1, capacity_factor=0.5, z_loss_coef=1e-3)
    m = MoEFFN(c, rngs=nnx.Rngs(0))
    x = _x()
    *_, grads = _forward_and_grads(m, x, _x((14, 16), seed=2))
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(grads))[0]
    names = {"/".join(str(p.key) for p in path) for path, _ in flat}
    assert names == {"router/w_router", "experts/w_gate", "experts/w_up", "experts/w_down",
                     "shared/w_gate", "shared/w_up", "shared/w_down"}
    for path, g in flat:
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0, path


def test_shapes_dtypes_bf16_and_parameters():
    """[B, T, d] in, [B, T, d] out in the compute dtype; router outputs stay float32; params
    are float32 with the documented logical axes and optimizer labels."""
    c = dataclasses.replace(SMALL, n_shared_experts=1)
    m32 = MoEFFN(c, rngs=nnx.Rngs(0))
    m16 = MoEFFN(c, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    x = _x((3, 5, 16))
    y32, _ = _apply(m32, x)
    y16, aux = _apply(m16, jnp.asarray(x, jnp.bfloat16))
    w, idx, probs = m16.route(jnp.asarray(x, jnp.bfloat16))
    assert y16.shape == (3, 5, 16) and y16.dtype == jnp.bfloat16
    assert aux["moe_load_balance"].dtype == jnp.float32 and aux["moe_load_balance"].shape == ()
    assert w.dtype == probs.dtype == jnp.float32 and idx.dtype == jnp.int32
    assert w.shape == (3, 5, 2) and probs.shape == (3, 5, 6)
    np.testing.assert_allclose(y16.astype(jnp.float32), y32, atol=0.05)
    axes = param_metadata(m16, "out_sharding")
    assert axes["router"]["w_router"] == ("embed", None)
    assert axes["experts"]["w_gate"] == axes["experts"]["w_up"] == ("expert", "embed", "mlp")
    assert axes["experts"]["w_down"] == ("expert", "mlp", "embed")
    assert axes["shared"]["w_gate"] == ("embed", "mlp")
    assert m16.experts.w_down[...].shape == (6, 8, 16) and m16.experts.w_up.dtype == jnp.float32
    assert m16.shared.w_gate[...].shape == (16, 8)
    groups = jax.tree.leaves(param_metadata(m16, "lr_group"))
    assert set(groups) == {"default"} and all(jax.tree.leaves(param_metadata(m16, "weight_decay")))
    # block rows: block_size, shrunk to the next power of two >= assignments per expert
    assert (block_rows(128, 4096, 8), block_rows(128, 28, 6), block_rows(128, 2, 64)) == (128, 8, 1)


LM_CFG = LMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=24,
                  ffn="moe", ffn_kwargs={"n_experts": 4, "top_k": 2, "expert_dim": 16,
                                         "n_shared_experts": 1, "z_loss_coef": 1e-3})


def test_lm_factory_defaults_and_axes():
    """The "moe" factory takes d_model, dtype and the LM's init stds; scanned layers stack the
    expert weights under a leading "layers" axis (abstract model: nothing is computed)."""
    scan = nnx.eval_shape(lambda: LM(LM_CFG.replace(scan_layers=True), rngs=nnx.Rngs(0)))
    loop = nnx.eval_shape(lambda: LM(LM_CFG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0)))
    ffn = loop.layers.blocks[1].ffn
    assert isinstance(ffn, MoEFFN) and ffn.config.d_model == 32 and ffn.dtype == jnp.bfloat16
    assert ffn.config.out_init_std == pytest.approx(0.02 / 2)     # init_std / sqrt(2 L)
    assert ffn.config.router_init_std == ffn.config.expert_init_std == 0.02
    w_gate = scan.layers.stacked["ffn"]["experts"]["w_gate"]
    assert w_gate.shape == (2, 4, 32, 16)
    assert w_gate.get_metadata()["out_sharding"] == ("layers", "expert", "embed", "mlp")


def test_lm_moe_trains_with_trainer(tmp_path, small_corpus):
    """configs/lm.py:smoke with ffn="moe" and scanned layers (per-layer aux losses stacked by
    lax.scan and summed) trains on the 8-device mesh: finite, falling loss, both aux losses
    logged with plausible values (2 layers x 0.01 x E sum f P, which lies in (0, E/k])."""
    cfg = smoke_config(small_corpus, steps=6, log_every=3, eval_every=6, checkpoint_every=6)
    cfg.model.update(ffn="moe", scan_layers=True)
    cfg.model.ffn_kwargs = {"n_experts": 8, "top_k": 2, "expert_dim": 32, "n_shared_experts": 1,
                            "z_loss_coef": 1e-4}
    summary = Trainer(cfg, str(tmp_path), progress=False).run()
    assert summary["status"] == "completed" and np.isfinite(summary["val"]["loss"])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 2 and train[-1]["loss"] < train[0]["loss"]
    for r in train:
        assert 0.02 * 0.5 < r["aux/moe_load_balance"] < 0.02 * 8 / 2 and r["aux/moe_z_loss"] > 0


def test_flops_equal_moe_cost():
    """Activated FLOPs/token == MoECost (router + k experts + shared), also through the LM."""
    for kw, cost in [(dict(n_experts=64, top_k=8, expert_dim=384), {}),
                     (dict(n_experts=16, top_k=2, expert_dim=96, n_shared_experts=2),
                      dict(n_shared=2)),
                     (dict(n_experts=8, top_k=1, expert_dim=64, n_shared_experts=1,
                           shared_dim=256), dict(n_shared=1, shared_inner=256))]:
        c = MoEConfig(d_model=768, **kw)
        want = MoECost(768, n_experts=c.n_experts, top_k=c.top_k, expert_inner=c.expert_dim,
                       **cost).flops_per_token()
        assert c.forward_flops_per_token() == want
    per_layer = MoEConfig(d_model=32, **LM_CFG.ffn_kwargs).forward_flops_per_token()
    lm = lm_forward_flops_per_token(LM_CFG, seq_len=16)
    assert {k: lm[k] for k in per_layer} == {k: 2 * v for k, v in per_layer.items()}
    # k * F = mlp_dim: experts cost what the dense SwiGLU does
    dense = lm_forward_flops_per_token(LM_CFG.replace(ffn="swiglu", ffn_kwargs={}), 16)
    assert lm["experts"] == dense["mlp"] // 2


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"MoEConfig.top_k=7 must be in \[1, n_experts=6\]"):
        MoEConfig(d_model=8, n_experts=6, top_k=7)
    with pytest.raises(ValueError, match="MoEConfig.top_k=0 must be an integer >= 1"):
        MoEConfig(d_model=8, top_k=0)
    with pytest.raises(ValueError, match=r"MoEConfig.router_score='relu'.*'softmax', 'sigmoid'"):
        MoEConfig(d_model=8, router_score="relu")
    for bad in (0, -1.0, float("inf"), "2", True):
        with pytest.raises(ValueError, match="MoEConfig.capacity_factor=.* must be None"):
            MoEConfig(d_model=8, capacity_factor=bad)
    with pytest.raises(ValueError, match="MoEConfig.n_shared_experts=-1 must be an integer >= 0"):
        MoEConfig(d_model=8, n_shared_experts=-1)
    with pytest.raises(ValueError, match="MoEConfig.load_balance_coef=-0.1"):
        MoEConfig(d_model=8, load_balance_coef=-0.1)
    with pytest.raises(ValueError, match="MoEConfig.grouped_matmul='megablocks'"):
        MoEConfig(d_model=8, grouped_matmul="megablocks")
    with pytest.raises(ValueError, match="MoEConfig.normalize_topk_weights=1"):
        MoEConfig(d_model=8, normalize_topk_weights=1)
    with pytest.raises(ValueError, match="MoEConfig.router_init_std=0"):
        MoEConfig(d_model=8, router_init_std=0)
    with pytest.raises(ValueError, match="input last dim 7 != d_model=16"):
        MoEFFN(SMALL, rngs=nnx.Rngs(0))(jnp.zeros((2, 7)))
    with pytest.raises(ValueError, match="model.ffn_kwargs"):
        nnx.eval_shape(lambda: LM(LM_CFG.replace(ffn_kwargs={"n_experts": 4, "n_routed": 2}),
                                  rngs=nnx.Rngs(0)))
    # defaults resolve: expert_dim = d_model // 2, shared_dim = expert_dim, capacity clipped to T
    c = MoEConfig(d_model=8, n_experts=4, top_k=2, capacity_factor=100.0)
    assert (c.expert_dim, c.shared_dim, c.capacity(10), SMALL.capacity(10)) == (4, 4, 10, None)


@pytest.mark.parametrize("kernel", ["blocked", "ragged_dot"])
def test_batch_sharded_dispatch_is_per_device_and_exact(kernel):
    """Under a data x fsdp mesh (2 x 4 of the 8 test devices) with the batch sharded, each
    device sorts only its own tokens ("batch_shards": the optimized HLO sorts [1, T k / 8]
    rows; "global" sorts all T k) and outputs and aux losses equal the one-device call."""
    import re

    from jax.sharding import NamedSharding, PartitionSpec as P

    from seedjax.sharding.mesh import make_mesh
    x = jax.random.normal(jax.random.key(1), (8, 64, 32))
    mesh = make_mesh({"data": 2, "fsdp": 4})
    sorts = {}
    for groups in ("batch_shards", "global"):
        c = MoEConfig(d_model=32, n_experts=8, top_k=2, expert_dim=16, z_loss_coef=1e-3,
                      grouped_matmul=kernel, dispatch_groups=groups)
        model = MoEFFN(c, rngs=nnx.Rngs(0))
        y0, aux0 = model(x)
        gd, state = nnx.split(model)
        fn = jax.jit(lambda st, v, gd=gd: nnx.merge(gd, st)(v))
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, NamedSharding(mesh, P(("data", "fsdp"))))
            y, aux = fn(state, xs)
            hlo = fn.lower(state, xs).compile().as_text()
        np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)
        for k in aux0:
            np.testing.assert_allclose(aux[k], aux0[k], rtol=1e-5)
        sorts[groups] = {int(np.prod([int(d) for d in s.split(",")]))
                         for s in re.findall(r"\(s32\[([\d,]+)\]\S* s32\[[\d,]+\]\S*\) sort\(", hlo)}
    assert sorts["batch_shards"] == {64 * 2}, sorts
    assert sorts["global"] == {8 * 64 * 2}, sorts
