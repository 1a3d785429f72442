"""Total and activated parameter counts of an LM config, from the abstract model.

``param_counts(model)`` builds ``LM(LMConfig.from_dict(model))`` under ``nnx.eval_shape``
(shapes only, nothing allocated) and sorts every parameter into three parts by its top-level
module: ``embed`` (the input lookup tables: the token table, or over-encoding's 1-gram and
n-gram tables), ``head`` (an untied output projection; a tied head has none) and ``body``
(everything else: blocks, norms, connections, memory units, shared memory tables, and
over-encoding's slice projections, which are matmuls, not lookups).

Activated parameters are those one token touches in a forward pass:

* MoE experts (a tensor with an ``"expert"`` axis): ``top_k / n_experts`` of it (the router
  and any shared experts count in full);
* memory value tables (a ``"mem_rows"`` axis: UltraMem / UltraMemV2 values and pre-values, PKM
  and Memory+ values, PEER's expert vectors): ``heads * topk`` rows per table per token (of
  each unit; a table shared by U units, UltraMemV2's ``memory_tables``, ``U * heads * topk``),
  at most all of its rows;
* over-encoding's n-gram table (a ``"ngram_rows"`` axis): one row per slice, i.e. ``n_slices``
  rows of the slice width (= d_model parameters);
* everything else in full, the token embedding table and an untied head included (the usual
  MoE-paper convention: OLMoE's "1.3B active" counts both).

A paper's number is compared under one of these conventions (``count(..., convention)``):

* ``"all"``:           embed + head + body;
* ``"non_embedding"``: body only (no input embedding, no untied head);
* ``"with_head"``:     body + untied head, no input embedding (what forward FLOPs per token
  count: the head is a matmul, the embedding a lookup; with a tied head this is the body plus
  the token table once).

Each paper config names its convention per number (``configs/papers/*.py`` ``PAPER_PARAMS``:
one name for both, or a (total, activated) pair where a paper counts them differently).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

from flax import nnx

CONVENTIONS = ("all", "non_embedding", "with_head")
PARTS = ("embed", "head", "body")


def _defaults(config_cls, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` over the dataclass defaults of ``config_cls`` (no validation)."""
    out = {f.name: f.default for f in dataclasses.fields(config_cls)
           if f.default is not dataclasses.MISSING}
    return {**out, **dict(kwargs)}


def _memory_config_cls(kind: str):
    from seedjax.nn.memory import (MemoryPlusConfig, PEERConfig, PKMConfig, UltraMemConfig,
                                   UltraMemV2Config)
    classes = {"pkm": PKMConfig, "ultramem": UltraMemConfig, "ultramem_v2": UltraMemV2Config,
               "peer": PEERConfig, "memory_plus": MemoryPlusConfig}
    if kind not in classes:
        raise ValueError(f"param_count: memory layer {kind!r} unknown; known: {sorted(classes)}")
    return classes[kind]


def _reads_per_token(kind: str, kwargs: Mapping[str, Any]) -> int:
    """Rows one token reads from one memory unit's table: heads * topk."""
    fields = _defaults(_memory_config_cls(kind), kwargs)
    return int(fields["heads"]) * int(fields["topk"])


def _active_fraction_rows(shape, axes, reads: int) -> float:
    """Fraction of a row-indexed table touched when each leading table reads ``reads`` rows."""
    rows = shape[axes.index("mem_rows") if "mem_rows" in axes else axes.index("ngram_rows")]
    return min(rows, reads) / rows


def _leaf_activated(cfg, names: list[str], shape: tuple, axes: tuple) -> float:
    """Activated count of one parameter (see the module docstring)."""
    n = math.prod(shape)
    if "expert" in axes:
        from seedjax.nn.moe import MoEConfig
        moe = _defaults(MoEConfig, cfg.ffn_kwargs)
        return n * moe["top_k"] / moe["n_experts"]
    if "ngram_rows" in axes:
        from seedjax.models.over_encoding_factories import over_encoding_config
        slices = over_encoding_config(cfg, **dict(cfg.embed_kwargs)).n_slices
        return n * _active_fraction_rows(shape, axes, slices)
    if "mem_rows" in axes:
        if names[0] == "memory_tables":          # one table shared by every unit
            reads = len(cfg.memory_pairs) * _reads_per_token(cfg.memory, cfg.memory_kwargs)
        elif "memory" in names or "skip_memories" in names:
            reads = _reads_per_token(cfg.memory, cfg.memory_kwargs)
        else:                                    # a memory layer as the block's FFN
            reads = _reads_per_token(cfg.ffn, cfg.ffn_kwargs)
        return n * _active_fraction_rows(shape, axes, reads)
    return float(n)


def param_counts(model: Mapping[str, Any] | Any) -> dict[str, int]:
    """Counts of the LM built from ``model`` (a config's ``model`` block or an ``LMConfig``):
    ``{part}_total`` and ``{part}_activated`` for part in embed, head, body, plus ``total`` and
    ``activated`` (all parts)."""
    from seedjax.models import LM, LMConfig
    cfg = model if isinstance(model, LMConfig) else LMConfig.from_dict(model)
    abstract = nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0)))
    out = {f"{p}_{k}": 0.0 for p in PARTS for k in ("total", "activated")}
    for path, var in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        names = [str(p) for p in path]
        shape = tuple(var.get_value().shape)
        axes = tuple(var.get_metadata().get("out_sharding") or (None,) * len(shape))
        if names[0] == "embed":
            part = "embed" if {"vocab", "ngram_rows"} & set(axes) else "body"
        else:
            part = "head" if names[0] == "head" else "body"
        out[f"{part}_total"] += math.prod(shape)
        out[f"{part}_activated"] += _leaf_activated(cfg, names, shape, axes)
    counts = {k: int(round(v)) for k, v in out.items()}
    for k in ("total", "activated"):
        counts[k] = sum(counts[f"{p}_{k}"] for p in PARTS)
    # a tied head multiplies by the token table: "with_head" counts that table once
    counts["tied_head"] = cfg.vocab_size * cfg.d_model if cfg.head == "tied" else 0
    return counts


def _count_one(counts: Mapping[str, int], convention: str, kind: str) -> int:
    parts = {"all": PARTS, "non_embedding": ("body",), "with_head": ("body", "head")}
    if convention not in parts:
        raise ValueError(f"param_count convention {convention!r} unknown; allowed: "
                         f"{CONVENTIONS}")
    tied = counts["tied_head"] if convention == "with_head" else 0
    return sum(counts[f"{p}_{kind}"] for p in parts[convention]) + tied


def count(counts: Mapping[str, int], convention: str | Sequence[str]) -> tuple[int, int]:
    """(total, activated) of ``param_counts`` output under a paper's ``convention``: one name,
    or a (total convention, activated convention) pair."""
    conv = (convention, convention) if isinstance(convention, str) else tuple(convention)
    return _count_one(counts, conv[0], "total"), _count_one(counts, conv[1], "activated")
