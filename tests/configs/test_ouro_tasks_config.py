"""configs/papers/ouro_tasks.py (Ouro Sec. 6: Mano and Capo, looped vs non-looped): the three
shapes per task are iso-parameter / iso-FLOP as named, every row's task source fits its window,
the capacity probe lands in the run result and the report, and the smoke rows train through
experiments.reproduce (slow)."""
import json
import math

import numpy as np
import pytest
from flax import nnx

from configs.papers import ouro_tasks as PAPER
from experiments.overrides import apply_overrides
from experiments.reproduce import report_text, run_one
from experiments.task_plot import task_kind, task_metric
from seedjax.data.synthetic import parse_task_source
from seedjax.eval.task_scoring import MODEL_PROBES, evaluate_config, markdown_table
from seedjax.models import LM, LMConfig

CAP_KEYS = {"p1", "p2", "bits", "max_bits", "n_params", "n_people", "bits_per_param"}


def _configs(variant):
    return {r["name"]: apply_overrides(PAPER.get_config(variant), r["overrides"])
            for r in PAPER.get_sweep(variant)}


def _n_params(cfg) -> int:
    abstract = nnx.eval_shape(lambda: LM(LMConfig.from_dict(cfg.model), rngs=nnx.Rngs(0)))
    return sum(math.prod(v.shape) for _, v in nnx.state(abstract, nnx.Param).flat_state())


@pytest.mark.parametrize("variant", PAPER.VARIANTS)
def test_rows_are_iso_parameter_and_iso_flop_as_named(variant):
    """Per task: the loop and the iso-parameter row have equal parameter counts and the same
    layers; the iso-FLOP row has LAYERS x LOOPS distinct layers (as many layer applications as
    the loop); every row's task fits its window and trains one pass (blocks >= steps x batch)."""
    cfgs = _configs(variant)
    for task in ("mano", "capo"):
        loop, iso_p, iso_f = (cfgs[f"{task}_{s}"] for s in ("loop", "iso_params", "iso_flops"))
        assert loop.model.stack == "looped" and iso_p.model.stack == iso_f.model.stack == "plain"
        assert _n_params(loop) == _n_params(iso_p) < _n_params(iso_f)
        assert (loop.model.n_layers * loop.model.stack_kwargs["loops"]
                == iso_f.model.n_layers == PAPER.LAYERS * PAPER.LOOPS)
        for c in (loop, iso_p, iso_f):
            src = parse_task_source(c.data.source)
            assert list(src.tasks) == [task]
            src.tasks[task].check_fits(c.data.seq_len)
            assert src.blocks >= c.train.steps * c.data.batch_size
        assert "capo_capacity" in loop.task_eval.tasks.split(",") or task == "mano"


def test_capacity_probe_needs_a_capo_source():
    """capo_capacity on a run that did not train on task:capo is a ValueError naming both."""
    cfg = _configs("smoke")["mano_loop"]
    cfg.task_eval.tasks = "capo_capacity"
    with pytest.raises(ValueError, match="capo_capacity.*task:capo"):
        evaluate_config(None, cfg)
    assert set(MODEL_PROBES) == {"cfg_generation", "capo_capacity"}


def test_capacity_probe_of_an_untrained_model():
    """An untrained capo smoke model through evaluate_config: the teacher-forced capo task and
    the capacity probe, whose bits follow from p1, p2 by the R(F) formula (below its maximum)
    and whose parameter count is the model's."""
    cfg = _configs("smoke")["capo_loop"]
    model = LM(LMConfig.from_dict(cfg.model), rngs=nnx.Rngs(0))
    out = evaluate_config(model, cfg)
    assert list(out) == ["capo", "capo_capacity"]
    m = out["capo_capacity"]
    assert CAP_KEYS <= set(m) and m["n_params"] == _n_params(cfg)
    task = parse_task_source(cfg.data.source).tasks["capo"]
    log2_n0 = sum(math.log2(s) for s in task.name_sizes)
    log2_s0 = sum(math.log2(s) for s in task.attr_sizes)
    want = task.n_people * (log2_n0 + log2_s0 - (m["p1"] + m["p2"]) / math.log(2))
    assert m["bits"] == pytest.approx(want, rel=1e-9) and m["bits"] < m["max_bits"]
    assert m["bits_per_param"] == pytest.approx(m["bits"] / m["n_params"])
    assert "| capo_capacity |" in markdown_table(out) and "| capo |" in markdown_table(out)


def _fake_run(row, seed, bpp):
    return {"row": row, "seed": seed, "status": "completed", "step": 3, "params": 1000,
            "val_loss": 1.0, "val_bpb": 1.0, "train_loss": 1.0, "step_time_s": 0.1,
            "tokens_per_s": 1.0, "wall_s": 1.0, "val_curve": [], "train_curve": [],
            "tasks": {"capo_capacity": {"bits_per_param": bpp, "bits": 1.0}}}


def test_report_shows_capacity_and_pairs_within_each_task(tmp_path):
    """The report has a capacity table with paired differences against each task's loop row;
    no row is compared across tasks."""
    rows = PAPER.get_sweep("smoke")
    results = [_fake_run(r["name"], s, 0.01 * i + 0.001 * s) for i, r in enumerate(rows)
               for s in (0, 1)]
    assert task_kind(results, "capo_capacity") == "capacity"
    assert task_metric(results[2], "capo_capacity") == pytest.approx(0.01)
    text = report_text(str(tmp_path), "configs/papers/ouro_tasks.py:smoke", rows, results,
                       plots=False)
    assert "Knowledge capacity R(F)" in text
    assert "| capo_iso_params | capo_loop |" in text and "| capo_loop | mano_loop |" not in text


@pytest.mark.slow
def test_capo_smoke_row_runs_through_reproduce(tmp_path):
    """3 training steps of the capo loop row, then the task_eval hook: the JSON run file holds
    the capacity probe (~40 s: the Trainer's compiles)."""
    rows = {r["name"]: r for r in PAPER.get_sweep("smoke")}
    res = run_one(PAPER.get_config("smoke"), rows["capo_loop"], 0, str(tmp_path / "run"))
    assert res["status"] == "completed" and res["step"] == 3 and np.isfinite(res["val_loss"])
    m = json.loads(json.dumps(res))["tasks"]["capo_capacity"]
    assert CAP_KEYS <= set(m) and np.isfinite(m["bits_per_param"])
