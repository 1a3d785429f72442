"""Diagnostics a run logs by default: an over-encoding model's table hits and collisions on the
train tokens at step 0 (split "diagnostics"), and the seen-vs-unseen loss gap (train.eval_seen;
on by default only when the run repeats its data)."""
import json
import os

import numpy as np

from seedjax.train.loop import Trainer
from tests.conftest import smoke_config


def test_over_encoding_run_logs_table_usage_and_seen_gap(tmp_path, small_corpus):
    """Property: the step-0 diagnostics row has one collision rate per slice in [0, 1] and the
    summary carries the same numbers; with eval_seen on, every eval after the first
    max_val_batches steps reports seen_loss and seen_minus_val = seen_loss - loss."""
    cfg = smoke_config(small_corpus, steps=6, eval_every=3, eval_seen=True)
    cfg.data.max_val_batches = 2
    cfg.model.embed = "over_encoding"
    cfg.model.embed_kwargs = {"m": 4093, "n": 3, "k": 2}
    trainer = Trainer(cfg, str(tmp_path), progress=False)
    assert trainer.total_steps < trainer.data.steps_per_epoch   # one pass: auto would be off
    summary = trainer.run()
    diag = summary["data_diagnostics"]
    rates = [diag[f"oe/collision_rate/s{s}"] for s in range(4)]
    assert all(0.0 <= r <= 1.0 for r in rates) and diag["oe/ngrams/s0"] > 100
    rows = [json.loads(line) for line in open(os.path.join(tmp_path, "metrics.jsonl"))]
    (logged,) = [r for r in rows if r["split"] == "diagnostics"]
    assert logged["step"] == 0 and logged["oe/collision_rate/s3"] == rates[3]
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6]
    for r in val:
        np.testing.assert_allclose(r["seen_minus_val"], r["seen_loss"] - r["loss"], rtol=1e-6)
    assert summary["val"]["seen_loss"] == val[-1]["seen_loss"]
