"""Helpers shared by the benchmark subcommands (experiments/bench.py, bench_memory.py)."""
from __future__ import annotations

import json
import os
import platform
import time


def machine() -> dict:
    """Devices, CPU count, load average (1/5/15 min), versions and time of this run (recorded in
    every benchmark JSON)."""
    import jax

    from seedjax.train.loop import versions
    return {"devices": [str(d) for d in jax.devices()], "device_kind": jax.devices()[0].device_kind,
            "cpu_count": os.cpu_count(), "load_avg": [round(x, 2) for x in os.getloadavg()],
            "machine": platform.machine(), "versions": versions(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def on_cpu(result: dict) -> bool:
    """Whether a benchmark result (its ``device_kind``, or its ``machine`` dict's) came from a CPU
    backend: the markdown's caveats differ between a CPU and an accelerator."""
    kind = result.get("device_kind") or result.get("machine", {}).get("device_kind", "")
    return kind.lower() == "cpu"


def write_result(out_dir: str, name: str, result: dict, md: list, echo: bool = True) -> None:
    """Writes <out_dir>/<name>.json and <name>.md and prints the markdown (``echo``)."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    if echo:
        print("\n".join(md))


def median_time(fn, steps):
    """(median, p90) wall seconds of ``steps`` calls of ``fn``."""
    import numpy as np
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.percentile(times, 90))
