"""Logical-axis rule presets: logical names (in parameter metadata and ``constrain`` calls) ->
mesh axes. A logical name missing from a preset is replicated. Mesh axes that do not divide a
dimension are dropped for that array (so tiny test models run on any mesh).

Presets:
* ``dp``:       data parallel only.
* ``fsdp``:     batch over (data, fsdp); parameters sharded along "embed" over fsdp.
* ``fsdp_tp``:  fsdp + tensor parallel over "model" (heads, mlp, vocab, the DiT's fused qkv)
  - the default.
* ``fsdp_tp_mem``: fsdp_tp + memory tables' and over-encoding n-gram tables' rows over "mem" and
  experts over "expert".
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from seedjax.nn.params import param_metadata
from seedjax.nn.partitioning import logical_to_spec

_BATCH = {"batch": ("data", "fsdp")}
PRESETS: dict[str, dict[str, Any]] = {
    "dp": {"batch": ("data", "fsdp")},
    "fsdp": {**_BATCH, "embed": "fsdp"},
    "fsdp_tp": {**_BATCH, "embed": "fsdp", "heads": "model", "kv_heads": "model",
                "mlp": "model", "vocab": "model", "qkv": "model"},
}
PRESETS["fsdp_tp_mem"] = {**PRESETS["fsdp_tp"], "mem_rows": "mem", "ngram_rows": "mem",
                          "expert": "expert"}


def get_rules(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"mesh.rules={name!r} unknown; allowed: {sorted(PRESETS)}")
    return dict(PRESETS[name])


def spec_for(shape, axes, rules: Mapping[str, Any], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec of an array with logical ``axes``, dropping non-dividing mesh axes."""
    spec = logical_to_spec(axes, rules)
    fixed = []
    for dim, entry in zip(shape, spec):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        size = 1
        for n in names:
            size *= mesh.shape[n]
        fixed.append(entry if size > 1 and dim % size == 0 else None)
    return PartitionSpec(*fixed)


def param_shardings(module: nnx.Module, mesh: Mesh, rules: Mapping[str, Any]) -> dict:
    """Pure dict (like ``nnx.to_pure_dict(nnx.state(module, nnx.Param))``) of NamedShardings."""
    axes = param_metadata(module, "out_sharding", ())
    shapes = nnx.to_pure_dict(nnx.state(module, nnx.Param))

    def one(ax, x):
        ax = tuple(ax) if ax else (None,) * len(x.shape)
        return NamedSharding(mesh, spec_for(x.shape, ax, rules, mesh))

    return jax.tree.map(one, axes, shapes, is_leaf=lambda x: isinstance(x, tuple))


def sharding_table(module: nnx.Module, mesh: Mesh, rules: Mapping[str, Any]) -> str:
    """Human-readable table: parameter path, shape, logical axes, mesh spec."""
    axes = nnx.to_flat_state(nnx.state(module, nnx.Param))
    rows = ["| parameter | shape | logical axes | mesh spec |", "|---|---|---|---|"]
    for path, var in axes:
        ax = tuple(var.get_metadata().get("out_sharding", ()))
        spec = spec_for(var.get_value().shape, ax, rules, mesh)
        rows.append(f"| {'/'.join(map(str, path))} | {tuple(var.get_value().shape)} | {ax} | {spec} |")
    return "\n".join(rows)
