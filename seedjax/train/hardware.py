"""Accelerator figures: peak FLOP/s per device (a table for TPU/GPU, a measured matmul on CPU or
on request), and ``CHIPS`` / ``TOPOLOGIES``: per-chip HBM, peak bf16 FLOP/s and HBM bandwidth
(vendor numbers, one table) and the named TPU slices the compile check and the planner use.

Slice names follow Google's accelerator types: v5e/v6e-N has N chips; v4-N and v5p-N count
TensorCores (2 per chip), so v5p-16 is 8 chips ("v5p:2x2x2"). ``get_topology_desc`` of libtpu's
compile-only client lists one device per chip for v5e/v5p/v6e, but one per TensorCore for v4
(8 for "v4:2x2x1"), so ``CHIPS["v4"]`` is per device = half a chip.
"""
from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

# dense bf16 peak FLOP/s per chip (vendor numbers)
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12, "TPU7x": 2307e12,
    "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100": 989e12, "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12, "NVIDIA H200": 989e12, "NVIDIA B200": 2250e12,
}


GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One accelerator device: HBM bytes, dense bf16 peak FLOP/s, HBM bytes/s (vendor)."""
    name: str
    hbm_bytes: int
    peak_flops: float
    hbm_bandwidth: float
    platform: str = "tpu"


# Vendor figures per device (Google Cloud TPU docs; NVIDIA data sheets, SXM parts, dense bf16).
CHIPS = {
    "v4": Chip("TPU v4 (per TensorCore: half a chip)", 16 * GIB, 275e12 / 2, 1228e9 / 2),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2765e9),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1640e9),
    "a100": Chip("NVIDIA A100 80GB", 80 * 10 ** 9, 312e12, 2039e9, "cuda"),
    "h100": Chip("NVIDIA H100 SXM", 80 * 10 ** 9, 989e12, 3350e9, "cuda"),
    "h200": Chip("NVIDIA H200", 141 * 10 ** 9, 989e12, 4800e9, "cuda"),
    "b200": Chip("NVIDIA B200", 180 * 10 ** 9, 2250e12, 8000e9, "cuda"),
}

# named slice -> (chip key, libtpu topology name); GPU "topologies" are <gpu>-<n devices>
TOPOLOGIES = {
    "v4-8": ("v4", "v4:2x2x1"), "v4-16": ("v4", "v4:2x2x2"),
    "v5e-4": ("v5e", "v5e:2x2"), "v5e-8": ("v5e", "v5e:2x4"), "v5e-16": ("v5e", "v5e:4x4"),
    "v5e-32": ("v5e", "v5e:4x8"), "v5e-64": ("v5e", "v5e:8x8"), "v5e-256": ("v5e", "v5e:16x16"),
    "v5p-8": ("v5p", "v5p:2x2x1"), "v5p-16": ("v5p", "v5p:2x2x2"), "v5p-32": ("v5p", "v5p:2x2x4"),
    "v5p-64": ("v5p", "v5p:2x4x4"), "v5p-128": ("v5p", "v5p:4x4x4"),
    "v6e-4": ("v6e", "v6e:2x2"), "v6e-8": ("v6e", "v6e:2x4"), "v6e-64": ("v6e", "v6e:8x8"),
    **{f"{g}-{n}": (g, None) for g in ("a100", "h100", "h200", "b200") for n in (8, 16, 64)},
}


def resolve_topology(name: str) -> tuple[str, Chip, str | None]:
    """(slice name, its Chip, libtpu topology name or None for GPUs) of a name in
    ``TOPOLOGIES`` or a raw libtpu topology such as "v5e:2x2"; ValueError listing the allowed."""
    if name in TOPOLOGIES:
        chip, topo = TOPOLOGIES[name]
        return name, CHIPS[chip], topo
    raw = {t: (n, c) for n, (c, t) in TOPOLOGIES.items() if t}
    gen = name.split(":")[0]
    if ":" in name and gen in CHIPS and CHIPS[gen].platform == "tpu":
        return raw.get(name, (name, gen))[0], CHIPS[gen], name
    raise ValueError(f"--topology={name!r} unknown; allowed: {', '.join(TOPOLOGIES)} or a "
                     f"libtpu topology <{'|'.join(c for c in CHIPS if CHIPS[c].platform == 'tpu')}>"
                     ":<AxB[xC]> such as v5e:2x2")


def n_devices(name: str) -> int:
    """Devices of a slice name or raw topology without libtpu (product of the AxBxC dims; v4
    doubles it, one device per TensorCore; GPUs: the number after the dash)."""
    slice_name, chip, topo = resolve_topology(name)
    if topo is None:
        return int(slice_name.rsplit("-", 1)[1])
    n = math.prod(int(d) for d in topo.split(":")[1].split("x"))
    return 2 * n if topo.startswith("v4:") else n


def measure_matmul_peak(n: int = 2048, dtype=jnp.float32, repeats: int = 7,
                        device=None) -> float:
    """Median FLOP/s of an n x n x n matmul on one device (what a dense layer can reach)."""
    device = device or jax.local_devices()[0]  # jax.devices()[0] is not ours on process > 0
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    b = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / float(np.median(times))


def peak_flops_per_device(measure_if_unknown: bool = True) -> tuple[float, str]:
    """(peak FLOP/s per device, where the number comes from)."""
    kind = jax.devices()[0].device_kind
    for name, peak in PEAK_FLOPS.items():
        if kind.startswith(name):
            return peak, f"table:{name}"
    if not measure_if_unknown:
        return float("nan"), "unknown"
    return measure_matmul_peak(), f"measured 2048^3 f32 matmul on {kind}"
