"""Paired differences over seeds: a sweep row minus its reference row on the same seed.

Seeds change the data order and the init, and at CPU scale their effect is often as large as a
design change, so "row A mean minus row B mean" can hide that A is lower on every seed (or that
one seed makes the whole gap). A sweep row may name its reference with ``"vs": "<row>"``
(configs/papers/common.py ``row(..., vs=...)``), or a list of rows (one table line each);
without it the reference is the sweep's first row. ``experiments.reproduce`` appends one table
per metric to ``table.md``:

  | row | vs | seeds | row - vs per seed | mean ± std (n) | 95% CI | lower on | verdict |
  | v2_tucker_penalty | ultramem_v2 | 0, 1, 2 | -0.0115 / -0.0475 / -0.0089 | -0.0226 ± 0.0216 (3)
    | [-0.0763, +0.0310] | 3/3 | suggestive |

The verdict column is experiments/verdict.py's rule, the only source of verdict words on a page.
"""
from __future__ import annotations

import math
from typing import Callable

from experiments.seed_stats import mean_std_text
from experiments.verdict import compare


def references_of(row: dict, base_name: str) -> list[str]:
    """The rows a row is compared with: its ``vs`` field (one name or a list of names; ``[]``:
    none), else the base row ([] for the base row itself)."""
    refs = row.get("vs", base_name)
    refs = [refs] if isinstance(refs, str) else list(refs)
    return [r for r in refs if r != row["name"]]


def validate_references(rows: list) -> None:
    """Raises ValueError if a row's ``vs`` names a row that is not in the sweep, or itself."""
    names = [r["name"] for r in rows]
    for r in rows:
        refs = [r["vs"]] if isinstance(r.get("vs"), str) else r.get("vs", [])
        if any(v not in names or v == r["name"] for v in refs):
            raise ValueError(f"row {r['name']!r}: vs={r['vs']!r} must name other rows of the "
                             f"sweep; rows: {names}")


def paired(a: dict, b: dict) -> list[tuple[int, float]]:
    """[(seed, a[seed] - b[seed])] over the seeds where both values are finite, sorted by seed.

    a, b: seed -> value (None or non-finite for a run without the metric)."""
    ok = lambda v: v is not None and math.isfinite(v)  # noqa: E731
    return [(s, a[s] - b[s]) for s in sorted(set(a) & set(b)) if ok(a[s]) and ok(b[s])]


def paired_table(rows: list, by_row: dict, value: Callable[[dict], float | None],
                 title: str, digits: int = 4) -> list[str]:
    """Markdown lines of the paired-difference table for one metric.

    rows: the sweep rows (first = base); by_row: row name -> list of run results (dicts with
    "seed"); value: run result -> the metric (None if absent). Rows without a common finished
    seed with their reference are left out; returns [] if no row has one."""
    base_name = rows[0]["name"]
    per_seed = {n: {int(x["seed"]): value(x) for x in res if "seed" in x}
                for n, res in by_row.items()}
    body = []
    for r, ref in ((r, ref) for r in rows for ref in references_of(r, base_name)):
        diffs = paired(per_seed.get(r["name"], {}), per_seed.get(ref, {}))
        if not diffs:
            continue
        c = compare([d for _, d in diffs])
        ci = "" if c.ci is None else f"[{c.ci[0]:+.{digits}f}, {c.ci[1]:+.{digits}f}]"
        body.append(f"| {r['name']} | {ref} | {', '.join(str(sd) for sd, _ in diffs)} | "
                    + " / ".join(f"{d:+.{digits}f}" for _, d in diffs)
                    + f" | {'+' if c.mean >= 0 else ''}{mean_std_text(c.mean, c.std, c.n, digits)}"
                    + f" | {ci} | {c.n_negative}/{c.n} | {c.verdict} |")
    if not body:
        return []
    return ["", title, "", "| row | vs | seeds | row - vs per seed | mean ± std (n) | 95% CI | "
            "lower on | verdict |", "|---|---|---|---|---|---|---|---|", *body]
