"""configs/papers/race_dit.py: every sweep row builds, paired references name real rows, the
paper-scale configs match Table 4's parameter counts within 1%, and the smoke row runs through
experiments.reproduce (training, FID-proxy, sample grid)."""
import os

import jax
import numpy as np
import pytest
from flax import nnx

from configs.papers import race_dit
from experiments.overrides import apply_overrides
from seedjax.models.dit import DiT, DiTConfig, param_counts
from seedjax.train.config_check import validate_config
from seedjax.train.optim import make_optimizer
from seedjax.train.state import abstract_model, param_labels


@pytest.mark.parametrize("variant", ("smoke", "cpu"))
def test_every_row_builds_and_references_are_rows(variant):
    from experiments.paired_diffs import validate_references
    sweep = race_dit.get_sweep(variant)
    validate_references(sweep)
    base = race_dit.get_config(variant)
    for r in sweep:
        cfg = apply_overrides(base, r["overrides"])
        validate_config(cfg)
        abstract = abstract_model(lambda: DiT(DiTConfig.from_dict(cfg.model), rngs=nnx.Rngs(0)))
        tx, _ = make_optimizer(cfg.train, *param_labels(abstract))
        assert jax.tree.leaves(jax.eval_shape(tx.init, nnx.to_pure_dict(
            nnx.state(abstract, nnx.Param)))), r["name"]


@pytest.mark.parametrize("name", sorted(race_dit.PAPER_PARAMS))
def test_paper_scale_parameter_counts_match_table_4(name):
    total, active = race_dit.PAPER_PARAMS[name]
    counts = param_counts(DiTConfig.from_dict(race_dit.get_config(f"paper_{name}").model))
    assert counts["blocks_total"] == pytest.approx(total, rel=0.01)
    assert counts["blocks_active"] == pytest.approx(active, rel=0.01)
    assert counts["total"] - counts["blocks_total"] < 0.03 * total   # embedders, final layer


def test_smoke_row_runs_through_reproduce(tmp_path):
    from experiments.reproduce import run_one
    rows = {r["name"]: r for r in race_dit.get_sweep("smoke")}
    res = run_one(race_dit.get_config("smoke"), rows[race_dit.SMOKE_TRAIN_ROW], 0,
                  str(tmp_path))
    assert res["status"] == "completed" and np.isfinite(res["val_loss"])
    ev = res["image_eval"]
    assert ev["n"] == 20 and np.isfinite(ev["fid_proxy"]) and 0 <= ev["class_accuracy"] <= 1
    assert os.path.exists(tmp_path / "samples.png")
    assert "moe/tau" in res["val_metrics"]
    from experiments.reproduce import report_text
    text = report_text(str(tmp_path / "out"), "configs/papers/race_dit.py:smoke",
                       race_dit.get_sweep("smoke"), [res], base=race_dit.get_config("smoke"),
                       plots=False)
    assert "| expert_race | fid_proxy" not in text and "| fid_proxy | class_accuracy |" in text


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="paper_s2_moe"):
        race_dit.get_config("paper_s2_moe")
