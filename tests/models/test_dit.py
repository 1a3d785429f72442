"""DiT and Race-DiT MoE: adaLN-Zero init, patchify, CFG, samplers, batch independence at
inference, the Expert Race threshold through the train step (8 fake devices), input errors."""
from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from seedjax.eval.diffusion_sampling import guided, sample_images
from seedjax.models.dit import DiT, DiTConfig, forward_flops_per_image
from seedjax.nn.dit import patchify, unpatchify
from seedjax.sharding.mesh import make_mesh
from seedjax.train.diffusion import DiffusionObjective, make_diffusion_objective
from seedjax.train.state import abstract_model, model_def
from seedjax.train.step import make_train_step

RACE = dict(router="expert_race", n_experts=4, top_k=2, split=2)
TINY = dict(image_size=8, channels=1, patch_size=2, d_model=32, n_layers=2, n_heads=2,
            num_classes=10, freq_dim=32)


call = nnx.jit(lambda m, x, t, y: m(x, t, y))   # eager DiT calls dispatch op by op: slow


def _cfg(**kw):
    return DiTConfig(**{**TINY, **kw})


def _inputs(b=4, seed=0):
    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(k1, (b, 8, 8, 1)), jax.random.uniform(k2, (b,)),
            jax.random.randint(k3, (b,), 0, 10))


def _perturb(model, scale=0.05, seed=1):
    """Random params everywhere (a fresh adaLN-Zero DiT is the zero function)."""
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(model, jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                                for x, k in zip(leaves, keys)]))
    return model


@pytest.fixture(scope="module")
def race_model():
    return _perturb(DiT(_cfg(ffn="moe", moe_kwargs=RACE), rngs=nnx.Rngs(0)))


def test_patchify_roundtrip_and_layout():
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    t = patchify(x, 2)
    assert t.shape == (2, 6, 12)
    np.testing.assert_array_equal(t[0, 1], x[0, 0:2, 2:4].reshape(-1))  # row-major patches
    np.testing.assert_array_equal(unpatchify(t, 2, 4, 6), x)


@pytest.mark.parametrize("ffn", ["mlp", "moe"])
def test_fresh_adaln_zero_dit_outputs_zero_from_every_branch(ffn):
    model = DiT(_cfg(ffn=ffn, moe_kwargs=RACE if ffn == "moe" else {}), rngs=nnx.Rngs(0))
    out = call(model, *_inputs())
    np.testing.assert_array_equal(out.branch_norms, 0.0)
    np.testing.assert_array_equal(out.output, 0.0)


def test_cfg_scale_one_is_the_conditional_model(race_model):
    race_model.eval()
    x, t, y = _inputs()
    cond = call(race_model, x, t, y).output
    g = nnx.jit(lambda m, x, t, y: guided(m, x, t, y, 1.0))(race_model, x, t, y)
    np.testing.assert_array_equal(g, cond)
    # the general formula u + w (c - u) at w = 1 agrees up to rounding (threshold routing:
    # the conditional half is computed exactly as alone)
    null = jnp.full_like(y, 10)
    u = call(race_model, x, t, null).output
    np.testing.assert_allclose(u + 1.0 * (cond - u), cond, atol=1e-5)
    race_model.train()


def test_inference_sample_does_not_depend_on_the_batch(race_model):
    race_model.eval()
    x, t, y = _inputs(b=4)
    x2, t2, y2 = _inputs(b=4, seed=7)
    a = call(race_model, x, t, y).output[0]
    mixed = call(race_model, x.at[1:].set(x2[1:]), t.at[1:].set(t2[1:]),
                 y.at[1:].set(y2[1:])).output[0]
    alone = call(race_model, x[:1], t[:1], y[:1]).output[0]
    np.testing.assert_allclose(mixed, a, atol=1e-6)
    np.testing.assert_allclose(alone, a, atol=1e-6)
    # the training-mode race does depend on the batch (the global top-K)
    race_model.train()
    out = call(race_model, x, t, y)
    assert float(out.stats[0]["experts_per_token"]) == pytest.approx(2.0)


