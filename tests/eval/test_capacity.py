"""Knowledge capacity (seedjax.eval.capacity) on hand-computed values, and the paper's tasks
through the generic task_eval scoring path (seedjax.eval.task_scoring). No training."""
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.data.capo import CapoConfig
from seedjax.data.looped_tasks import ManoConfig, MultiHopConfig
from seedjax.eval import capacity as cap
from seedjax.eval import task_scoring as ts


def test_capacity_ratio_on_hand_computed_values():
    """N=4, N0=8, S0=4*2, P=10, p1=p2=ln 2: name bits 4*(3-1)=8, attribute bits 4*(3-1)=8,
    R=1.6; knowing nothing (p1 = ln N0, p2 = ln S0) gives 0 bits; knowing every biography
    (p1 = ln N, p2 = 0) gives max_bits = N log2(N0/N) + N log2 S0 = 4 + 12."""
    kw = dict(n_people=4, name_sizes=(8,), attr_sizes=(4, 2))
    b = cap.capacity_bits(math.log(2), math.log(2), **kw)
    assert b["name_bits"] == pytest.approx(8) and b["attr_bits"] == pytest.approx(8)
    assert cap.capacity_ratio(math.log(2), math.log(2), n_params=10, **kw) == pytest.approx(1.6)
    assert cap.capacity_bits(math.log(8), math.log(8), **kw)["bits"] == pytest.approx(0, abs=1e-12)
    best = cap.capacity_bits(math.log(4), 0.0, **kw)
    assert best["bits"] == pytest.approx(16) == best["max_bits"]
    # the paper's S0 = 2*(12*28*200)*200*300*100*263: log2 S0 = 47.6 bits per person
    s0 = (2, 12 * 28 * 200, 200, 300, 100, 263)
    assert cap.capacity_bits(0.0, 0.0, n_people=1, name_sizes=1, attr_sizes=s0)["attr_bits"] \
        == pytest.approx(47.6, abs=0.05)
    with pytest.raises(ValueError, match=r"name_sizes\[0\]=0 must be an integer >= 1"):
        cap.capacity_bits(0.0, 0.0, n_people=1, name_sizes=(0,), attr_sizes=2)
    with pytest.raises(ValueError, match="n_params=0"):
        cap.capacity_ratio(0.0, 0.0, n_params=0, **kw)


def test_person_ce_sums_per_person_and_averages_over_people():
    nll = np.array([[0.0, 1.0, 2.0, 3.0], [0.0, 0.5, 0.5, 4.0]])
    name = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], bool)
    attr = np.array([[0, 0, 0, 1], [0, 0, 1, 1]], bool)
    assert cap.person_ce(nll, name, attr) == pytest.approx(((3.0 + 0.5) / 2, (3.0 + 4.5) / 2))
    with pytest.raises(ValueError, match="one shape"):
        cap.person_ce(nll, name[:, :3], attr)


class _UniformLM(nnx.Module):
    """Equal logits over 256 ids: every token costs ln 256 nats."""

    def __init__(self):
        self.w = nnx.Param(jnp.zeros((3, 4)))

    def __call__(self, tokens):
        return SimpleNamespace(logits=jnp.zeros(tokens.shape + (256,)) + 0.0 * self.w[0, 0])


def test_evaluate_capacity_of_a_uniform_model():
    """A uniform model pays ln 256 per name/attribute byte (the first name byte too, after the
    eos), so p1 = mean name bytes * ln 256; n_params counts the nnx.Params (12)."""
    cfg = CapoConfig(n_people=12, n_first=4, n_last=4, n_years=3, n_cities=2, n_universities=2,
                     n_majors=2, n_employers=2)
    out = cap.evaluate_capacity(_UniformLM(), cfg, batch_size=8)
    pop = cfg.population(0)
    assert out["p1"] == pytest.approx(pop["name_mask"].sum(1).mean() * math.log(256), rel=1e-5)
    assert out["p2"] == pytest.approx(pop["attr_mask"].sum(1).mean() * math.log(256), rel=1e-5)
    assert out["n_params"] == 12 and out["bits"] < 0 and out["n_people"] == 12
    assert out["bits_per_param"] == pytest.approx(out["bits"] / 12)


class _OracleLM(nnx.Module):
    """Cheats: its logits at t are one-hot on the true token t + 1."""

    def __call__(self, tokens):
        return SimpleNamespace(logits=jax.nn.one_hot(jnp.roll(tokens, -1, axis=1), 256))


@pytest.mark.parametrize("cfg", [ManoConfig(max_ops=4), MultiHopConfig(), CapoConfig()],
                         ids=["mano", "multihop", "capo"])
def test_paper_tasks_score_through_task_eval(cfg):
    """The generic scorer takes the new tasks: an oracle scores 1.0 on the single answer token
    (mano, multihop: exact match == token accuracy) or on every attribute (capo), with chance
    1/modulus, 1/people_per_layer; tasks_from_config accepts them by name."""
    m = ts.evaluate_task(_OracleLM(), cfg, n_episodes=12, batch_size=8)
    assert m["token_acc"] == m["exact_match"] == 1.0
    per_ep = 5 if cfg.name == "capo" else 1
    assert m["n_queries"] == 12 * per_ep
    if cfg.name != "capo":
        assert m["n_answer_tokens"] == 12
        assert m["chance"] == (1 / 23 if cfg.name == "mano" else 1 / 16)
    config = SimpleNamespace(data=SimpleNamespace(source="stdlib", seq_len=256))
    assert ts.tasks_from_config(config, cfg.name) == {cfg.name: type(cfg)()}


def test_scoring_refuses_token_ids_outside_the_model_vocabulary():
    """Symbolic ids (from 128) fed to a model with a 128-token vocabulary would be clamped by
    the embedding; the scorer raises instead, naming model.vocab_size."""
    model = _OracleLM()
    model.cfg = SimpleNamespace(vocab_size=128, max_seq_len=64)
    with pytest.raises(ValueError, match="outside model.vocab_size=128"):
        ts.evaluate_task(model, ManoConfig(max_ops=4), n_episodes=2)
