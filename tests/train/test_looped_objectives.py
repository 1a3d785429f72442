"""Ouro Stage I / Stage II objectives (seedjax.train.looped_objectives): the losses against a
numpy hand computation from the model's own per-loop logits and exit distribution, the chunked
per-loop CE (same gradients, one logit tensor alive at a time), Stage II touching only the gate,
the optimizer's frozen groups, and the training loop end to end (Stage I, then Stage II started
from it with train.init_from)."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.train.looped_objectives import StageOne, StageTwo
from seedjax.train.objectives import eval_sums, make_objective
from seedjax.train.optim import make_optimizer
from seedjax.train.state import abstract_model, model_def, param_labels
from tests.nn.test_looped import looped_cfg, make_lm, tokens


@pytest.fixture(scope="module")
def model():
    m = make_lm(looped_cfg())  # T = 3, vocab 96, d 32
    m.layers.exit_gate.kernel[...] = jnp.asarray(np.random.default_rng(3).normal(0, 0.5, 32),
                                                 jnp.float32)
    return m


def _batch(b=2, t=10):
    x = tokens(b, t + 1, seed=5)
    mask = np.ones((b, t), np.float32)
    mask[1, 6:] = 0.0  # a padded tail: excluded from every mean
    return {"inputs": x[:, :-1], "targets": x[:, 1:], "mask": jnp.asarray(mask)}


def _jit(model, fn, *args):
    """fn(model, *args) jitted over the model's state (one compile instead of op-by-op)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda st, *a: fn(nnx.merge(graphdef, st), *a))(state, *args)


def _hand(model, batch):
    """(ce [T, B, S], p [B, S, T], mask) in float64 from model(inputs).loop_logits/exit_probs."""
    out = _jit(model, lambda m, x: m(x), batch["inputs"])
    logits = np.asarray(out.loop_logits, np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    tgt = np.asarray(batch["targets"])
    ce = -np.take_along_axis(logp, tgt[None, ..., None], axis=-1)[..., 0]
    return ce, np.asarray(out.exit_probs, np.float64), np.asarray(batch["mask"], np.float64)


def test_stage_one_equals_hand_computation(model):
    """Eq. 4 per token, mean over the mask: sum_t p_t CE_t - beta H(p); the logged per-loop CE,
    entropy, mean exit step and exit histogram are the same hand quantities."""
    batch = _batch()
    ce, p, mask = _hand(model, batch)
    beta = 0.07
    h = -(p * np.log(p)).sum(-1)
    per_token = (p * np.moveaxis(ce, 0, -1)).sum(-1) - beta * h
    want = (per_token * mask).sum() / mask.sum()
    total, m = _loss(model, StageOne(beta=beta), batch)
    np.testing.assert_allclose(float(total), want, rtol=2e-6)
    for t in range(3):
        np.testing.assert_allclose(float(m[f"loop_ce/{t + 1}"]), (ce[t] * mask).sum() / mask.sum(),
                                   rtol=2e-6)
        np.testing.assert_allclose(float(m[f"exit_p/{t + 1}"]),
                                   (p[..., t] * mask).sum() / mask.sum(), rtol=2e-6)
    np.testing.assert_allclose(float(m["exit_entropy"]), (h * mask).sum() / mask.sum(), rtol=2e-6)
    np.testing.assert_allclose(float(m["exit_mean_step"]),
                               ((p * [1, 2, 3]).sum(-1) * mask).sum() / mask.sum(), rtol=2e-6)
    assert 0 < float(m["exit_entropy"]) < np.log(3)


def test_beta_schedule_is_piecewise_constant():
    obj = StageOne(beta=0.1, beta_schedule=[(0, 0.1), (5, 0.05), (9, 0.0)])
    got = [float(obj.beta_at(jnp.int32(s))) for s in (0, 4, 5, 8, 9, 100)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.05, 0.05, 0.0, 0.0], rtol=1e-7)
    with pytest.raises(ValueError, match="beta_schedule.*ascending"):
        StageOne(beta_schedule=[(5, 0.1), (2, 0.05)])
    with pytest.raises(ValueError, match="objective_kwargs.beta="):
        StageOne(beta=-1.0)


def _loss(model, objective, batch):
    return _jit(model, lambda m, b: objective.loss(m, b, jnp.int32(0)), batch)


def _grads(model, objective, batch):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params):
        return objective.loss(nnx.merge(graphdef, params, rest), batch, jnp.int32(0))[0]
    return jax.jit(jax.grad(loss))(params)