def test_sampling_is_deterministic_and_the_euler_path_reaches_the_data():
    # the exact velocity of the linear path towards one data point mu: v = (mu - x) / (1 - s)
    mu = jnp.full((1, 8, 8, 1), 0.5)
    fake = types.SimpleNamespace(config=types.SimpleNamespace(num_classes=10, image_size=8,
                                                              channels=1))
    fake_model = lambda x, s, y: types.SimpleNamespace(
        output=(mu - x) / (1 - s)[:, None, None, None])
    fake_model.config = fake.config
    obj = DiffusionObjective()
    imgs = sample_images(fake_model, obj, jnp.zeros((3,), jnp.int32), jax.random.key(0),
                         steps=16, sampler="euler")
    np.testing.assert_allclose(imgs, jnp.broadcast_to(mu, imgs.shape), atol=1e-5)
    model = _perturb(DiT(_cfg(), rngs=nnx.Rngs(0)))
    labels = jnp.arange(4) % 10
    sample = nnx.jit(lambda m, key: sample_images(m, obj, labels, key, steps=3, sampler="heun",
                                                  cfg_scale=2.0))
    a, b, c = (sample(model, jax.random.key(k)) for k in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_ddpm_schedule_and_ddim_sampler_runs():
    obj = make_diffusion_objective("ddpm", {})
    ab = obj.alpha_bar()
    assert float(ab[0]) == pytest.approx(1 - 1e-4) and 0 < float(ab[-1]) < 1e-4
    model = DiT(_cfg(n_layers=1), rngs=nnx.Rngs(0))  # fresh: predicts eps = 0
    imgs = nnx.jit(lambda m: sample_images(m, obj, jnp.zeros((2,), jnp.int32),
                                           jax.random.key(0), steps=4, sampler="ddim"))(model)
    assert imgs.shape == (2, 8, 8, 1) and bool(jnp.all(jnp.isfinite(imgs)))
    with pytest.raises(ValueError, match="sample.sampler='euler' needs train.objective='flow'"):
        sample_images(model, obj, jnp.zeros((2,), jnp.int32), jax.random.key(0), steps=4,
                      sampler="euler")


def _train(n_steps, mesh_shape, **moe_kw):
    cfg = _cfg(ffn="moe", moe_kwargs={**RACE, **moe_kw}, n_layers=1)
    model_fn = lambda: DiT(cfg, rngs=nnx.Rngs(0))
    mdef = model_def(abstract_model(model_fn))
    model = model_fn()
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx = optax.adam(1e-3)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0)),
             "model_state": mdef.model_state_of(model)}
    step = make_train_step(mdef, tx, optax.constant_schedule(1e-3),
                           objective=DiffusionObjective(), ema_decay=0.0)
    rng = np.random.default_rng(0)
    batches = [{"images": rng.normal(size=(8, 8, 8, 1)).astype(np.float32),
                "labels": rng.integers(0, 10, 8).astype(np.int32)} for _ in range(n_steps)]
    fn = jax.jit(step)
    if mesh_shape is None:
        for b in batches:
            state, metrics = fn(state, b)
        return state, metrics
    mesh = make_mesh(mesh_shape)
    with jax.set_mesh(mesh):
        data = NamedSharding(mesh, P("data"))
        for b in batches:
            state, metrics = fn(state, jax.device_put(b, data))
    return state, metrics


def test_threshold_trains_and_is_identical_on_every_data_parallel_rank():
    single, m1 = _train(2, None)
    sharded, m8 = _train(2, {"data": 8})
    for block in ("0",):
        tau = sharded["model_state"]["blocks"][int(block)]["ffn"]["threshold"]["tau"]
        shards = [np.asarray(s.data) for s in tau.addressable_shards]
        assert len(shards) == 8 and all(np.array_equal(s, shards[0]) for s in shards)
        tau1 = single["model_state"]["blocks"][int(block)]["ffn"]["threshold"]["tau"]
        np.testing.assert_allclose(np.asarray(tau), np.asarray(tau1), rtol=1e-5)
        assert float(tau1) != 1.0   # moved from its init by the EMA
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-4)


