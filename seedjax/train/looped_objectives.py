"""Training objectives of looped LMs (Ouro / LoopLM, arXiv 2510.25741 secs. 3.3-3.4).

Stage I (eq. 4), per token, gradients into the LM and the gate::

    L = sum_t p_t CE_t - beta H(p),      H(p) = -sum_t p_t log p_t

Stage II (eqs. 5-6), the LM frozen (stop-gradient here; the optimizer freezes every group but
"exit_gate", see ``train.trainable_groups``), for loops t = 2..T (1-based)::

    I_t = max(0, CE_{t-1} - CE_t)          (stop-gradient per-token losses)
    w_t = sigmoid(k (I_t - gamma))          (target probability to continue)
    L   = (1/T) sum_{t=2..T} mean_tokens -[w_t log(1 - lambda_t) + (1 - w_t) log lambda_t]

(the 1/T normaliser over T-1 terms is the paper's). Both reduce over tokens as mean over the
mask (the released ports' per-token reading of eq. 4).

Per-loop cross-entropies CE_t [T, B, S] come from :func:`loop_token_ce`, which maps the head
over the loops with ``lax.map`` and rematerialises each loop's logits in the backward pass, so
one loop's [B, S, V] logits (and their gradient) are alive at a time instead of T loops'
(compiled temp memory of the Stage I gradient at T = 4: 2.3 logit tensors vs 8.3 when the
loops' logits are stacked; ``tests/train/test_looped_objectives.py``).

Logged per step (train) and per eval: ``loop_ce/t`` (CE of loop t, 1-based), ``exit_entropy``
(H(p), nats; max ln T), ``exit_mean_step`` (E_p[t], 1-based) and ``exit_p/t`` (mean exit
probability of loop t over tokens: the exit histogram of the distribution).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from seedjax.nn.looped import (exit_steps, gate_log_probs, loop_token_ce, resolve_rule,
                               token_nll)


def _masked_sum(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(x * mask)


def loop_stat_sums(ce: jax.Array, log_p: jax.Array, mask: jax.Array) -> dict:
    """Sums over tokens (divide by the token count): ce [T, B, S], log p [B, S, T], mask [B, S].
    Keys ``loop_ce/t``, ``exit_p/t`` (t 1-based), ``exit_entropy``, ``exit_mean_step``."""
    p = jnp.exp(log_p)
    loops = ce.shape[0]
    out = {}
    for t in range(loops):
        out[f"loop_ce/{t + 1}"] = _masked_sum(ce[t], mask)
        out[f"exit_p/{t + 1}"] = _masked_sum(p[..., t], mask)
    out["exit_entropy"] = _masked_sum(exit_entropy(log_p), mask)
    out["exit_mean_step"] = _masked_sum(jnp.sum(p * jnp.arange(1, loops + 1), axis=-1), mask)
    return out


def exit_entropy(log_p: jax.Array) -> jax.Array:
    """H(p) = -sum_t p_t log p_t over the last axis (0 log 0 = 0): [..., T] -> [...]."""
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * jnp.where(p > 0, log_p, 0.0), 0.0), axis=-1)


def expected_ce(ce: jax.Array, log_p: jax.Array) -> jax.Array:
    """sum_t p_t CE_t per token: ce [T, B, S], log p [B, S, T] -> [B, S]."""
    return jnp.sum(jnp.exp(log_p) * jnp.moveaxis(ce, 0, -1), axis=-1)


def stage_one_token_loss(ce: jax.Array, log_p: jax.Array, beta: jax.Array | float) -> jax.Array:
    """Eq. 4 per token: ce [T, B, S], log p [B, S, T] -> sum_t p_t CE_t - beta H(p) [B, S]."""
    return expected_ce(ce, log_p) - beta * exit_entropy(log_p)


def stage_two_loop_losses(ce: jax.Array, gate_logits: jax.Array, mask: jax.Array, *, k: float,
                          gamma: float) -> jax.Array:
    """Eq. 6 per loop t = 2..T: ce, gate_logits [T, B, S], mask [B, S] -> [T - 1] mean BCE over
    tokens (CE is stop-gradient; lambda = sigmoid(gate logit), in log space via softplus)."""
    ce = jax.lax.stop_gradient(ce)
    improve = jnp.maximum(ce[:-1] - ce[1:], 0.0)          # I_t, t = 2..T
    w = jax.nn.sigmoid(k * (improve - gamma))             # target "continue"
    z = gate_logits[1:].astype(jnp.float32)
    bce = w * jax.nn.softplus(z) + (1.0 - w) * jax.nn.softplus(-z)  # -w log(1-l) - (1-w) log l
    n = jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.sum(bce * mask, axis=(1, 2)) / n


def _mask_of(batch: dict, targets: jax.Array) -> jax.Array:
    m = batch.get("mask")
    return jnp.ones(targets.shape, jnp.float32) if m is None else m.astype(jnp.float32)


def _means(sums: dict, n: jax.Array) -> dict:
    return {k: v / n for k, v in sums.items()}


def _number(v: Any, field: str, lo: float, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < lo or (lo_open and v == lo):
        raise ValueError(f"train.objective_kwargs.{field}={v!r} must be a number "
                         f"{'>' if lo_open else '>='} {lo}")
    return float(v)


@dataclasses.dataclass(frozen=True)
class StageOne:
    """Ouro Stage I (``train.objective = "looped"``).

    beta: the entropy weight (paper: 0.1 in stage 1a, 0.05 afterwards).
    beta_schedule: optional ((step, beta), ...) pairs, ascending steps: from each step on, beta
        takes that value (before the first step: ``beta``), e.g. ((0, 0.1), (3000, 0.05)).
    remat: recompute each loop's logits in the backward pass (one [B, S, V] alive at a time).
    """
    beta: float = 0.1
    beta_schedule: Sequence[Sequence[float]] = ()
    remat: bool = True
    trainable_groups = None  # every group learns

    def __post_init__(self):
        _number(self.beta, "beta", 0.0)
        pairs = [tuple(p) for p in self.beta_schedule]
        for p in pairs:
            if len(p) != 2:
                raise ValueError(f"train.objective_kwargs.beta_schedule entry {p!r} must be a "
                                 "(step, beta) pair")
            _number(p[0], "beta_schedule step", 0.0)
            _number(p[1], "beta_schedule beta", 0.0)
        if [p[0] for p in pairs] != sorted(p[0] for p in pairs):
            raise ValueError(f"train.objective_kwargs.beta_schedule={pairs} must have ascending "
                             "steps")
        object.__setattr__(self, "beta_schedule", tuple(pairs))

    def beta_at(self, step: jax.Array) -> jax.Array:
        beta = jnp.float32(self.beta)
        for s, b in self.beta_schedule:
            beta = jnp.where(step >= s, jnp.float32(b), beta)
        return beta

    def loss(self, model, batch: dict, step: jax.Array) -> tuple[jax.Array, dict]:
        targets = batch["targets"]
        mask = _mask_of(batch, targets)
        out = model.loop_states(batch["inputs"])
        ce, head_aux = loop_token_ce(model, out.states, targets, remat=self.remat)
        _, log_p = gate_log_probs(out.gate_logits, targets.shape, ce.shape[0])
        beta = self.beta_at(step)
        n = jnp.maximum(jnp.sum(mask), 1.0)
        objective = _masked_sum(stage_one_token_loss(ce, log_p, beta), mask) / n
        aux = {k: jnp.asarray(v, jnp.float32) for k, v in {**out.aux_losses, **head_aux}.items()}
        total = objective + sum(aux.values(), jnp.float32(0.0))
        return total, {"ce": _masked_sum(expected_ce(ce, log_p), mask) / n, "objective": objective, "beta": beta,
                       **_means(loop_stat_sums(ce, log_p, mask), n),
                       **{f"aux/{k}": v for k, v in aux.items()}}


@dataclasses.dataclass(frozen=True)
class StageTwo:
    """Ouro Stage II (``train.objective = "looped_gate"``): only the exit gate learns.

    k, gamma: the target's slope and improvement threshold (paper: 50.0 and 0.005; the spec
        suggests retuning gamma to the loss scale of a tiny model).
    The model's auxiliary losses are not added (the LM is frozen; they carry no gate gradient).
    """
    k: float = 50.0
    gamma: float = 0.005
    trainable_groups = ("exit_gate",)  # unless train.trainable_groups says otherwise
    backward_through_model = False      # FLOP accounting: the LM is only run forward

    def __post_init__(self):
        _number(self.k, "k", 0.0, lo_open=True)
        _number(self.gamma, "gamma", 0.0)

    def loss(self, model, batch: dict, step: jax.Array) -> tuple[jax.Array, dict]:
        del step
        targets = batch["targets"]
        mask = _mask_of(batch, targets)
        out = model.loop_states(batch["inputs"])
        gate = model.layers.exit_gate
        if gate is None or out.states.shape[0] < 2:
            raise ValueError("train.objective='looped_gate' needs model.stack_kwargs.exit_gate="
                             "True and loops >= 2")
        states = jax.lax.stop_gradient(out.states)
        ce, _ = loop_token_ce(model, states, targets, remat=False)
        ce = jax.lax.stop_gradient(ce)
        z = gate(states)                                   # [T, B, S], grads into the gate only
        per_loop = stage_two_loop_losses(ce, z, mask, k=self.k, gamma=self.gamma)
        total = jnp.sum(per_loop) / ce.shape[0]
        _, log_p = gate_log_probs(z, targets.shape, ce.shape[0])
        n = jnp.maximum(jnp.sum(mask), 1.0)
        return total, {"ce": _masked_sum(ce[-1], mask) / n, "objective": total,
                       **{f"gate_bce/{t + 2}": v for t, v in enumerate(per_loop)},
                       **_means(loop_stat_sums(ce, log_p, mask), n)}


def looped_eval_sums(model, batch: dict) -> dict:
    """Eval sums of a looped model: ``ce_sum`` (CE of the logits its configured exit rule
    returns, as ``model(inputs)``), ``tokens`` and :func:`loop_stat_sums`."""
    targets = batch["targets"]
    mask = _mask_of(batch, targets)
    out = model.loop_states(batch["inputs"])
    ce, _ = loop_token_ce(model, out.states, targets, remat=False)
    loops = ce.shape[0]
    z, log_p = gate_log_probs(out.gate_logits, targets.shape, loops)
    rule, arg = resolve_rule(model.layers.config, loops)
    steps = exit_steps(z, rule, arg, loops, targets.shape)
    if steps is None:  # weighted: CE of sum_t p_t logits_t, accumulated one loop at a time
        def add(acc, xp):
            x, p = xp
            return acc + p[..., None] * model.head_logits(x)[0], None
        p = jnp.moveaxis(jnp.exp(log_p), -1, 0)
        mixed, _ = jax.lax.scan(add, p[0][..., None] * model.head_logits(out.states[0])[0],
                                (out.states[1:], p[1:]))
        rule_ce = token_nll(mixed, targets)
    else:
        rule_ce = jnp.take_along_axis(ce, steps[None], axis=0)[0]
    return {"ce_sum": _masked_sum(rule_ce, mask), "tokens": jnp.sum(mask),
            **loop_stat_sums(ce, log_p, mask)}
