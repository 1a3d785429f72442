"""The sweep runner: runs rows x seeds, writes one result file per run, skips finished runs on a
second invocation, and writes the table and plots."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SWEEP = '''
import sys
sys.path.insert(0, {root!r})
from configs.lm import get_config as lm_config

def get_config(variant=None):
    c = lm_config("smoke")
    c.data.source = {corpus!r}
    c.train.update(steps=4, eval_every=2, log_every=2, checkpoint_every=4)
    return c

def get_sweep(variant=None):
    return [{{"name": "base", "paper": "1.00", "group": "T"}},
            {{"name": "wide", "overrides": {{"model.mlp_dim": 256}}, "paper": "0.99", "group": "T"}}]

def get_series(variant=None):
    return [{{"name": "width", "xlabel": "mlp_dim", "points": [("base", 128), ("wide", 256)]}}]
'''


def _run(cfg, out, tmp_path, *extra):
    return subprocess.run(
        [sys.executable, "-m", "experiments.reproduce", "--config", str(cfg), "--out", str(out),
         "--seeds", "0", "--workroot", str(tmp_path / "runs"), *extra],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})


def test_sweep_runs_skips_and_reports(tmp_path, small_corpus):
    cfg = tmp_path / "sweep.py"
    cfg.write_text(SWEEP.format(root=ROOT, corpus=small_corpus))
    out = tmp_path / "results"
    first = _run(cfg, out, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 runs, 2 to do" in first.stdout
    res = json.load(open(out / "runs" / "wide__s0.json"))
    assert res["status"] == "completed" and res["step"] == 4 and res["val_curve"]
    cmd = res["provenance"]["command"]  # the full command, flags included
    assert "--config" in cmd and "--seeds 0" in cmd and "--workroot" in cmd
    table = open(out / "table.md").read()
    assert "| T | base | 1.00 |" in table and "| T | wide | 0.99 |" in table
    assert (out / "val_loss.png").exists() and (out / "curves.png").exists()
    assert "Series `width`" in table and (out / "series_width.png").exists()  # get_series
    assert "| wide | base | 0 | " in table  # paired with the first row on the common seed
    second = _run(cfg, out, tmp_path)
    assert second.returncode == 0 and "2 runs, 0 to do" in second.stdout
    bad = _run(cfg, out, tmp_path, "--rows", "nope")
    assert bad.returncode != 0 and "nope" in bad.stderr
    # the table pools every finished seed of a row, also seeds outside this call's --seeds
    extra = {**json.load(open(out / "runs" / "base__s0.json")), "seed": 7}
    json.dump(extra, open(out / "runs" / "base__s7.json", "w"))
    third = _run(cfg, out, tmp_path, "--report_only", "--rows", "wide")  # rows: what runs
    assert third.returncode == 0, third.stderr[-3000:]
    table = open(out / "table.md").read()
    assert "Seeds: [0, 7]." in table and "± 0.0000 (2)" in table and "| wide | 0.99 |" in table
    assert "| wide | base | 0 | " in table  # seed 7 has no wide run: not paired


def test_run_one_preempted_before_first_log(tmp_path, monkeypatch):
    """A run stopped (SIGTERM) before it wrote any metric reports "preempted" with an empty
    curve instead of crashing on the missing metrics.jsonl (the sweep then stops cleanly and
    the next call resumes the row)."""
    from configs.lm import get_config
    from experiments import reproduce
    from seedjax.train import loop

    class Preempted:
        def __init__(self, cfg, workdir):
            pass

        def run(self):
            return {"status": "preempted", "train": None, "step": 0, "n_params": 1,
                    "val": {"loss": float("nan"), "bits_per_byte": float("nan")}}

    monkeypatch.setattr(loop, "Trainer", Preempted)
    res = reproduce.run_one(get_config("smoke"), {"name": "r"}, 0, str(tmp_path / "w"))
    assert res["status"] == "preempted" and res["val_curve"] == [] and res["step"] == 0


def test_each_variant_has_its_own_workdir():
    """Two variants of one config file never share (and so never resume) checkpoints."""
    from experiments.reproduce import workdir_name
    assert workdir_name("configs/memory_tasks.py:icl_cpu") == "memory_tasks_icl_cpu"
    assert workdir_name("configs/memory_tasks.py:cpu") != workdir_name("configs/memory_tasks.py")
    assert workdir_name("configs/papers/seednorm.py") == "seednorm"


def test_report_tabulates_and_pairs_extra_val_metrics(tmp_path):
    """Runs that carry ``val_metrics`` (a looped model's exit statistics) get a mean ± std table
    (rows without them left out, per-loop keys in loop order) and a paired table with the
    verdict for each scalar metric; per-loop keys are tabulated but not paired."""
    from experiments.reproduce import report_text
    rows = [{"name": "a", "overrides": {}}, {"name": "b", "overrides": {}, "vs": "a"},
            {"name": "c", "overrides": {}, "vs": "a"}]
    results = []
    for seed, (ha, hb) in enumerate(((1.2, 0.1), (1.1, 0.2), (1.3, 0.05))):
        for name, h in (("a", ha), ("b", hb)):
            results.append({"row": name, "seed": seed, "status": "completed", "val_loss": 2.0,
                            "val_metrics": {"exit_entropy": h, "loop_ce/10": 2.0,
                                            "loop_ce/2": 2.5}})
        results.append({"row": "c", "seed": seed, "status": "completed", "val_loss": 2.1})
    text = report_text(str(tmp_path), "cfg.py:cpu", rows, results)
    table = text[text.index("Further validation metrics"):]
    assert "| row | exit_entropy | loop_ce/2 | loop_ce/10 |" in table
    assert "| a | 1.2000 ± 0.1000 (3)" in table and "| c |" not in table.split("Paired")[0]
    paired = text[text.index("Paired exit_entropy differences"):].splitlines()
    line = next(ln for ln in paired if ln.startswith("| b | a |"))
    assert line.endswith("| 3/3 | finding |")
    assert "Paired loop_ce/2" not in text
