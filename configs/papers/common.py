"""Shared base of the small-scale paper reproductions (connections, norms, memory layers).

Variants: ``cpu`` (the reproduction size: a 1.3M-parameter byte-level LM, d=128, 6 layers,
seq 128, batch 16, 600 steps, a few minutes per run on 2 CPU cores) and ``smoke`` (seconds;
the test suite runs every paper config's sweep at this size).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, for configs.lm

from configs.lm import get_config as lm_config  # noqa: E402

VARIANTS = ("cpu", "smoke")


def base_config(variant: str | None, name: str):
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} unknown; allowed: {VARIANTS}")
    c = lm_config("smoke" if variant == "smoke" else "tiny")
    c.name = f"{name}_{variant}"
    if variant == "cpu":
        c.model.update(d_model=128, n_layers=6, n_heads=4, mlp_dim=384, max_seq_len=128)
        c.data.update(seq_len=128, batch_size=16, max_val_batches=16)
        c.train.update(steps=600, lr=3e-3, warmup_steps=60, log_every=50, eval_every=100,
                       checkpoint_every=200)
        c.sample.length = 100   # prompt + sample must fit max_seq_len=128
    else:
        c.train.update(steps=3, warmup_steps=1, log_every=1, eval_every=3, checkpoint_every=3)
    return c


def row(name: str, paper: str = "", group: str = "", vs: str | list | None = None,
        **overrides) -> dict:
    """A sweep row; overrides use dotted config paths with "__" for "." (model__ffn=...).

    vs: the row (or list of rows) this one is paired with seed by seed in the report
    (experiments/paired_diffs.py);
    None: the sweep's first row."""
    r = {"name": name, "paper": paper, "group": group,
         "overrides": {k.replace("__", "."): v for k, v in overrides.items()}}
    return r if vs is None else {**r, "vs": vs}