def test_rematerialised_loop_ce_has_the_same_gradients(model):
    """Recomputing each loop's logits in the backward pass changes no gradient."""
    batch = _batch()
    g1 = _grads(model, StageOne(beta=0.1, remat=True), batch)
    g0 = _grads(model, StageOne(beta=0.1, remat=False), batch)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g0)


def test_chunked_loop_ce_keeps_one_logit_tensor_alive():
    """Compiled temp memory of the Stage I gradient: the chunked per-loop CE holds one loop's
    [B, S, V] float32 logits and their gradient at a time (below 3 such tensors; 2.3 measured),
    while stacking the T = 4 loops' logits (``model(inputs).loop_logits``) needs at least T
    (8.3 measured)."""
    cfg = LMConfig(vocab_size=8192, d_model=16, n_layers=1, n_heads=2, mlp_dim=16,
                   max_seq_len=64, sandwich_norm=True, head="untied", stack="looped",
                   stack_kwargs={"loops": 4})
    abstract = abstract_model(lambda: LM(cfg, rngs=nnx.Rngs(0)))
    mdef = model_def(abstract)
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    b, s = 4, 64
    batch = {"inputs": jax.ShapeDtypeStruct((b, s), jnp.int32),
             "targets": jax.ShapeDtypeStruct((b, s), jnp.int32)}
    one = b * s * cfg.vocab_size * 4

    def chunked(params, batch):
        return StageOne(beta=0.1).loss(mdef.merge(params), batch, jnp.int32(0))[0]

    def stacked(params, batch):
        out = mdef.merge(params)(batch["inputs"])
        lse = jax.nn.logsumexp(out.loop_logits, -1)
        tgt = jnp.take_along_axis(out.loop_logits, batch["targets"][None, ..., None], -1)[..., 0]
        return jnp.mean(jnp.einsum("bst,tbs->bs", out.exit_probs, lse - tgt))

    def temp(fn):
        c = jax.jit(jax.grad(fn)).lower(params, batch).compile()
        return c.memory_analysis().temp_size_in_bytes

    t_chunked, t_stacked = temp(chunked), temp(stacked)
    assert t_chunked < 3 * one, (t_chunked, one)  # measured 2.3: logits, their gradient, ...
    assert t_stacked >= 4 * one, (t_stacked, one)


def test_stage_two_equals_hand_computation_and_trains_only_the_gate(model):
    """Eqs. 5-6: improvement targets from stop-gradient per-loop CE, BCE on lambda of loops
    2..T, normalised by 1/T; every gradient outside the exit gate is exactly zero."""
    batch = _batch()
    ce, _, mask = _hand(model, batch)
    z = np.asarray(_jit(model, lambda m, x: m.loop_states(x).gate_logits, batch["inputs"]),
                   np.float64)  # [T, B, S]
    k, gamma = 50.0, 0.005
    w = 1 / (1 + np.exp(-k * (np.maximum(ce[:-1] - ce[1:], 0) - gamma)))
    lam = 1 / (1 + np.exp(-z[1:]))
    bce = -(w * np.log(1 - lam) + (1 - w) * np.log(lam))
    want = ((bce * mask).sum((1, 2)) / mask.sum()).sum() / 3
    total, m = _loss(model, StageTwo(k=k, gamma=gamma), batch)
    np.testing.assert_allclose(float(total), want, rtol=2e-6)
    grads = nnx.to_flat_state(_grads(model, StageTwo(), batch))
    for path, g in grads:
        nonzero = bool(np.any(np.asarray(g[...]) != 0))
        assert nonzero == ("exit_gate" in path), path


def test_frozen_groups_get_no_update_and_no_decay():
    """train.trainable_groups: parameters outside the named groups keep their exact values
    under weight decay and nonzero gradients; the state's structure is unchanged."""
    abstract = abstract_model(lambda: make_lm(looped_cfg()))
    decay, groups = param_labels(abstract)
    tc = dict(lr=1e-2, steps=10, weight_decay=0.1, grad_clip=1.0)
    tx_all, _ = make_optimizer(tc, decay, groups)
    tx_gate, _ = make_optimizer(tc, decay, groups, trainable=("exit_gate",))
    params = nnx.to_pure_dict(nnx.state(make_lm(looped_cfg()), nnx.Param))
    grads = jax.tree.map(jnp.ones_like, params)
    st = tx_gate.init(params)
    assert jax.tree.structure(st) == jax.tree.structure(tx_all.init(params))
    upd, _ = jax.jit(tx_gate.update)(grads, st, params)
    flat = jax.tree_util.tree_flatten_with_path(upd)[0]
    gflat = jax.tree.leaves(groups)
    for (path, u), g in zip(flat, gflat):
        assert bool(np.any(np.asarray(u) != 0)) == (g == "exit_gate"), path
    with pytest.raises(ValueError, match="trainable_groups.*allowed"):
        make_optimizer(tc, decay, groups, trainable=("gate",))


