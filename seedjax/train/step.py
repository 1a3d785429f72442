"""Jitted train and eval steps over pure parameter dicts.

``make_train_step`` returns ``step(state, batch) -> (state, metrics)``: forward, loss (the
objective's, ``seedjax.train.objectives``: by default token cross-entropy in float32 + the
model's auxiliary losses), gradients (optionally accumulated over
``accum_steps`` micro-batches with ``lax.scan``), optimizer update. LM batches are dicts
``{"inputs": int32 [B, T], "targets": int32 [B, T], "mask": optional float [B, T]}``; other
objectives define their own (e.g. ``seedjax.train.diffusion``: images and labels).

Train state keys beyond step/params/opt_state/rng (``seedjax.train.state``):
* ``model_state``: the model's non-trainable statistics (e.g. the Expert Race threshold),
  updated by the forward pass in training mode; with accumulation the micro-batches update it
  in order, as consecutive steps would.
* ``ema``: params EMA, ``ema <- d_n ema + (1 - d_n) params`` after update n = 1, 2, ... with
  d_n = min(ema_decay, (1 + n) / (10 + n)) (the usual warm-up: a fixed 0.999 would still hold
  45% of the initial weights after 800 steps).
Objectives with ``uses_rng = True`` get ``rng=`` a key folded from ``state["rng"]``, the step
and the micro-batch index (fresh noise every step, identical after a resume).
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
    """(params, model_state, batch, step, rng) -> (loss, (metrics, new model_state))."""
    uses_rng = getattr(objective, "uses_rng", False)

    def loss(params, mstate, batch, step, rng):
        model = mdef.merge(params, mstate)
        kw = {"rng": rng} if uses_rng else {}
        total, metrics = objective.loss(model, batch, step, **kw)
        return total, (metrics, mdef.model_state_of(model) if mstate is not None else None)
    return loss


def _batch_size(batch: dict) -> int:
    return jax.tree.leaves(batch)[0].shape[0]


def make_train_step(mdef: ModelDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, accum_steps: int = 1, objective=None,
                    ema_decay: float = 0.0) -> Callable:
    """Builds the (un-jitted) train step; jit it with shardings and ``donate_argnums=0``.
    ``objective``: a ``seedjax.train.objectives`` objective (default: token CE, "lm").
    ``ema_decay`` > 0 needs ``state["ema"]`` (``seedjax.train.state``)."""
    if accum_steps < 1:
        raise ValueError(f"train.accum_steps must be >= 1, got {accum_steps}")
    if not 0 <= ema_decay < 1:
        raise ValueError(f"train.ema_decay={ema_decay} must be in [0, 1)")
    objective = TokenCE() if objective is None else objective
    grad_fn = jax.value_and_grad(_loss_fn(mdef, objective), has_aux=True)

    def step(state, batch):
        params, mstate = state["params"], state.get("model_state")
        key = (jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
               if getattr(objective, "uses_rng", False) else jax.random.key(0))
        if accum_steps == 1:
            (loss, (metrics, mstate)), grads = grad_fn(params, mstate, batch, state["step"], key)
        else:
            b = _batch_size(batch)
            if b % accum_steps:
                raise ValueError(f"batch size {b} not divisible by train.accum_steps={accum_steps}")
            micro = jax.tree.map(lambda x: x.reshape(accum_steps, b // accum_steps, *x.shape[1:]), batch)

            def body(carry, xs):
                acc, ms = carry
                mb, i = xs
                (l, (m, ms)), g = grad_fn(params, ms, mb, state["step"],
                                          jax.random.fold_in(key, i))
                return (jax.tree.map(jnp.add, acc, (l, m, g)), ms), None

            zeros = jax.tree.map(jnp.zeros_like, (jnp.float32(0),
                                                  _metric_shapes(grad_fn, params, mstate, micro,
                                                                 state["step"], key), params))
            ((loss, metrics, grads), mstate), _ = jax.lax.scan(
                body, (zeros, mstate), (micro, jnp.arange(accum_steps)))
            loss, metrics, grads = jax.tree.map(lambda x: x / accum_steps, (loss, metrics, grads))
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads),
                   "param_norm": optax.global_norm(new_params), "lr": schedule(state["step"])}
        new_state = {**state, "step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        if mstate is not None:
            new_state["model_state"] = mstate
        if ema_decay > 0:
            d = ema_warmup_decay(ema_decay, new_state["step"])
            new_state["ema"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p,
                                            state["ema"], new_params)
        return new_state, metrics

    return step


def ema_warmup_decay(decay: float, n: jax.Array) -> jax.Array:
    """d_n = min(decay, (1 + n) / (10 + n)) for update n >= 1 (float32 scalar)."""
    n = jnp.asarray(n, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def _metric_shapes(grad_fn, params, mstate, micro, step, key):
    first = jax.tree.map(lambda x: x[0], micro)
    (_, (m, _)), _ = jax.eval_shape(grad_fn, params, mstate, first, step, key)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), m)


def make_eval_step(mdef: ModelDef, sums: Callable = eval_sums) -> Callable:
    """``eval(params, model_state, batch) -> {"ce_sum", "tokens", ...}`` (sums over the batch;
    see ``seedjax.train.objectives.eval_sums``; ``sums(model, batch)`` for other tasks). The
    model runs in eval mode (e.g. the Expert Race threshold instead of the batch race)."""
    def evaluate(params, model_state, batch):
        return sums(mdef.merge(params, model_state, train=False), batch)
    return evaluate


def bits_per_byte(ce_nats_per_token: float, tokens_per_byte: float = 1.0) -> float:
    """Bits per byte from mean cross-entropy in nats per token (byte tokenizer: 1 token/byte)."""
    return ce_nats_per_token * tokens_per_byte / math.log(2)
