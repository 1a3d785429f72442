"""Logical-axis rule presets: logical names (in parameter metadata and ``constrain`` calls) ->
mesh axes (``seedjax.sharding.mesh.MESH_AXES``).

Presets (``mesh.rules``):

* ``dp``:          data parallel only: batch over (data, fsdp), every parameter replicated.
* ``fsdp``:        + parameters sharded along "embed" over fsdp (ZeRO-3 style).
* ``fsdp_tp``:     + tensor parallel over "model": attention heads, MLP hidden, vocabulary, the
  DiT's fused qkv (the default).
* ``fsdp_tp_mem``: + memory tables' and over-encoding n-gram tables' rows over "mem", MoE experts
  (LM and DiT) over "expert".
* ``fsdp_tp_tables``: ``fsdp_tp_mem`` with the table rows over ("fsdp", "mem"): each chip holds
  1 / (fsdp x mem) of every memory / n-gram table and its optimizer moments, and no table
  gradient is kept whole for a data-parallel all-reduce (XLA partitions the gathers: masked
  local reads, reduced over both axes). For tables too big for ``mem`` alone
  (UltraMem-1.6B: 21.4B table parameters).

Every logical name a model uses is either mapped by some preset (``MAPPED``) or listed in
``REPLICATED`` with the reason it stays whole; ``tests/sharding/test_golden_shardings.py`` fails
when a model introduces a name that is in neither, so a new axis cannot silently replicate.

Divisibility: by default a mesh axis that does not divide a dimension is dropped for that array
(lenient, so tiny test models run on any mesh). ``strict=True`` (config ``mesh.strict_sharding``)
raises ``ValueError`` naming the parameter, the dimension and the mesh axis instead.

``print_sharding_table(model, mesh, rules)`` prints each parameter's path, shape, logical axes,
PartitionSpec and bytes per device, with totals; ``model`` may be abstract (``nnx.eval_shape``)
and ``mesh`` a ``jax.sharding.AbstractMesh``.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Mapping, NamedTuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from seedjax.nn.params import param_metadata
from seedjax.nn.partitioning import BATCH_AXES, logical_to_spec

_BATCH = {"batch": BATCH_AXES}
PRESETS: dict[str, dict[str, Any]] = {
    "dp": {**_BATCH},
    "fsdp": {**_BATCH, "embed": "fsdp"},
    "fsdp_tp": {**_BATCH, "embed": "fsdp", "heads": "model", "kv_heads": "model",
                "mlp": "model", "vocab": "model", "qkv": "model"},
}
PRESETS["fsdp_tp_mem"] = {**PRESETS["fsdp_tp"], "mem_rows": "mem", "ngram_rows": "mem",
                          "expert": "expert"}
PRESETS["fsdp_tp_tables"] = {**PRESETS["fsdp_tp_mem"], "mem_rows": ("fsdp", "mem"),
                             "ngram_rows": ("fsdp", "mem")}

# Logical names mapped to a mesh axis by at least one preset.
MAPPED = frozenset(k for rules in PRESETS.values() for k in rules)

# Logical names no preset shards, on purpose (one reason each).
REPLICATED: dict[str, str] = {
    "length": "sequence positions of activations: no sequence parallelism",
    "head_dim": "width inside one attention head: heads carry the model-parallel split",
    "layers": "scan axis of stacked layers: the scan reads one layer per step (no pipelining)",
    "norm": "norm gains/biases, O(d) per layer",
    "embed_out": "second d of the DiT's square [d, d] timestep MLP; its first d is on fsdp",
    "hc_dim": "hyper-connection dynamic weights' d: O(n d) per layer, cheaper kept whole",
    "hc_flat": "mHC phi's flattened n*d input: O(n^2 d) per layer, cheaper kept whole",
    "hc_coeff": "hyper-connection coefficient columns (n + 1 or n^2 + 2n): tiny",
    "hc_streams": "hyper-connection residual streams (n): tiny",
    "hc_streams_out": "mHC residual-mixing target streams (n): tiny",
    "fc_dim": "frac-connection dynamic weights' d / m: O(d) per layer",
    "fc_coeff": "frac-connection coefficient columns (2m): tiny",
    "fc_fracs": "frac-connection fractions (m): tiny",
    "mem_dim": "memory value width: tables are row-sharded (mem_rows) and gathered whole-row",
    "mem_pdim": "UltraMemV2 pre-value width: row-sharded like mem_dim",
    "mem_heads": "memory retrieval heads / Tucker cores: a few per layer",
    "mem_keys": "product-key sub-key count (sqrt of the rows): small",
    "mem_kdim": "product-key width: small",
    "mem_query": "memory query projection output (heads x 2 x k_dim): small",
    "ngram_dim": "over-encoding table width: rows carry the split, gathered whole-row",
}


def get_rules(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ValueError(f"mesh.rules={name!r} unknown; allowed: {sorted(PRESETS)}")
    return dict(PRESETS[name])


def unknown_logical_names(names) -> list[str]:
    """Logical names (None ignored) neither mapped by a preset nor listed in ``REPLICATED``."""
    return sorted({n for n in names if n is not None} - MAPPED - set(REPLICATED))


def _resolve(shape, axes, rules: Mapping[str, Any], mesh) -> tuple[PartitionSpec, list]:
    """(spec without non-dividing mesh axes, [(dim index, mesh axes, their size)] dropped)."""
    fixed, dropped = [], []
    for i, (dim, entry) in enumerate(zip(shape, logical_to_spec(axes, rules))):
        names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
        size = math.prod(mesh.shape[n] for n in names)
        if size > 1 and dim % size:
            dropped.append((i, names, size))
        fixed.append(entry if size > 1 and dim % size == 0 else None)
    return PartitionSpec(*fixed), dropped


def _axes_txt(names) -> str:
    return f"mesh axis {names[0]}" if len(names) == 1 else f"mesh axes {'*'.join(names)}"


def spec_for(shape, axes, rules: Mapping[str, Any], mesh, *, strict: bool = False,
             name: str = "array") -> PartitionSpec:
    """PartitionSpec of an array of ``shape`` with logical ``axes`` on ``mesh`` (a Mesh or an
    AbstractMesh). Mesh axes whose size does not divide the dimension are dropped (lenient) or,
    with ``strict``, raise ``ValueError`` naming ``name``, the dimension, its size, the mesh axis
    and its size."""
    spec, dropped = _resolve(shape, axes, rules, mesh)
    if strict and dropped:
        i, names, size = dropped[0]
        raise ValueError(
            f"{name}: dimension {i} ({axes[i]!r}) of size {shape[i]} is not divisible by "
            f"{_axes_txt(names)} of size {size} (mesh.strict_sharding=True; change the "
            "config's sizes or the mesh, or set it False to replicate that dimension)")
    return spec


def _param_axes(var, ndim: int) -> tuple:
    ax = tuple(var.get_metadata().get("out_sharding", ()) or ())
    return ax if ax or ndim == 0 else (None,) * ndim


def param_shardings(module: nnx.Module, mesh, rules: Mapping[str, Any], *,
                    strict: bool = False) -> dict:
    """Pure dict (like ``nnx.to_pure_dict(nnx.state(module, nnx.Param))``) of NamedShardings;
    ``strict``: see ``spec_for``."""
    axes = param_metadata(module, "out_sharding", ())
    shapes = nnx.to_pure_dict(nnx.state(module, nnx.Param))

    def one(path, ax, x):
        ax = tuple(ax) if ax else (None,) * len(x.shape)
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        return NamedSharding(mesh, spec_for(x.shape, ax, rules, mesh, strict=strict,
                                            name=f"parameter {name}"))

    return jax.tree_util.tree_map_with_path(one, axes, shapes,
                                            is_leaf=lambda x: isinstance(x, tuple))


class ShardingRow(NamedTuple):
    path: str
    shape: tuple
    dtype: Any
    axes: tuple
    spec: PartitionSpec
    bytes_per_device: int
    dropped: tuple = ()     # ((dim, mesh axes, size), ...) the rules asked for but cannot divide

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


def sharding_rows(module: nnx.Module, mesh, rules: Mapping[str, Any], *,
                  strict: bool = False) -> list[ShardingRow]:
    """One ``ShardingRow`` per parameter of ``module`` (abstract or concrete), in state order."""
    rows = []
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Param)):
        value = var.get_value()
        shape = tuple(int(s) for s in value.shape)
        ax = _param_axes(var, len(shape))
        name = "/".join(map(str, path))
        spec = spec_for(shape, ax, rules, mesh, strict=strict, name=f"parameter {name}")
        _, dropped = _resolve(shape, ax, rules, mesh)
        shards = math.prod(mesh.shape[n] for e in spec if e is not None
                           for n in ((e,) if isinstance(e, str) else e))
        nbytes = math.prod(shape) * np.dtype(value.dtype).itemsize
        rows.append(ShardingRow(name, shape, value.dtype, ax, spec, nbytes // shards,
                                tuple(dropped)))
    return rows


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


def sharding_table(module: nnx.Module, mesh, rules: Mapping[str, Any], *,
                   strict: bool = False) -> str:
    """Markdown table: parameter path, shape, logical axes, PartitionSpec (with the mesh axes
    dropped for not dividing), bytes per device; a totals row (parameters, bytes unsharded,
    bytes per device)."""
    rows = sharding_rows(module, mesh, rules, strict=strict)
    out = ["| parameter | shape | logical axes | mesh spec | bytes/device |",
           "|---|---|---|---|---|"]
    for r in rows:
        note = "".join(f"; dim {i} not divisible by {'*'.join(a)}={n}" for i, a, n in r.dropped)
        out.append(f"| {r.path} | {r.shape} | {r.axes} | {r.spec}{note} | "
                   f"{_fmt_bytes(r.bytes_per_device)} |")
    n = sum(math.prod(r.shape) for r in rows)
    total = sum(r.nbytes for r in rows)
    per = sum(r.bytes_per_device for r in rows)
    mesh_txt = ", ".join(f"{a}={s}" for a, s in mesh.shape.items() if s > 1) or "1 device"
    out.append(f"| total: {len(rows)} arrays | {n:,} params | mesh {mesh_txt} | "
               f"{_fmt_bytes(total)} unsharded | {_fmt_bytes(per)} |")
    return "\n".join(out)


def print_sharding_table(module: nnx.Module, mesh, rules: Mapping[str, Any] | str = "fsdp_tp",
                         *, strict: bool = False, file=None) -> str:
    """Prints (to ``file``, default stdout) and returns ``sharding_table``: per parameter its
    path, shape, logical axes, PartitionSpec and bytes per device, then totals. ``rules``: a
    preset name or a rules mapping; ``module`` may be abstract (``nnx.eval_shape``)."""
    rules = get_rules(rules) if isinstance(rules, str) else rules
    text = sharding_table(module, mesh, rules, strict=strict)
    print(text, file=file or sys.stdout)
    return text
