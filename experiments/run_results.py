"""Where a sweep keeps its per-run results: ``<out>/runs/<row>__s<seed>.json``, one file per
(row, seed), written by experiments.reproduce and read by its report and by
experiments.curve_crossing."""
from __future__ import annotations

import glob
import json
import os


def result_path(run_dir: str, row: str, seed: int) -> str:
    """The result file of ``row`` at ``seed`` in ``run_dir``."""
    return os.path.join(run_dir, f"{row}__s{seed}.json")


def load_results(run_dir: str, rows: list | None = None) -> list:
    """Every run result in ``run_dir`` (dicts), grouped by ``rows`` in that order and sorted by
    file name within a row; all rows' files (sorted by name) when ``rows`` is None."""
    patterns = [f"{glob.escape(r)}__s*.json" for r in rows] if rows is not None else ["*__s*.json"]
    return [json.load(open(p)) for pattern in patterns
            for p in sorted(glob.glob(os.path.join(glob.escape(run_dir), pattern)))]