def test_objective_errors_name_the_field():
    with pytest.raises(ValueError, match="train.objective='ouro'.*allowed"):
        make_objective("ouro")
    with pytest.raises(ValueError, match="needs model.stack='looped'"):
        make_objective("looped", stack="plain")
    with pytest.raises(ValueError, match=r"objective_kwargs \['betta'\].*allowed: \['beta'"):
        make_objective("looped", {"betta": 0.1}, stack="looped")


def test_eval_sums_follow_the_exit_rule(model):
    """A looped model's eval CE is that of the logits ``model(inputs)`` returns (here the
    threshold rule picks per token), and its loop_ce sums those of every loop."""
    batch = _batch()
    ce, _, mask = _hand(model, batch)
    steps = np.asarray(_jit(model, lambda m, x: m(x, exit_threshold=0.6).exit_steps,
                            batch["inputs"]))
    assert len(np.unique(steps)) > 1
    cfg_model = make_lm(looped_cfg(exit_threshold=0.6))
    nnx.update(cfg_model, nnx.state(model))
    sums = _jit(cfg_model, eval_sums, batch)
    rule_ce = np.take_along_axis(ce, steps[None], 0)[0]
    np.testing.assert_allclose(float(sums["ce_sum"]), (rule_ce * mask).sum(), rtol=2e-6)
    np.testing.assert_allclose(float(sums["loop_ce/2"]), (ce[1] * mask).sum(), rtol=2e-6)
    weighted = make_lm(looped_cfg(exit_rule="weighted"))
    nnx.update(weighted, nnx.state(model))
    logits = np.asarray(_jit(weighted, lambda m, x: m(x).logits, batch["inputs"]), np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    nll = lse - np.take_along_axis(logits, np.asarray(batch["targets"])[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(_jit(weighted, eval_sums, batch)["ce_sum"]),
                               (nll * mask).sum(), rtol=2e-6)


def test_stage_one_then_stage_two_through_the_training_loop(tmp_path, small_corpus):
    """configs/papers/ouro.py:smoke (1 layer, 2 loops: test time) trains with the Stage I objective (per-loop CE and exit
    statistics in metrics.jsonl and the val rows); a Stage II run started from it with
    train.init_from keeps every non-gate parameter bit for bit and changes the gate."""
    from configs.papers.ouro import get_config
    from seedjax.train.loop import Trainer
    from seedjax.train.restore import load_model

    def config(**train):
        cfg = get_config("smoke")
        cfg.data.source = small_corpus
        cfg.mesh.shape = dict(data=-1, fsdp=1, model=1, expert=1, mem=1)
        cfg.model.update(n_layers=1, stack_kwargs={**cfg.model.stack_kwargs, "loops": 2})
        for k, v in train.items():  # assignment: update() would merge objective_kwargs
            cfg.train[k] = v
        return cfg

    cfg = config(objective="looped", objective_kwargs={"beta": 0.1})
    one = str(tmp_path / "stage1")
    Trainer(cfg, one, progress=False).run()
    rows = [json.loads(line) for line in open(os.path.join(one, "metrics.jsonl"))]
    train = [r for r in rows if r.get("split", "train") == "train"][-1]
    val = [r for r in rows if r.get("split") == "val"][-1]
    loops = cfg.model.stack_kwargs["loops"]
    for key in [f"loop_ce/{t}" for t in range(1, loops + 1)] + ["exit_entropy",
                                                                 "exit_mean_step"]:
        assert key in train and key in val, key
    assert abs(sum(val[f"exit_p/{t}"] for t in range(1, loops + 1)) - 1) < 1e-5

    cfg2 = config(objective="looped_gate", objective_kwargs={}, init_from=one, lr=1e-2)
    two = str(tmp_path / "stage2")
    Trainer(cfg2, two, progress=False).run()
    m1, _, _ = load_model(one)
    m2, _, _ = load_model(two)
    p1 = dict(nnx.to_flat_state(nnx.state(m1, nnx.Param)))
    p2 = dict(nnx.to_flat_state(nnx.state(m2, nnx.Param)))
    for path in p1:
        same = np.array_equal(np.asarray(p1[path][...]), np.asarray(p2[path][...]))
        assert same == ("exit_gate" not in path), path
