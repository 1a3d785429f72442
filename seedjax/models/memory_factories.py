"""Registry entries for memory layers: as the LM's FFN sublayer (``model.ffn="pkm"``) and as
memory units beside the blocks (``model.memory`` = "pkm" | "ultramem" | "ultramem_v2" with
``model.memory_layers``, see ``seedjax.models.memory_placement``).

``model.ffn = "pkm"``: product-key memory (``seedjax.nn.memory.ProductKeyMemory``) in place of
the FFN of every block (it reads the block's pre-norm FFN input and writes through the
block's connection). ``model.ffn_kwargs`` are the ``PKMConfig`` fields except ``d_model``
(taken from the model):

  * ``n_keys`` (int, 512): sub-keys per side; N = n_keys**2 value slots per layer.
  * ``heads`` (int, 4): retrieval heads, all sharing the layer's one value table.
  * ``k_dim`` (int, 256): query/key dim per head (even; halves of k_dim/2).
  * ``v_dim`` (int | None, None = d_model): value dim; != d_model adds Linear(v_dim -> d_model).
  * ``topk`` (int, 32): slots read per head.
  * ``topk_side`` (int | None, None = min(topk, n_keys)): per-side candidates of the two-stage
    search; needs topk_side <= n_keys and topk <= topk_side**2; exact when topk <= topk_side
    or topk_side == n_keys (otherwise the top-topk of the candidate grid).
  * ``query_norm`` ("layernorm" | "none", "layernorm"): per-head LayerNorm of the query.
  * ``score_fn`` ("softmax" | "none", "softmax"): softmax over the k selected scores (PKM) or
    raw scores (UltraMem).
  * ``value_init_std`` (float | None, None = v_dim**-0.5), ``query_init_std`` (None =
    d_model**-0.5), ``out_init_std`` (None here = the LM's residual-branch output std,
    ``model.init_std / sqrt(2 n_layers)`` times the connection's scale; only used when
    v_dim != d_model).
  * ``norm_eps`` (float, 1e-5): query LayerNorm epsilon.
  * ``implementation`` ("xla"): ``seedjax.ops`` implementation of retrieval and value read.

The value tables are in the lr group ``memory_values`` (no weight decay): set their learning
rate with ``train.lr_multipliers.memory_values`` (PKM: constant 1e-3 for values).

Example: ``LMConfig(ffn="pkm", ffn_kwargs={"n_keys": 64, "heads": 4, "k_dim": 64, "topk": 16})``.

``model.ffn = "peer"`` (``seedjax.nn.memory.PEER``) and ``model.ffn = "memory_plus"``
(``seedjax.nn.memory.MemoryPlus``) replace the FFN the same way; ``model.ffn_kwargs`` are the
``PEERConfig`` / ``MemoryPlusConfig`` fields except ``d_model`` (see those classes for the
defaults). Their tables (PEER's two expert tables, Memory+'s values) are in ``memory_values``.
"""
from __future__ import annotations

from flax import nnx

from seedjax.models.config import LMConfig
from seedjax.models.factories import branch_out_init_std
from seedjax.models.registry import register
from seedjax.nn.memory.ultramem_v2 import k_dim_for_ratio
from seedjax.nn.memory import (PEER, MemoryPlus, MemoryPlusConfig, PEERConfig, PKMConfig,
                               ProductKeyMemory, SharedValueTables, UltraMem, UltraMemConfig,
                               UltraMemV2, UltraMemV2Config, shared_value_std)


@register("ffn", "pkm")
def pkm(cfg: LMConfig, layer_idx: int, *, rngs: nnx.Rngs, **kwargs):
    kwargs.setdefault("out_init_std", branch_out_init_std(cfg))
    return ProductKeyMemory(PKMConfig(d_model=cfg.d_model, **kwargs),
                            dtype=cfg.compute_dtype, rngs=rngs)


def _pkm_flops(cfg: LMConfig) -> dict[str, int]:
    return PKMConfig(d_model=cfg.d_model, **dict(cfg.ffn_kwargs)).forward_flops_per_token()


pkm.flops_per_token = _pkm_flops  # read by seedjax.train.flops


