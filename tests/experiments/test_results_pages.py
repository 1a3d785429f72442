"""The committed results pages against their run files: every table.md regenerates exactly from
``runs/`` (so its numbers and verdict column are the declared rule's, experiments/verdict.py),
every run file carries its provenance, each page's commands make exactly its runs, and every
verdict cited in page text (`` `<page>: <row> vs <ref>`, <verdict> ``) is the computed one."""
import glob
import json
import os
import re
import shlex

import pytest

from experiments.paired_diffs import paired
from experiments.reproduce import load_sweep, page_text
from experiments.task_plot import task_metric
from experiments.verdict import VERDICTS, compare

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "results")
TABLES = sorted(os.path.relpath(os.path.dirname(p), ROOT)
                for p in glob.glob(os.path.join(RESULTS, "**", "table.md"), recursive=True)
                if os.path.isdir(os.path.join(os.path.dirname(p), "runs")))
CITATION = re.compile(r"`([\w/]+): ([\w.\-]+) vs ([\w.\-]+)(?: \[([\w:/]+)\])?`,? "
                      r"\*{0,2}(" + "|".join(VERDICTS) + r")\b")


def _config_of(page: str) -> str:
    text = open(os.path.join(ROOT, page, "table.md")).read()
    m = re.search(r"^Config: `([^`]+)`", text, re.M)
    assert m, f"{page}/table.md has no 'Config:' line; regenerate it with --report_only"
    return m.group(1)


def _runs(page: str) -> list:
    return [json.load(open(p)) for p in sorted(glob.glob(os.path.join(ROOT, page, "runs",
                                                                      "*.json")))]


@pytest.fixture(autouse=True)
def _in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # configs and pages are named relative to the repository root


def test_pages_exist():
    assert {"results/ultramem_v2", "results/hyper_connections",
            "results/memory_facts/facts512"} <= set(TABLES)


@pytest.mark.parametrize("page", TABLES)
def test_table_regenerates_from_run_files(page):
    config = _config_of(page)
    committed = open(os.path.join(page, "table.md")).read()
    assert page_text(page, config) == committed, (
        f"{page}/table.md is stale: python -m experiments.reproduce --config {config} "
        f"--out {page} --report_only")


@pytest.mark.parametrize("page", TABLES)
def test_run_files_have_provenance(page):
    for run in _runs(page):
        p = run.get("provenance") or {}
        keys = ("commit", "versions", "command", "machine", "config")
        missing = [k for k in keys if not p.get(k)]
        assert not missing and "wall_s" in run, f"{page} {run['row']} s{run['seed']}: {missing}"
        assert p["versions"].get("jax") and p["command"].startswith(
            "python -m experiments.reproduce --config")


@pytest.mark.parametrize("page", TABLES)
def test_page_commands_make_exactly_its_runs(page):
    """Parse the commands printed in table.md the way the CLI would: --rows (default: every row
    of the sweep) x --seeds must be the set of run files, no more and no less."""
    text = open(os.path.join(page, "table.md")).read()
    all_rows = [r["name"] for r in load_sweep(_config_of(page))["rows"]]
    made = set()
    for line in text.splitlines():
        if not line.strip().startswith("python -m experiments.reproduce"):
            continue
        args = shlex.split(line)
        opt = dict(zip(args[3::2], args[4::2]))
        assert opt["--config"] == _config_of(page) and opt["--out"] == page
        rows = opt["--rows"].split(",") if "--rows" in opt else all_rows
        made |= {(r, int(s)) for r in rows for s in opt["--seeds"].split(",")}
    assert made == {(x["row"], int(x["seed"])) for x in _runs(page)}


def _cited_verdict(page: str, row: str, ref: str, task: str | None) -> str:
    """The rule's verdict on val loss, a task's accuracy (``[task]``) or a further validation
    metric (``[val:exit_entropy]``: the run files' ``val_metrics``) or a sample score
    (``[image:fid_proxy]``: the run files' ``image_eval``)."""
    if task and task.startswith("val:"):
        value = lambda x: (x.get("val_metrics") or {}).get(task[4:])  # noqa: E731
    elif task and task.startswith("image:"):
        value = lambda x: (x.get("image_eval") or {}).get(task[6:])  # noqa: E731
    else:
        value = (lambda x: task_metric(x, task)) if task else (lambda x: x.get("val_loss"))
    per_seed = {}
    for x in _runs(os.path.join("results", page)):
        per_seed.setdefault(x["row"], {})[int(x["seed"])] = value(x)
    diffs = paired(per_seed.get(row, {}), per_seed.get(ref, {}))
    assert diffs, f"cited `{page}: {row} vs {ref}` has no common finished seed"
    return compare([d for _, d in diffs]).verdict


def test_cited_verdicts_equal_the_computed_ones():
    pages = glob.glob(os.path.join(RESULTS, "**", "*.md"), recursive=True)
    pages.append(os.path.join(ROOT, "README.md"))
    n = 0
    for path in pages:
        text = " ".join(open(path).read().split())  # citations may wrap across lines
        for page, row, ref, task, verdict in CITATION.findall(text):
            n += 1
            got = _cited_verdict(page, row, ref, task or None)
            assert got == verdict, (f"{os.path.relpath(path, ROOT)} cites `{page}: {row} vs "
                                    f"{ref}` as {verdict!r}; the rule gives {got!r}")
    assert n >= 1
