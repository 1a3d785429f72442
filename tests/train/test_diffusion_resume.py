"""The image-diffusion task through the Trainer: a run preempted (SIGTERM path) and resumed
ends bitwise equal to an uninterrupted one, including the Expert Race threshold (model state),
the params EMA and the data position."""
import jax
import numpy as np

from configs.papers import race_dit
from experiments.overrides import apply_overrides
from seedjax.train.loop import Trainer


def _cfg(steps):
    rows = {r["name"]: r for r in race_dit.get_sweep("smoke")}
    cfg = apply_overrides(race_dit.get_config("smoke"), rows["expert_race"]["overrides"])
    cfg.train.update(steps=steps, checkpoint_every=3, eval_every=100, log_every=1)
    return cfg


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight = Trainer(_cfg(6), str(tmp_path / "a"), progress=False)
    straight.run()
    first = Trainer(_cfg(6), str(tmp_path / "b"), progress=False)
    # preempted like SIGTERM after step 3: finishes step 4, saves, stops
    first.add_hook(lambda t, step: setattr(t, "_stop_signal", True), every=3, name="stop")
    assert first.run()["status"] == "preempted"
    resumed = Trainer(_cfg(6), str(tmp_path / "b"), progress=False)
    summary = resumed.run()
    assert summary["status"] == "completed" and summary["step"] == 6
    a, b = jax.device_get(straight.state), jax.device_get(resumed.state)
    assert set(a) == {"step", "params", "opt_state", "rng", "model_state", "ema"}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    tau = a["model_state"]["blocks"][0]["ffn"]["threshold"]["tau"]
    assert float(tau) != 1.0       # trained away from its init, and saved with the run
