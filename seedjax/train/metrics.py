"""Metric sinks: ``metrics.jsonl``, TensorBoard event files and a loss-curve PNG.

Only process 0 writes. On (re)start, rows and events after the start step are removed first
(``MetricWriter.start``), so a resumed run logs each step once. TensorBoard needs
``tensorboardX`` (installed with the package); when it is missing the writer skips event files
and says so once.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
from typing import Mapping

import jax

log = logging.getLogger(__name__)


class MetricWriter:
    """Appends metric rows to ``metrics.jsonl`` and TensorBoard. Call ``start(step)`` once the
    run's start step is known: it drops rows and events after ``step`` left by an earlier
    attempt, so after any number of resumes each step is logged once."""

    def __init__(self, workdir: str, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb_dir = os.path.join(workdir, "tb")
        self._tensorboard, self._tb, self._purge_step = tensorboard, None, None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)

    def start(self, step: int) -> dict:
        """Truncates metrics.jsonl and the event files to steps <= ``step`` (the step the run
        starts from); returns how many rows and events were dropped."""
        dropped = {"rows": 0, "events": 0}
        if not self.enabled:
            return dropped
        if os.path.exists(self.path):
            with open(self.path) as f:
                lines = [line for line in f if line.strip()]
            keep = []
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a torn last line (killed while writing)
                    continue
                if row["step"] <= step:
                    keep.append(line if line.endswith("\n") else line + "\n")
            if len(keep) < len(lines):
                _write_atomic(self.path, "".join(keep).encode())
                dropped["rows"] = len(lines) - len(keep)
        if os.path.isdir(self.tb_dir):
            for name in sorted(os.listdir(self.tb_dir)):
                if "tfevents" in name:
                    dropped["events"] += truncate_events(os.path.join(self.tb_dir, name), step)
            self._purge_step = step + 1  # TensorBoard also hides events >= this from older files
        return dropped

    def _writer(self):
        if self._tb is None and self._tensorboard:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(self.tb_dir, purge_step=self._purge_step)
            except ImportError:
                log.warning("tensorboardX not installed: no TensorBoard event files")
                self._tensorboard = False
        return self._tb

    def write(self, step: int, metrics: Mapping[str, float], *, split: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, **{k: _num(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        tb = self._writer()
        if tb is not None:
            for k, v in metrics.items():
                tb.add_scalar(f"{split}/{k}", _num(v), int(step))
            tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_event_records(path: str) -> list[bytes]:
    """The serialized Event records of a TensorBoard event file (a torn last record, as a
    SIGKILL can leave, is dropped)."""
    out = []
    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                break
            n = struct.unpack("Q", header[:8])[0]
            data = f.read(n)
            if len(data) < n or len(f.read(4)) < 4:
                break
            out.append(data)
    return out


def read_events(path: str) -> list:
    """Parsed ``Event`` protos of an event file (needs tensorboardX)."""
    from tensorboardX.proto.event_pb2 import Event
    return [Event.FromString(r) for r in read_event_records(path)]


def truncate_events(path: str, max_step: int) -> int:
    """Rewrites an event file (atomically) without the events after ``max_step``; returns how
    many were dropped."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c
    records = read_event_records(path)
    keep = [r for r in records if Event.FromString(r).step <= max_step]
    if len(keep) == len(records) and sum(len(r) + 16 for r in records) == os.path.getsize(path):
        return 0
    parts = []
    for r in keep:
        header = struct.pack("Q", len(r))
        parts += [header, struct.pack("I", masked_crc32c(header)), r,
                  struct.pack("I", masked_crc32c(r))]
    _write_atomic(path, b"".join(parts))
    return len(records) - len(keep)


def _num(v) -> float:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    v = float(v)
    return v if math.isfinite(v) else str(v)


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_loss_curve(metrics_path: str, out_png: str, title: str = "") -> str:
    """Train loss and validation bits-per-byte vs step, from metrics.jsonl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if r["split"] == "train" and "loss" in r]
    val = [(r["step"], r["loss"]) for r in rows if r["split"] == "val" and "loss" in r]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="val loss", lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png
