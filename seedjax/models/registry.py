"""Registries of the LM's pluggable parts.

Kinds and factory signatures (``cfg`` is an ``LMConfig``; ``kw`` its ``<kind>_kwargs``):

* ``embed``:      ``f(cfg, *, rngs, **kw) -> module(tokens [B,T]) -> x [B,T,d]``; optionally
  ``f.flops_per_token(cfg)`` and ``f.data_diagnostics(cfg, tokens) -> {name: float}`` (logged by
  the trainer at step 0 on the train tokens, e.g. over-encoding's table collisions)
* ``norm``:       ``f(cfg, dim, *, rngs, **kw) -> module(x) -> x``
* ``mixer``:      ``f(cfg, layer_idx, *, rngs, **kw) -> module(x, *, positions, cache) -> (y, cache)``
* ``ffn``:        ``f(cfg, layer_idx, *, rngs, **kw) -> module(x) -> y`` or ``(y, aux_losses: dict)``;
  optionally ``f.flops_per_token(cfg) -> {part: forward FLOPs per token per layer}`` for MFU
* ``connection``: an object with ``make(cfg, sublayer_idx, *, rngs, **kw) -> module`` (with
  ``read``/``write``) and ``expand(x, cfg)`` / ``reduce(H, cfg)`` (see ``seedjax.nn.connections``);
  optionally ``out_init_scale(cfg) -> float`` multiplying the branch output projections' init std
* ``head``:       ``f(cfg, *, rngs, **kw) -> module(x, embed) -> logits`` or ``(logits, aux_losses)``;
  optionally ``module.training_losses(x, targets, embed, mask=, input_embeddings=)`` (extra
  training-only losses, e.g. over-decoding) and ``f.flops_per_token(cfg)``
* ``stack``:      ``f(cfg, *, rngs, **kw) -> module`` holding the blocks: ``LayerStack`` ("plain") or
  a module with ``looped = True`` called as ``module(H, *, finalize, expand, loops, ...)`` returning
  a ``seedjax.nn.looped.LoopOutput`` ("looped": shared blocks applied T times, exit gate)
* ``memory``:     ``f(cfg, unit_idx, n_units, *, rngs, **kw) -> module(x, tables) -> y`` or
  ``(y, aux_losses)`` (a memory unit beside the blocks, see ``cfg.memory_layers``); optionally
  ``f.shared_tables(cfg, n_units, *, rngs, **kw) -> module() -> tables | None`` (tables read by
  every unit, e.g. UltraMemV2's shared values) and ``f.flops_per_token(cfg)`` (per unit)

Register with ``@register("ffn", "my_ffn")``; the config selects it with ``model.ffn = "my_ffn"``.
"""
from __future__ import annotations

from typing import Any, Callable

KINDS = ("embed", "norm", "mixer", "ffn", "connection", "head", "memory", "stack")
_REGISTRY: dict[str, dict[str, Any]] = {k: {} for k in KINDS}


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Decorator registering ``obj`` as ``name`` of ``kind``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}; allowed: {KINDS}")

    def deco(obj):
        if name in _REGISTRY[kind] and _REGISTRY[kind][name] is not obj:
            raise ValueError(f"{kind} factory {name!r} is already registered")
        _REGISTRY[kind][name] = obj
        return obj

    return deco


def lookup(kind: str, name: str) -> Any:
    """Returns the registered factory; ValueError naming ``model.<kind>`` and the choices."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}; allowed: {KINDS}")
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        raise ValueError(f"model.{kind}={name!r} is not a registered {kind} factory; "
                         f"allowed: {sorted(_REGISTRY[kind])}") from None


def names(kind: str) -> list[str]:
    return sorted(_REGISTRY[kind])
