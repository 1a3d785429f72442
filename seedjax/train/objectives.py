"""Training objectives: what a train step minimises and what an eval step sums.

``train.objective`` names one, ``train.objective_kwargs`` holds its settings:

* ``"lm"`` (default; every model): mean token cross-entropy of ``model(inputs).logits`` (a looped
  model: the logits its exit rule returns) plus the model's auxiliary losses.
* ``"looped"``: Ouro Stage I, sum_t p_t CE_t - beta H(p) (kwargs ``beta``, ``beta_schedule``,
  ``remat``; ``seedjax.train.looped_objectives.StageOne``). Needs ``model.stack = "looped"``.
* ``"looped_gate"``: Ouro Stage II, the exit gate's BCE against the improvement targets with the
  LM frozen (kwargs ``k``, ``gamma``; ``StageTwo``). Trains only the "exit_gate" parameter group
  unless ``train.trainable_groups`` says otherwise; start it from a Stage I run with
  ``train.init_from``.

An objective has ``loss(model, batch, step) -> (total, {metric: scalar})`` (``step``: the
optimizer step, int32 scalar) and an optional ``trainable_groups``. Eval sums
(:func:`eval_sums`) depend on the model, not the objective: a looped model also reports its
per-loop CE and exit statistics.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from seedjax.nn.losses import token_nll
from seedjax.train.looped_objectives import StageOne, StageTwo, looped_eval_sums


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array]:
    """Sum of token cross-entropies (nats) and the token count. logits [B, T, V]."""
    nll = token_nll(logits, targets)
    if mask is None:
        mask = jnp.ones_like(nll)
    return jnp.sum(nll * mask), jnp.sum(mask)


@dataclasses.dataclass(frozen=True)
class TokenCE:
    """``train.objective = "lm"``: mean token CE of the model's logits + its aux losses."""
    trainable_groups = None

    def loss(self, model, batch: dict, step: jax.Array) -> tuple[jax.Array, dict]:
        del step
        out = model(batch["inputs"], targets=batch["targets"], target_mask=batch.get("mask"))
        ce_sum, n = cross_entropy(out.logits, batch["targets"], batch.get("mask"))
        ce = ce_sum / jnp.maximum(n, 1.0)
        aux = {k: jnp.asarray(v, jnp.float32) for k, v in out.aux_losses.items()}
        total = ce + sum(aux.values(), jnp.float32(0.0))
        return total, {"ce": ce, **{f"aux/{k}": v for k, v in aux.items()}}


OBJECTIVES = {"lm": TokenCE, "looped": StageOne, "looped_gate": StageTwo}
LOOPED_ONLY = ("looped", "looped_gate")


def make_objective(name: str = "lm", kwargs: Mapping[str, Any] | None = None, *,
                   stack: str = "plain") -> Any:
    """The objective ``name`` with ``kwargs``; ValueError naming the field for an unknown name,
    an unknown or bad keyword, or a looped objective on a model whose ``stack`` is not looped."""
    if name not in OBJECTIVES:
        raise ValueError(f"train.objective={name!r} is not allowed; allowed: "
                         f"{sorted(OBJECTIVES)}")
    if name in LOOPED_ONLY and stack != "looped":
        raise ValueError(f"train.objective={name!r} needs model.stack='looped' (got {stack!r})")
    cls = OBJECTIVES[name]
    kwargs = dict(kwargs or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        raise ValueError(f"train.objective_kwargs {unknown} not accepted by objective {name!r}; "
                         f"allowed: {sorted(fields) or 'none'}")
    return cls(**kwargs)


def eval_sums(model, batch: dict) -> dict:
    """Sums over the batch: ``ce_sum`` and ``tokens`` (and, for looped models, the per-loop
    statistics of ``looped_eval_sums``); every key but ``tokens`` is divided by the token
    count in the report."""
    if getattr(model, "looped", False):
        return looped_eval_sums(model, batch)
    ce_sum, n = cross_entropy(model(batch["inputs"]).logits, batch["targets"], batch.get("mask"))
    return {"ce_sum": ce_sum, "tokens": n}