def _register_layer(name: str, module_cls, config_cls) -> None:
    """``model.ffn=name`` (in every block, replacing the FFN) and ``model.memory=name`` (a unit
    beside the blocks at ``model.memory_layers``): ``module_cls(config_cls(d_model=...,
    **kwargs))``, kwargs from ``ffn_kwargs`` / ``memory_kwargs``."""

    def build(cfg: LMConfig, kwargs: dict, rngs: nnx.Rngs):
        return module_cls(config_cls(d_model=cfg.d_model, **kwargs), dtype=cfg.compute_dtype,
                          rngs=rngs)

    def ffn(cfg: LMConfig, layer_idx: int, *, rngs: nnx.Rngs, **kwargs):
        return build(cfg, kwargs, rngs)

    def unit(cfg: LMConfig, unit: int, n_units: int, *, rngs: nnx.Rngs, **kwargs):
        return build(cfg, kwargs, rngs)

    flops = lambda kwargs: lambda cfg: config_cls(  # noqa: E731
        d_model=cfg.d_model, **dict(getattr(cfg, kwargs))).forward_flops_per_token()
    ffn.flops_per_token, unit.flops_per_token = flops("ffn_kwargs"), flops("memory_kwargs")
    register("ffn", name)(ffn)
    register("memory", name)(unit)


_register_layer("peer", PEER, PEERConfig)
_register_layer("memory_plus", MemoryPlus, MemoryPlusConfig)


# ---- memory units beside the blocks (model.memory + model.memory_layers) --------------------


@register("memory", "pkm")
def pkm_unit(cfg: LMConfig, unit: int, n_units: int, *, rngs: nnx.Rngs, **kwargs):
    """PKM as a memory unit (kwargs: the ``PKMConfig`` fields except d_model)."""
    return pkm(cfg, unit, rngs=rngs, **kwargs)


pkm_unit.flops_per_token = lambda cfg: PKMConfig(
    d_model=cfg.d_model, **dict(cfg.memory_kwargs)).forward_flops_per_token()


@register("memory", "ultramem")
def ultramem_unit(cfg: LMConfig, unit: int, n_units: int, *, rngs: nnx.Rngs, **kwargs):
    """UltraMem unit; kwargs: the ``UltraMemConfig`` fields except d_model (``n_layers`` of
    the "paper" value init defaults to the LM's n_layers)."""
    kwargs.setdefault("n_layers", cfg.n_layers)
    return UltraMem(UltraMemConfig(d_model=cfg.d_model, **kwargs), dtype=cfg.compute_dtype,
                    rngs=rngs)


ultramem_unit.flops_per_token = lambda cfg: UltraMemConfig(
    d_model=cfg.d_model, **dict(cfg.memory_kwargs)).forward_flops_per_token()


def _v2_config(cfg: LMConfig, n_units: int, kwargs) -> UltraMemV2Config:
    """The unit's config; ``layer`` stays 0 (the LM passes the unit index at call time, so
    every unit has the same static structure and the blocks can be scanned)."""
    kwargs = dict(kwargs)
    kwargs.setdefault("ffn_dim", dict(cfg.ffn_kwargs).get("mlp_dim", cfg.mlp_dim))
    ratio = kwargs.pop("mem_to_ffn_ratio", None)
    if ratio is not None:
        if "k_dim" in kwargs:
            raise ValueError("model.memory_kwargs: give k_dim or mem_to_ffn_ratio, not both")
        kwargs["k_dim"] = k_dim_for_ratio(ratio, d_model=cfg.d_model, layer=0,
                                          n_layers=n_units, **kwargs)
    return UltraMemV2Config(d_model=cfg.d_model, layer=0, n_layers=n_units, **kwargs)


@register("memory", "ultramem_v2")
def ultramem_v2_unit(cfg: LMConfig, unit: int, n_units: int, *, rngs: nnx.Rngs, **kwargs):
    """UltraMemV2 unit (use ``memory_layers="every"``); kwargs: the ``UltraMemV2Config`` fields
    except d_model, layer and n_layers (set from the placement); ``ffn_dim`` defaults to the
    LM's FFN inner dim (eq. 26); ``mem_to_ffn_ratio`` (instead of k_dim) picks the k_dim whose
    memory/FFN compute ratio is closest (V2's MCP 17% is a ratio of about 0.2)."""
    return UltraMemV2(_v2_config(cfg, n_units, kwargs), dtype=cfg.compute_dtype,
                      rngs=rngs)


def _v2_shared_tables(cfg: LMConfig, n_units: int, *, rngs: nnx.Rngs, **kwargs):
    c = _v2_config(cfg, n_units, kwargs)
    if c.sharing == "none":
        return None
    return SharedValueTables(c, value_std=shared_value_std(c), rngs=rngs)


ultramem_v2_unit.shared_tables = _v2_shared_tables
ultramem_v2_unit.flops_per_token = lambda cfg: _v2_config(
    cfg, max(len(cfg.memory_pairs), 1), cfg.memory_kwargs).forward_flops_per_token()
