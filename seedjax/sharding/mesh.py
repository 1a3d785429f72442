"""Device meshes with explicit axis types.

seedjax meshes always carry the five logical-parallelism axes ``MESH_AXES`` (size 1 when unused),
so rule presets can name any of them. Axis types default to ``Auto`` (GSPMD propagation), which
is what the training graphs use; ``jax.make_mesh``'s own default in jax 0.10 is Explicit.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "model", "expert", "mem")


def resolve_mesh_shape(shape: Mapping[str, int], n_devices: int) -> dict[str, int]:
    """Fills one ``-1`` entry so the product equals ``n_devices``; validates names and sizes.
    ValueError (one line naming mesh.shape) for an unknown axis, a size < 1, two ``-1``, or
    sizes whose product does not divide / equal ``n_devices``."""
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh axes {unknown} unknown; allowed: {list(MESH_AXES)}")
    sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {free}")
    for a, s in sizes.items():
        if s != -1 and s < 1:
            raise ValueError(f"mesh.{a} must be >= 1 or -1, got {s}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free:
        if n_devices % fixed:
            raise ValueError(f"mesh.shape {_fmt(sizes)}: the fixed axes' product {fixed} does "
                             f"not divide the {n_devices} devices, so {free[0]}=-1 cannot fill")
        sizes[free[0]] = n_devices // fixed
    if math.prod(sizes.values()) != n_devices:
        raise ValueError(f"mesh.shape {_fmt(sizes)} has {math.prod(sizes.values())} devices but "
                         f"{n_devices} devices are available; use -1 for one axis to fill")
    return sizes


def _fmt(sizes: Mapping[str, int]) -> str:
    return "{" + ", ".join(f"{a}: {s}" for a, s in sizes.items() if s != 1) + "}"


def make_mesh(shape: Mapping[str, int] | None = None, *, devices: Sequence | None = None,
              axis_type: AxisType = AxisType.Auto) -> Mesh:
    """Mesh over ``devices`` (default all) with axes ``MESH_AXES``; default: all devices on data."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = resolve_mesh_shape(shape or {"data": -1}, len(devices))
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(axis_type,) * len(MESH_AXES), devices=devices)
