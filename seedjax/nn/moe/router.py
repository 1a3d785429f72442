"""Token-choice top-k router and its auxiliary losses (all in float32 or wider).

For T tokens x [T, d_model], router W_r [d_model, E]:

    z        = x W_r                                    logits [T, E]
    s        = softmax(z)  or  sigmoid(z)               scores [T, E]
    p        = s / sum_e s                              probabilities [T, E] (= s for softmax)
    (v, I)   = top-k_e s                                [T, k], experts I distinct per token
    w        = v / sum_j v   (normalize_topk_weights)   or  w = v        combine weights [T, k]

    load balance  L_lb = E * sum_e f_e P_e,   f_e = #{(t, j): I[t, j] = e} / (T k),
                                              P_e = mean_t p[t, e]
    z-loss        L_z  = mean_t logsumexp(z_t)^2

L_lb = 1 when either f or P is uniform (1/E) and reaches E/k when k experts take every token
and all the probability; only P carries gradient (f counts assignments before any capacity
drop, as in Switch/GShard). With sigmoid scores P uses the per-token normalised scores p.

Parameter (logical axes; optimizer labels): w_router [d_model, E] ("embed", None), decayed,
lr group "default".
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.linear import project
from seedjax.nn.moe.config import MoEConfig
from seedjax.nn.params import normal_init, param


class Routing(NamedTuple):
    logits: jax.Array    # [T, E] float32
    probs: jax.Array     # [T, E] float32, rows sum to 1
    weights: jax.Array   # [T, k] float32 combine weights
    experts: jax.Array   # [T, k] int32, distinct per token, by decreasing score


def load_balance_loss(probs: jax.Array, experts: jax.Array) -> jax.Array:
    """Unweighted E * sum_e f_e P_e from probs [T, E] and experts [T, k] (scalar)."""
    n_experts = probs.shape[-1]
    counts = jnp.bincount(experts.reshape(-1), length=n_experts)
    f = counts.astype(probs.dtype) / experts.size
    return n_experts * jnp.sum(f * jnp.mean(probs, axis=0))


def z_loss(logits: jax.Array) -> jax.Array:
    """Unweighted mean_t logsumexp(z_t)^2 from logits [T, E] (scalar)."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))


def _safe_sum(a: jax.Array) -> jax.Array:
    """Sum over the last axis (kept), floored at the dtype's tiny (sigmoid scores can
    underflow to 0)."""
    return jnp.maximum(jnp.sum(a, axis=-1, keepdims=True), jnp.finfo(a.dtype).tiny)


class Router(nnx.Module):
    """``Router(config, rngs=...)(x [T, d_model]) -> Routing``."""

    def __init__(self, config: MoEConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        std = c.router_init_std if c.router_init_std is not None else c.d_model ** -0.5
        self.w_router = param(rngs, normal_init(std), (c.d_model, c.n_experts), ("embed", None))

    def __call__(self, x: jax.Array) -> Routing:
        c = self.config
        ft = jnp.promote_types(x.dtype, jnp.float32)
        logits = project(x.astype(ft), self.w_router[...].astype(ft))
        return token_choice(logits, c.top_k, c.router_score, c.normalize_topk_weights)


def token_choice(logits: jax.Array, top_k: int, score: str = "softmax",
                 normalize: bool = True) -> Routing:
    """Top-k of the scores of logits [T, E] (ties: lower expert index first) -> ``Routing``.
    ``score``: "softmax" | "sigmoid" | "identity" (the raw logits are the scores, probs =
    softmax; ``seedjax.nn.moe.routing_rules`` refuses normalising raw logits)."""
    if score == "softmax":
        scores = probs = jax.nn.softmax(logits, axis=-1)
    elif score == "sigmoid":
        scores = jax.nn.sigmoid(logits)
        probs = scores / _safe_sum(scores)
    elif score == "identity":
        scores, probs = logits, jax.nn.softmax(logits, axis=-1)
    else:
        raise ValueError(f"token_choice score={score!r} is not allowed; allowed: "
                         "('softmax', 'sigmoid', 'identity')")
    top, experts = jax.lax.top_k(scores, top_k)
    if normalize:
        top = top / _safe_sum(top)
    return Routing(logits, probs, top, experts.astype(jnp.int32))