def test_expert_parallel_training_step_equals_unsharded():
    """Experts split 4 ways over the "expert" axis (shard_map inside the jitted step), batch over
    "data": same loss, parameters and threshold as one device."""
    single, m1 = _train(1, None, expert_axis="expert")
    sharded, m8 = _train(1, {"data": 2, "expert": 4}, expert_axis="expert")
    np.testing.assert_allclose(float(m8["loss"]), float(m1["loss"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(jax.device_get(single["params"])),
                    jax.tree.leaves(jax.device_get(sharded["params"]))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(sharded["model_state"]["blocks"][0]["ffn"]["threshold"]["tau"]),
        np.asarray(single["model_state"]["blocks"][0]["ffn"]["threshold"]["tau"]), rtol=1e-6)


def test_threshold_update_is_the_ema_of_the_kth_score():
    cfg = _cfg(ffn="moe", moe_kwargs={**RACE, "threshold_decay": 0.9, "threshold_init": 0.5})
    model = _perturb(DiT(cfg, rngs=nnx.Rngs(0)))
    out = call(model, *_inputs())
    kth = float(out.stats[0]["kth"])
    assert float(model.blocks[0].ffn.threshold.tau[...]) == pytest.approx(0.9 * 0.5 + 0.1 * kth)


@pytest.mark.parametrize("kw, match", [
    (dict(patch_size=3), "model.patch_size=3 must be a positive integer dividing"),
    (dict(ffn="moe", moe_kwargs={**RACE, "top_k": 5}), "top_k=5"),
    (dict(ffn="moe", moe_kwargs={**RACE, "router": "nope"}), "router='nope'"),
    (dict(ffn="moe", moe_kwargs={**RACE, "gating": "relu"}), "gating='relu'"),
    (dict(ffn="moe", moe_kwargs={**RACE, "router": "expert_choice_image",
                                 "capacity_factor": 0.5}), "capacity_factor=0.5"),
    (dict(ffn="dense"), "model.ffn='dense'"),
])
def test_bad_config_values_raise_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_wrong_image_shape_is_a_clear_error():
    model = DiT(_cfg(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"expected \[B, 8, 8, 1\]"):
        model(jnp.zeros((2, 28, 28, 1)), jnp.zeros((2,)), jnp.zeros((2,), jnp.int32))


def test_moe_flops_match_the_dense_model_at_k_equal_split():
    dense = forward_flops_per_image(_cfg())
    moe = forward_flops_per_image(_cfg(ffn="moe", moe_kwargs={**RACE, "plr": False,
                                                               "trunk": False}))
    assert moe["moe_experts"] == dense["ffn"]  # k = s: one dense MLP per token on average


def test_params_ema_warms_up_then_follows_the_decay():
    """ema <- d_n ema + (1 - d_n) params with d_n = min(decay, (1 + n) / (10 + n)): after the
    first update the EMA is 0.2 init + 0.8 params, and late updates use the configured decay."""
    from seedjax.train.step import ema_warmup_decay
    assert float(ema_warmup_decay(0.999, 1)) == pytest.approx(2 / 11)
    assert float(ema_warmup_decay(0.999, 100_000)) == pytest.approx(0.999)
    model = DiT(_cfg(n_layers=1), rngs=nnx.Rngs(0))
    mdef = model_def(abstract_model(lambda: DiT(_cfg(n_layers=1), rngs=nnx.Rngs(0))))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    tx = optax.sgd(0.1)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0)), "ema": params}
    step = jax.jit(make_train_step(mdef, tx, optax.constant_schedule(0.1),
                                   objective=DiffusionObjective(), ema_decay=0.999))
    rng = np.random.default_rng(0)
    new, _ = step(state, {"images": rng.normal(size=(4, 8, 8, 1)).astype(np.float32),
                          "labels": np.arange(4, dtype=np.int32)})
    d = 2 / 11
    for e, p0, p1 in zip(jax.tree.leaves(new["ema"]), jax.tree.leaves(params),
                         jax.tree.leaves(new["params"])):
        np.testing.assert_allclose(e, d * p0 + (1 - d) * p1, rtol=1e-5, atol=1e-7)
