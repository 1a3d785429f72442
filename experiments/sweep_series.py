"""Sweep series: validation loss against a swept quantity (number of slots, IVE's E, ...).

A paper config may define ``get_series(variant)`` next to ``get_sweep``; each series is

  {"name": "slots",                         # file name: <out>/series_<name>.png
   "title": "loss vs value rows (UltraMem Fig. 6b)",
   "xlabel": "value rows per unit", "logx": True,
   "points": [("slots_1k", 1024), ("ultramem", 4096), ...],     # (sweep row, x)
   "paper": {"label": "UltraMem Table 3, val loss",              # optional
             "points": [(1, 2.789), (4, 2.772), ...]},
   "min_yspan": 0.04,     # optional: our panel's y-range spans at least this (nats), so that
                          # differences inside the seed spread are not drawn as a slope
   "fit": "log10",        # optional: fit loss = a + b log10(x) per seed; the slope b over the
   "paper_slope": -0.0256}  # seeds gets the declared verdict rule (b vs 0) and the paper's b

``experiments.reproduce`` draws each series (ours: mean ± std over the finished seeds; the
paper's numbers in a panel beside it, since the scales differ) and appends a table per series to
``table.md``. Rows not run yet are left out of the plot and shown as "not run yet".
"""
from __future__ import annotations

import math
import os

from experiments.seed_stats import mean_std_text
from experiments.verdict import compare

REQUIRED = ("name", "xlabel", "points")
FITS = ("log10",)


def log10_slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (a, b) of y = a + b log10(x) through (x, y) points (at least two xs)."""
    xs = [math.log10(x) for x, _ in points]
    ys = [y for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if len(points) < 2 or sxx == 0:
        raise ValueError(f"a log10 fit needs at least two distinct x values, got {points}")
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def seed_slopes(series: dict, per_seed: dict) -> dict:
    """Slope b of the per-seed fit for every seed that finished every point of the series."""
    seeds = set.intersection(*[set(per_seed.get(r, {})) for r, _ in series["points"]])
    return {sd: log10_slope([(x, per_seed[r][sd]) for r, x in series["points"]])[1]
            for sd in sorted(seeds)}


def validate_series(series: list, row_names) -> None:
    """Raises ValueError if a series lacks a field, repeats a name or names an unknown row."""
    names = set(row_names)
    seen = set()
    for s in series:
        missing = [k for k in REQUIRED if k not in s]
        if missing:
            raise ValueError(f"series {s.get('name', '?')!r} lacks field(s) {missing}; "
                             f"required: {REQUIRED}")
        if s["name"] in seen:
            raise ValueError(f"series name {s['name']!r} repeated")
        seen.add(s["name"])
        unknown = [r for r, _ in s["points"] if r not in names]
        if unknown:
            raise ValueError(f"series {s['name']!r} names rows {unknown} that are not in the "
                             f"sweep; rows: {sorted(names)}")
        for _, x in s["points"]:
            if (s.get("logx") or s.get("fit")) and not x > 0:
                raise ValueError(f"series {s['name']!r}: logx / fit needs x > 0, got {x}")
        if s.get("fit") not in (None,) + FITS:
            raise ValueError(f"series {s['name']!r}: fit={s['fit']!r} is not allowed; "
                             f"allowed: {FITS} or none")


def fit_lines(s: dict, per_seed: dict) -> list[str]:
    """Markdown lines stating the per-seed log10 fit of series ``s`` and its verdict."""
    slopes = seed_slopes(s, per_seed)
    paper = (f"; paper: b = {s['paper_slope']:+.4f} per decade" if "paper_slope" in s else "")
    if not slopes:
        return ["", f"Fit loss = a + b log10(x): no seed has finished every point yet{paper}."]
    c = compare(list(slopes.values()))
    ci = "" if c.ci is None else f", 95% CI [{c.ci[0]:+.4f}, {c.ci[1]:+.4f}]"
    return ["", f"Fit loss = a + b log10(x) per seed (seeds {sorted(slopes)}): b = "
            f"{mean_std_text(c.mean, c.std, c.n, 4)} per decade{ci}; verdict on b vs 0: "
            f"**{c.verdict}**{paper}."]


def write_series(out: str, series: list, stats_by_row: dict, plot: bool = True,
                 per_seed: dict | None = None) -> list[str]:
    """Draws ``<out>/series_<name>.png`` per series (unless ``plot`` is False) and returns
    markdown lines for table.md.

    stats_by_row: row name -> (mean, std, n) of the final val loss (n = 0: not run yet);
    per_seed: row name -> {seed: final val loss} (needed by series with a ``fit``).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = []
    for s in series:
        paper = s.get("paper")
        paper_y = dict(paper["points"]) if paper else {}
        lines += ["", f"Series `{s['name']}`: {s.get('title', s['name'])} "
                  f"(plot: series_{s['name']}.png)", "",
                  f"| {s['xlabel']} | row | ours: val loss (mean ± std, n) |"
                  + (f" paper: {paper['label']} |" if paper else ""),
                  "|---|---|---|" + ("---|" if paper else "")]
        for r, x in s["points"]:
            m, sd, n = stats_by_row[r]
            ours = mean_std_text(m, sd, n, 4) if n else "not run yet"
            p = paper_y.get(x)
            lines.append(f"| {x:g} | {r} | {ours} |"
                         + ((f" {p:g} |" if p is not None else " - |") if paper else ""))
        if s.get("fit"):
            lines += fit_lines(s, per_seed or {})
        if not plot:
            continue
        fig, axes = plt.subplots(1, 2 if paper else 1, figsize=(10 if paper else 5.5, 4),
                                 squeeze=False)
        ax = axes[0][0]
        done = [(x, *stats_by_row[r][:2]) for r, x in s["points"] if stats_by_row[r][2]]
        if done:
            xs, ms, sds = zip(*sorted(done))
            ax.errorbar(xs, ms, yerr=sds, fmt="-o", capsize=4, color="C0")
            if s.get("fit") and len(set(xs)) > 1:
                a, b = log10_slope(list(zip(xs, ms)))
                ax.plot(xs, [a + b * math.log10(x) for x in xs], ":", color="C2",
                        label=f"fit of the means: b = {b:+.4f}/decade")
                ax.legend(fontsize=7)
        for r, x in s["points"]:
            m, _, n = stats_by_row[r]
            if n and math.isfinite(m):
                ax.annotate(r, (x, m), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_title("ours", fontsize=9)
        if done and s.get("min_yspan"):
            lo, hi = ax.get_ylim()
            pad = max(0.0, s["min_yspan"] - (hi - lo)) / 2
            ax.set_ylim(lo - pad, hi + pad)
        if paper:
            px, py = zip(*sorted(paper["points"]))
            axes[0][1].plot(px, py, "-s", color="C1")
            axes[0][1].set_title(f"paper: {paper['label']}", fontsize=9)
        for a in axes[0]:
            a.set_xlabel(s["xlabel"])
            a.set_ylabel("val loss")
            a.grid(alpha=0.3)
            if s.get("logx"):
                a.set_xscale("log", base=2)
        fig.suptitle(s.get("title", s["name"]), fontsize=10)
        fig.tight_layout()
        fig.savefig(os.path.join(out, f"series_{s['name']}.png"), dpi=120)
        plt.close(fig)
    return lines
