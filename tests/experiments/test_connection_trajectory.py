"""``experiments.connection_trajectory`` on a 4-step static-HC smoke run that keeps every
checkpoint: one entry per retained step in order, each statistic the one
``coefficient_summary`` gives for that checkpoint, and the plot written."""
import json

import numpy as np
import pytest

from experiments.connection_trajectory import STATS, run
from seedjax.train.restore import checkpoint_steps


@pytest.fixture(scope="module")
def shc_run(tmp_path_factory):
    import subprocess
    import sys
    work = tmp_path_factory.mktemp("shc")
    cmd = [sys.executable, "-m", "experiments.train", "--config",
           "configs/papers/hyper_connections.py:smoke", f"--workdir={work}",
           "--config.model.connection=hyper",
           '--config.model.connection_kwargs={"rate": 2, "dynamic": False}',
           "--config.train.steps=4", "--config.train.checkpoint_every=2",
           "--config.train.keep_checkpoints=5", "--sample=false", "--progress=false"]
    subprocess.run(cmd, check=True, capture_output=True, env={**__import__("os").environ,
                                                              "JAX_PLATFORMS": "cpu"})
    return str(work)


def test_trajectory_has_every_retained_step(shc_run, tmp_path):
    from seedjax.eval import connection_diagnostics as cd
    from experiments.diagnose_connections import val_tokens
    from seedjax.train.restore import load_model

    assert checkpoint_steps(shc_run) == [2, 4]
    result = run([shc_run], ["shc"], str(tmp_path), batches=1)
    r = result["runs"]["shc"]
    assert r["steps"] == [2, 4]
    model, config, _ = load_model(shc_run, 2)
    want = cd.coefficient_summary(cd.sublayer_coefficients(
        model, val_tokens(config, 1), chunk=int(config.data.batch_size)))
    for key, _ in STATS:
        assert len(r[key]) == 2
        np.testing.assert_allclose(r[key][0], want[key], rtol=1e-6)
    assert json.loads((tmp_path / "trajectory.json").read_text())["runs"]["shc"]["steps"] == [2, 4]
    assert (tmp_path / "trajectory.png").stat().st_size > 0
