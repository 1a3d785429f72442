"""Wall-clock timing shared by the kernels' bench.py scripts (jax only)."""
from __future__ import annotations

import time

import jax
import numpy as np


def time_call(f, args, reps: int = 3, best: bool = False) -> float:
    """Median (or best) wall time in seconds of ``f(*args)`` after one warm-up call."""
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return float(np.min(ts) if best else np.median(ts))
