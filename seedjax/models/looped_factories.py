"""The "looped" stack (Ouro / LoopLM, ``seedjax.nn.looped``): the LM's ``LayerStack`` applied
``loops`` times with shared weights, the final norm after every loop and an exit gate.

Select with ``model.stack = "looped"`` and ``model.stack_kwargs = {"loops": 4, ...}`` (fields of
``seedjax.nn.looped.LoopConfig``). Ouro's released layout also needs
``model.sandwich_norm = True`` and ``model.head = "untied"`` (see ``configs/papers/ouro.py`` and
``seedjax.convert.ouro``).
"""
from __future__ import annotations

from flax import nnx

from seedjax.models.config import LMConfig
from seedjax.models.lm import LayerStack
from seedjax.models.registry import register
from seedjax.nn.looped import LoopConfig, LoopedStack


@register("stack", "looped")
def looped_stack(cfg: LMConfig, *, rngs: nnx.Rngs, **kw):
    config = LoopConfig(**kw)  # TypeError on unknown kwargs -> ValueError naming the field
    body = LayerStack(cfg, rngs=rngs)
    return LoopedStack(body, cfg.d_model, config, init_std=cfg.init_std, rngs=rngs)
