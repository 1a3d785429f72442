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


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


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

    dirty_files: tracked files with uncommitted changes at start (the run used those edits)."""
    dirty = [ln[3:] for ln in _git("status", "--porcelain", "--untracked-files=no").splitlines()]
    return {"commit": _git("rev-parse", "HEAD") or "unknown", "dirty_files": dirty,
            "versions": package_versions(),
            "command": shlex.join(["python", "-m", "experiments.reproduce", *argv[1:]]),
            "config": config, "machine": machine(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


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
        commit = p["commit"][:10] + (" (+uncommitted edits)" if p.get("dirty_files") else "")
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
