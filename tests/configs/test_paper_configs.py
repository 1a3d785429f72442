"""Every paper config's sweep builds at the ``smoke`` size: each row's overrides apply and its
model and optimizer construct (abstractly: fast, default suite); each row takes a finite
training step (``slow``); one row per paper runs the real Trainer (default suite)."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.overrides import apply_overrides
from seedjax.models import LM, LMConfig
from seedjax.train.loop import Trainer
from seedjax.train.optim import make_optimizer
from seedjax.train.state import abstract_model, init_params, model_def, param_labels
from seedjax.train.step import make_train_step

PAPERS = ("hyper_connections", "frac_connections", "seednorm", "representation_collapse",
          "ultramem", "ultramem_v2", "ouro", "over_tokenized")


def _rows():
    for paper in PAPERS:
        mod = importlib.import_module(f"configs.papers.{paper}")
        for r in mod.get_sweep("smoke"):
            yield pytest.param(paper, r, id=f"{paper}-{r['name']}")


def _build(paper, row):
    mod = importlib.import_module(f"configs.papers.{paper}")
    cfg = apply_overrides(mod.get_config("smoke"), row["overrides"])
    mcfg = LMConfig.from_dict(cfg.model)
    model_fn = lambda: LM(mcfg, rngs=nnx.Rngs(0))
    abstract = abstract_model(model_fn)
    tx, sched = make_optimizer(cfg.train, *param_labels(abstract))
    return model_fn, abstract, tx, sched


@pytest.mark.parametrize("paper,row", list(_rows()))
def test_sweep_row_builds(paper, row):
    """The row's overrides name real fields and give a valid model and optimizer (abstract
    init: shapes only, no compile)."""
    _, abstract, tx, _ = _build(paper, row)
    shapes = nnx.state(abstract, nnx.Param)
    assert jax.tree.leaves(jax.eval_shape(tx.init, nnx.to_pure_dict(shapes)))


@pytest.mark.slow
@pytest.mark.parametrize("paper,row", list(_rows()))
def test_sweep_row_takes_a_finite_step(paper, row):
    model_fn, abstract, tx, sched = _build(paper, row)
    params = init_params(model_fn)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    x = jax.random.randint(jax.random.key(1), (2, 17), 0, 256)
    state, m = jax.jit(make_train_step(model_def(abstract), tx, sched))(
        state, {"inputs": x[:, :-1], "targets": x[:, 1:]})
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))


# FC and the collapse study build the same connection code as HC: their smoke trainings run
# under the slow marker (test-suite time); every row of every paper still builds above
SMOKE_SLOW = ("frac_connections", "representation_collapse")


@pytest.mark.parametrize("paper", [pytest.param(p, marks=pytest.mark.slow) if p in SMOKE_SLOW
                                   else p for p in PAPERS])
def test_smoke_variant_trains(paper, tmp_path, small_corpus):
    mod = importlib.import_module(f"configs.papers.{paper}")
    rows = {r["name"]: r for r in mod.get_sweep("smoke")}
    name = getattr(mod, "SMOKE_TRAIN_ROW", list(rows)[1])    # the paper's main new row
    cfg = apply_overrides(mod.get_config("smoke"), rows[name]["overrides"])
    cfg.data.source = small_corpus
    summary = Trainer(cfg, str(tmp_path), progress=False).run()
    assert summary["status"] == "completed" and np.isfinite(summary["val"]["loss"])


def test_unknown_variant_raises():
    mod = importlib.import_module("configs.papers.hyper_connections")
    with pytest.raises(ValueError, match="variant"):
        mod.get_config("huge")


@pytest.mark.parametrize("paper", PAPERS)
@pytest.mark.parametrize("variant", ("smoke", "cpu"))
def test_series_name_sweep_rows(paper, variant):
    """A config's get_series (loss vs a swept quantity) only names rows of its own sweep, with
    x > 0 on log axes (experiments.sweep_series.validate_series raises otherwise)."""
    from experiments.sweep_series import validate_series
    mod = importlib.import_module(f"configs.papers.{paper}")
    series = mod.get_series(variant) if hasattr(mod, "get_series") else []
    validate_series(series, [r["name"] for r in mod.get_sweep(variant)])
    for s in series:
        assert len({x for _, x in s["points"]}) == len(s["points"]), s["name"]  # distinct x


@pytest.mark.parametrize("paper", PAPERS + ("memory_tasks",))
@pytest.mark.parametrize("variant", ("smoke", "cpu"))
def test_paired_references_name_sweep_rows(paper, variant):
    """Each row's ``vs`` (the report's paired reference) names another row of the same sweep,
    also after configs/memory_tasks.py keeps only part of the UltraMemV2 sweep."""
    from experiments.paired_diffs import validate_references
    pkg = "configs" if paper == "memory_tasks" else "configs.papers"
    validate_references(importlib.import_module(f"{pkg}.{paper}").get_sweep(variant))
