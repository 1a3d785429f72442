"""LMConfig: the validated description of a decoder LM.

Built from the ``model`` block of an ml_collections config with ``LMConfig.from_dict``. Each
pluggable part is chosen by a registry name (see ``seedjax.models.registry``) plus a kwargs dict
passed to its factory, so new architectures register factories instead of editing the LM.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import jax.numpy as jnp

from seedjax.validation import dataclass_from_dict

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class LMConfig:
    vocab_size: int = 256
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None      # None: = n_heads (multi-head); < n_heads: grouped-query
    head_dim: int | None = None        # None: d_model // n_heads
    mlp_dim: int = 1024
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    qk_norm: bool = False
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = "float32"             # compute dtype; params are float32
    scan_layers: bool = False          # lax.scan over stacked blocks (needs identical blocks)
    remat: bool = False                # recompute block activations in the backward pass
    sandwich_norm: bool = False        # also norm each sublayer's output before the residual add
                                       # (pre + post norms, as in Ouro / Gemma 2)
    # pluggable parts: registry name + factory kwargs
    embed: str = "token"
    embed_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    norm: str = "rmsnorm"
    norm_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mixer: str = "attention"
    mixer_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ffn: str = "swiglu"
    ffn_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    connection: str = "residual"
    connection_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    head: str = "tied"
    head_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # memory layers beside the blocks (seedjax.models.memory_placement): registry name, kwargs,
    # placement "every" (one per block, parallel to its FFN) or "k:v/k:v" (read the normalised
    # FFN input of block k, add the output after block v; k == v is parallel to block k's FFN)
    memory: str = "none"
    memory_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    memory_layers: str = ""
    # the block stack: "plain" (n_layers blocks once) or "looped" (the same blocks applied
    # stack_kwargs["loops"] times with the final norm after every loop and an exit gate; see
    # seedjax.nn.looped.LoopConfig for its kwargs)
    stack: str = "plain"
    stack_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_dim", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"model.n_heads={self.n_heads} does not divide model.d_model="
                             f"{self.d_model}; choose n_heads dividing d_model or set model.head_dim")
        kv = self.kv_heads
        if kv < 1 or self.n_heads % kv:
            raise ValueError(f"model.n_kv_heads={self.n_kv_heads} must be >= 1 and divide "
                             f"model.n_heads={self.n_heads}")
        if self.resolved_head_dim % 2:
            raise ValueError(f"head dim {self.resolved_head_dim} must be even for RoPE "
                             "(model.d_model / model.n_heads or model.head_dim)")
        if self.memory != "none":
            self.memory_pairs  # validates the placement
        elif self.memory_layers:
            raise ValueError(f"model.memory_layers={self.memory_layers!r} needs model.memory set "
                             "(it is 'none')")
        if self.dtype not in DTYPES:
            raise ValueError(f"model.dtype={self.dtype!r} is not one of {sorted(DTYPES)}")

    def __hash__(self):  # kwargs dicts are unhashable; NNX graph definitions hash static fields
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True, default=str))

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def memory_pairs(self) -> tuple[tuple[int, int], ...]:
        """Memory placement as (k, v) block pairs, one per memory unit (empty if no memory)."""
        if self.memory == "none":
            return ()
        from seedjax.models.memory_placement import parse_memory_layers
        return parse_memory_layers(self.memory_layers, self.n_layers)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def out_init_std(self) -> float:
        """Init std of residual-branch output projections: init_std / sqrt(2 * n_layers)."""
        return self.init_std / (2 * self.n_layers) ** 0.5

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LMConfig":
        """Builds from a (ConfigDict-like) mapping; unknown keys raise ValueError."""
        return dataclass_from_dict(cls, d, "model")

    def replace(self, **kw) -> "LMConfig":
        return dataclasses.replace(self, **kw)
