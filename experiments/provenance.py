"""Where a run came from: commit, uncommitted changes, package versions, the exact command and the
machine. ``experiments.reproduce`` stores it in every run file (key ``provenance``) and its report
summarises it from the run files, so a page states what its runs were made with, not what the
machine that rebuilt the table has.

  {"commit": "ccd7cad...", "dirty_files": ["README.md"], "versions": {"jax": "0.10.2", ...},
   "command": "python -m experiments.reproduce --config ... --rows a,b --seeds 0,1,2",
   "config": "configs/papers/x.py:cpu", "machine": "x86_64, 2 cores, cpu", "started": "..."}
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str, strip: bool = True) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return out.strip() if strip else out


OUTPUT_DIRS = ("results/",)   # what reproductions write: not code the run used


def dirty_files() -> list[str]:
    """Tracked files with uncommitted changes, outside OUTPUT_DIRS (porcelain lines are
    'XY path'; the status columns may start with a space, so the output is not stripped)."""
    return paths_from_porcelain(_git("status", "--porcelain", "--untracked-files=no",
                                     strip=False))


def paths_from_porcelain(text: str) -> list[str]:
    """Paths of ``git status --porcelain`` output (renames: the new path), minus OUTPUT_DIRS."""
    paths = [ln[3:].split(" -> ")[-1] for ln in text.splitlines() if len(ln) > 3]
    return [p for p in paths if not p.startswith(OUTPUT_DIRS)]


def package_versions() -> dict:
    """Python and the pinned stack's versions as installed now (``seedjax.train.loop.versions``
    without the platform string, which ``machine`` covers)."""
    from seedjax.train.loop import versions
    return {k: v for k, v in versions().items() if k != "platform"}


def machine() -> str:
    """'<arch>, <n> cores, <jax backend>' of this process."""
    import jax
    return f"{platform.machine()}, {os.cpu_count()} cores, {jax.default_backend()}"


def current(argv: list[str], config: str) -> dict:
    """Provenance of runs started now by ``python -m experiments.reproduce <argv[1:]>``.

    dirty_files: tracked files with uncommitted changes at start (the run used those edits),
    except the reproductions' own outputs under ``results/``."""
    return {"commit": _git("rev-parse", "HEAD") or "unknown", "dirty_files": dirty_files(),
            "versions": package_versions(),
            "command": shlex.join(["python", "-m", "experiments.reproduce", *argv[1:]]),
            "config": config, "machine": machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def code_edits(p: dict) -> list[str]:
    """A provenance record's dirty files that are not reproduction outputs. Records written
    before the porcelain fix lost the first character of the first path ("esults/...")."""
    return [f for f in p.get("dirty_files") or []
            if not (f.startswith(OUTPUT_DIRS) or ("r" + f).startswith(OUTPUT_DIRS))]


def summary_lines(results: list) -> list[str]:
    """Markdown lines stating commits, versions and machines of ``results`` (run-file dicts), each
    with the number of runs that have it; runs without a provenance record are counted as such."""
    counts: dict[str, dict[str, int]] = {"commit": {}, "versions": {}, "machine": {}}
    missing = 0
    for x in results:
        p = x.get("provenance")
        if not p:
            missing += 1
            continue
        commit = p["commit"][:10] + (" (+uncommitted edits)" if code_edits(p) else "")
        versions = ", ".join(f"{k} {v}" for k, v in p["versions"].items())
        for key, val in (("commit", commit), ("versions", versions), ("machine", p["machine"])):
            counts[key][val] = counts[key].get(val, 0) + 1
    n = len(results)

    def fmt(d: dict) -> str:
        return "; ".join(v if c == n else f"{v} ({c} run{'s' * (c > 1)})"
                         for v, c in sorted(d.items()))
    lines = [f"Runs: {n}. Commits: {fmt(counts['commit'])}.",
             f"Versions: {fmt(counts['versions'])}.", f"Machine: {fmt(counts['machine'])}."]
    if missing:
        lines.append(f"{missing} run{' has' if missing == 1 else 's have'} no provenance record.")
    return lines


def analysis_provenance(command: str) -> tuple[dict, list[str]]:
    """(record, markdown lines) of an analysis of existing runs (``command`` is its own CLI):
    commit, versions and machine now; the lines without ``summary_lines``' "Runs: 1." (the
    analysis is not a run)."""
    origin = {**current([], ""), "command": command, "config": ""}
    lines = summary_lines([{"provenance": origin}])
    lines[0] = lines[0].split(". ", 1)[1]
    return origin, lines
