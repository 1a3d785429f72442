"""Jitted train and eval steps over pure parameter dicts.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)``: forward, loss (the
objective's, ``seedjax.train.objectives``: by default token cross-entropy in float32 + the
model's auxiliary losses), gradients (optionally accumulated over
``accum_steps`` micro-batches with ``lax.scan``), optimizer update. Batches are dicts
``{"inputs": int32 [B, T], "targets": int32 [B, T], "mask": optional float [B, T]}``.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from seedjax.train.objectives import TokenCE, eval_sums
from seedjax.train.state import ModelDef


def _loss_fn(mdef: ModelDef, objective):
    def loss(params, batch, step):
        return objective.loss(mdef.merge(params), batch, step)
    return loss


def make_train_step(mdef: ModelDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, accum_steps: int = 1, objective=None) -> Callable:
    """Builds the (un-jitted) train step; jit it with shardings and ``donate_argnums=0``.
    ``objective``: a ``seedjax.train.objectives`` objective (default: token CE, "lm")."""
    if accum_steps < 1:
        raise ValueError(f"train.accum_steps must be >= 1, got {accum_steps}")
    objective = TokenCE() if objective is None else objective
    grad_fn = jax.value_and_grad(_loss_fn(mdef, objective), has_aux=True)

    def step(state, batch):
        params = state["params"]
        if accum_steps == 1:
            (loss, metrics), grads = grad_fn(params, batch, state["step"])
        else:
            b = batch["inputs"].shape[0]
            if b % accum_steps:
                raise ValueError(f"batch size {b} not divisible by train.accum_steps={accum_steps}")
            micro = jax.tree.map(lambda x: x.reshape(accum_steps, b // accum_steps, *x.shape[1:]), batch)

            def body(acc, mb):
                (l, m), g = grad_fn(params, mb, state["step"])
                return jax.tree.map(jnp.add, acc, (l, m, g)), None

            zeros = jax.tree.map(jnp.zeros_like, (jnp.float32(0),
                                                  _metric_shapes(grad_fn, params, micro,
                                                                 state["step"]), params))
            (loss, metrics, grads), _ = jax.lax.scan(body, zeros, micro)
            loss, metrics, grads = jax.tree.map(lambda x: x / accum_steps, (loss, metrics, grads))
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
                   "param_norm": optax.global_norm(new_params), "lr": schedule(state["step"])}
        new_state = {**state, "step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        return new_state, metrics

    return step


def _metric_shapes(grad_fn, params, micro, step):
    first = jax.tree.map(lambda x: x[0], micro)
    (_, m), _ = jax.eval_shape(grad_fn, params, first, step)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m)


def make_eval_step(mdef: ModelDef) -> Callable:
    """``eval(params, batch) -> {"ce_sum", "tokens", ...}`` (sums over the batch; see
    ``seedjax.train.objectives.eval_sums``)."""
    def evaluate(params, batch):
        return eval_sums(mdef.merge(params), batch)
    return evaluate


def bits_per_byte(ce_nats_per_token: float, tokens_per_byte: float = 1.0) -> float:
    """Bits per byte from mean cross-entropy in nats per token (byte tokenizer: 1 token/byte)."""
    return ce_nats_per_token * tokens_per_byte / math.log(2)
