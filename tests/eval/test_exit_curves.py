"""Depth and exit-rule curves of a looped LM (seedjax.eval.exit_curves): the per-loop CE equals
that of the model's own per-loop logits (also past the trained depth), q = 1 is the last loop,
static exit points are the loop CEs, and the hidden-difference rule on hand-made states; the
report's paired verdicts (experiments.looped_depth)."""
import jax.numpy as jnp
import numpy as np

from experiments.looped_depth import report
from seedjax.eval.exit_curves import exit_curves, hidden_diff_steps
from tests.nn.test_looped import looped_cfg, make_lm, tokens


def test_curves_equal_the_models_per_loop_logits():
    model = make_lm(looped_cfg())  # T = 3
    x = tokens(2, 11, seed=2)
    batch = {"inputs": x[:, :-1], "targets": x[:, 1:]}
    res = exit_curves(model, [batch], max_loops=5, q_grid=(0.5, 1.0), tau_grid=(1e-9, 10.0))
    logits = np.asarray(model(batch["inputs"], loops=5).loop_logits, np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    tgt = np.asarray(batch["targets"])
    ce = (lse - np.take_along_axis(logits, tgt[None, ..., None], -1)[..., 0]).mean((1, 2))
    np.testing.assert_allclose(res["depth_ce"], ce, rtol=2e-6)
    np.testing.assert_allclose(res["q_ce"][1], ce[2], rtol=2e-6)   # q = 1: the trained last loop
    assert res["q_loops"][1] == 3 and 1 <= res["q_loops"][0] <= 3
    # tau below any change: never exits early; tau above any change: exits at loop 2 (1-based)
    np.testing.assert_allclose(res["diff_loops"], [3.0, 2.0])
    np.testing.assert_allclose(res["diff_ce"], [ce[2], ce[1]], rtol=2e-6)
    assert res["loops"] == 3 and res["tokens"] == 20


def test_hidden_difference_rule_on_hand_made_states():
    # token 0 changes by 50%, 10%, 1%; token 1 by 50% every loop
    x0 = [1.0, 1.5, 1.65, 1.6665]
    x1 = [1.0, 1.5, 2.25, 3.375]
    states = jnp.asarray(np.stack([x0, x1], -1)[:, None, :, None], jnp.float32)  # [T, 1, 2, 1]
    np.testing.assert_array_equal(hidden_diff_steps(states, 0.2), [[2, 3]])
    np.testing.assert_array_equal(hidden_diff_steps(states, 0.05), [[3, 3]])
    np.testing.assert_array_equal(hidden_diff_steps(states, 0.6), [[1, 1]])


def test_report_pairs_loops_over_runs():
    base = {"loops": 2, "tokens": 10.0, "q_grid": [1.0], "tau_grid": [0.1], "q_ce": [1.0],
            "q_loops": [2.0], "diff_ce": [1.0], "diff_loops": [2.0]}
    runs = {f"s{i}": {**base, "depth_ce": [2.0 + d, 1.9 + d, 1.95 + d]}
            for i, d in enumerate((0.0, 0.01, 0.03))}
    text = report(runs, "cmd", [])
    lines = {ln.split("|")[1].strip(): ln for ln in text.splitlines() if ln.startswith("| ")}
    assert "finding" in lines["2 (trained depth)"] and "-0.1000" in lines["2 (trained depth)"]
    assert "finding" in lines["3 (extrapolated)"]
