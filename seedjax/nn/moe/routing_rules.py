"""Routing rules over router logits z [B, L, E] (B samples, L tokens each, E experts), all
selecting the same number of (token, expert) pairs, B L k in total (notes C.3, C.4):

    token_choice         top-k experts of each token                     (k per token)
    expert_choice_image  top-C tokens of each expert within each sample   C = ceil(c L k / E)
    expert_choice_batch  top-C tokens of each expert over the B L tokens  C = ceil(c B L k / E)
    expert_race          top-K pairs of the whole [B, L, E] tensor        K = B L k

(c = capacity_factor >= 1, capped so C <= the candidates; with c = 1 and E dividing L k the
totals are exactly B L k.) Scores are S = gate(z), computed in float32, before selection:

    identity  S = z          (Race-DiT's choice: keeps the global order of the raw logits)
    sigmoid   S = sigmoid(z)
    softmax   S = softmax over the E experts of each token

A selected pair's combine weight is its score S (identity gating: raw logits, possibly
negative); token choice may renormalise a token's k weights to sum 1 (``normalize``, not with
identity gating). In expert choice and Expert Race a token may get 0..E experts.

Ties: token choice (via ``router.token_choice``) and expert choice pick the lower index;
Expert Race takes ``ties`` ("index": exactly K; "ge": ``S >= kth``, more with ties) and a
``method`` of ``seedjax.nn.moe.racing``, or a ``RaceThreshold`` (EMA threshold at inference).

Output: ``MaskRouting`` (dense [..., E] mask and weights + per-expert counts); a sparse expert
layer turns it into expert-sorted pairs with ``selected_pairs`` (static length, e.g. K).
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from seedjax.nn.moe.racing import (METHODS, TIES, AxisName, RaceInfo, RaceThreshold,
                                   expert_counts, race_select, top_count_mask)
from seedjax.nn.moe.router import token_choice as _router_token_choice
from seedjax.validation import check_choice, check_int

ROUTERS = ("token_choice", "expert_choice_image", "expert_choice_batch", "expert_race")
GATINGS = ("identity", "sigmoid", "softmax")
DEFAULT_GATING = {"token_choice": "softmax", "expert_choice_image": "softmax",
                  "expert_choice_batch": "softmax", "expert_race": "identity"}


class MaskRouting(NamedTuple):
    logits: jax.Array   # [..., E] float32 router logits z
    scores: jax.Array   # [..., E] float32 gated scores S = gate(z)
    mask: jax.Array     # [..., E] bool: selected (token, expert) pairs
    weights: jax.Array  # [..., E] float32 combine weights, 0 where not selected
    counts: jax.Array   # [E] int32 selected pairs per expert


class Pairs(NamedTuple):
    token: jax.Array        # [P] int32 flat token index (into the [..., E] leading dims)
    expert: jax.Array       # [P] int32, non-decreasing over the valid pairs
    weight: jax.Array       # [P] float32 (0 for padding)
    valid: jax.Array        # [P] bool; False: padding (token 0, expert 0) past the selection
    group_sizes: jax.Array  # [E] int32 valid pairs per expert (sums to min(selected, P))


def check_gating(field: str, gating: str) -> str:
    return check_choice(field, gating, GATINGS)


def check_top_k(field: str, top_k: int, n_experts: int) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= n_experts:
        raise ValueError(f"{field}={top_k!r} must be an integer in [1, n_experts={n_experts}]")
    return top_k


def check_capacity_factor(field: str, capacity_factor: float) -> float:
    ok = (not isinstance(capacity_factor, bool) and isinstance(capacity_factor, (int, float))
          and math.isfinite(capacity_factor) and capacity_factor >= 1)
    if not ok:
        raise ValueError(f"{field}={capacity_factor!r} must be a finite number >= 1")
    return float(capacity_factor)


def gate(logits: jax.Array, gating: str) -> jax.Array:
    """Scores [..., E] float32 (or wider) from logits [..., E]; softmax over the last axis."""
    check_gating("gating", gating)
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if gating == "softmax":
        return jax.nn.softmax(z, axis=-1)
    if gating == "sigmoid":
        return jax.nn.sigmoid(z)
    return z


def _routing(logits, scores, mask) -> MaskRouting:
    weights = jnp.where(mask, scores, jnp.zeros_like(scores))
    return MaskRouting(logits, scores, mask, weights, expert_counts(mask))


def token_choice(logits: jax.Array, top_k: int, *, gating: str = "softmax",
                 normalize: bool = False) -> MaskRouting:
    """Top-k experts per token of logits [..., E] (``router.token_choice``) as a MaskRouting;
    ``normalize``: the k weights of a token sum to 1 (softmax / sigmoid gating only)."""
    check_gating("gating", gating)
    n_experts = logits.shape[-1]
    check_top_k("top_k", top_k, n_experts)
    if normalize and gating == "identity":
        raise ValueError("normalize=True needs gating 'softmax' or 'sigmoid' (raw logits "
                         "can sum to <= 0)")
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    flat = z.reshape(-1, n_experts)
    r = _router_token_choice(flat, top_k, gating, normalize)
    rows = jnp.arange(flat.shape[0])[:, None]
    mask = jnp.zeros(flat.shape, bool).at[rows, r.experts].set(True).reshape(z.shape)
    weights = jnp.zeros(flat.shape, z.dtype).at[rows, r.experts].set(r.weights).reshape(z.shape)
    return MaskRouting(z, gate(z, gating), mask, weights, expert_counts(mask))


def expert_capacity(n_tokens: int, top_k: int, n_experts: int,
                    capacity_factor: float = 1.0) -> int:
    """Tokens per expert of expert choice over ``n_tokens`` candidates:
    min(n_tokens, ceil(capacity_factor n_tokens k / E)) (>= 1)."""
    c = math.ceil(capacity_factor * n_tokens * top_k / n_experts)
    return max(1, min(n_tokens, c))


def expert_choice(logits: jax.Array, top_k: int, *, per: str = "image",
                  gating: str = "softmax", capacity_factor: float = 1.0,
                  method: str = "top_k", axis_name: AxisName = None) -> MaskRouting:
    """Each expert takes its top-C tokens of logits [B, L, E]: within each sample
    (``per="image"``, C over L) or over the whole batch (``per="batch"``, C over B L, B over
    all shards of ``axis_name``). Exactly C per expert and group (ties: lower token index)."""
    check_choice("per", per, ("image", "batch"))
    check_gating("gating", gating)
    if logits.ndim != 3:
        raise ValueError(f"logits shape {logits.shape} must be [B, L, E]")
    b, l, n_experts = logits.shape
    check_top_k("top_k", top_k, n_experts)
    check_capacity_factor("capacity_factor", capacity_factor)
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    scores = gate(z, gating)
    if per == "image":
        if axis_name is not None:
            raise ValueError("per='image' groups never span shards; pass axis_name=None")
        cap = expert_capacity(l, top_k, n_experts, capacity_factor)
        mask = top_count_mask(scores, cap, axes=(1,), method=method)[0]
    else:
        shards = 1 if axis_name is None else jax.lax.axis_size(axis_name)
        cap = expert_capacity(b * l * shards, top_k, n_experts, capacity_factor)
        mask = top_count_mask(scores, cap, axes=(0, 1), method=method, axis_name=axis_name)[0]
    return _routing(z, scores, mask)


def expert_race(logits: jax.Array, top_k: int, *, gating: str = "identity",
                ties: str = "index", method: str = "top_k", axis_name: AxisName = None,
                threshold: RaceThreshold | None = None) -> tuple[MaskRouting, RaceInfo]:
    """Expert Race on logits [B, L, E]: S = gate(z), then the global top-K of S, K = B L k
    (``racing.race_select``; ``ties``/``method``/``axis_name`` as there). With a
    ``threshold`` module the selection is ``threshold(S, k)`` instead (its own ties, method
    and sync axes: the exact race plus an EMA update in training, S > tau at inference)."""
    check_gating("gating", gating)
    if logits.ndim < 2:
        raise ValueError(f"logits shape {logits.shape} must be [..., E] with >= 2 dims")
    check_top_k("top_k", top_k, logits.shape[-1])
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    scores = gate(z, gating)
    if threshold is not None:
        mask, info = threshold(scores, top_k)
    else:
        mask, info = race_select(scores, top_k, ties=ties, method=method, axis_name=axis_name)
    return _routing(z, scores, mask), info


def selected_pairs(mask: jax.Array, weights: jax.Array, n_pairs: int) -> Pairs:
    """The selected pairs of mask/weights [..., E], sorted by expert then token, padded or
    cut to the static length ``n_pairs`` (exact races and expert/token choice select exactly
    B L k; "ge" ties or the inference threshold can select more: pass a margin)."""
    check_int("n_pairs", n_pairs, minimum=0)
    n_experts = mask.shape[-1]
    by_expert = mask.reshape(-1, n_experts).T
    expert, token = jnp.nonzero(by_expert, size=n_pairs, fill_value=0)
    valid = jnp.arange(n_pairs) < jnp.sum(by_expert)
    weight = jnp.where(valid, weights.reshape(-1, n_experts)[token, expert], 0.0)
    sizes = jnp.zeros(n_experts, jnp.int32).at[expert].add(valid.astype(jnp.int32))
    return Pairs(token.astype(jnp.int32), expert.astype(jnp.int32),
                 weight.astype(jnp.float32), valid, sizes)


@dataclasses.dataclass(frozen=True)
class RoutingConfig:
    """Fields:
      router: one of ROUTERS.
      n_experts: E >= 1; top_k: k in [1, E] (experts per token, on average except in
        token choice).
      gating: one of GATINGS; None -> DEFAULT_GATING[router] (identity for Expert Race).
      capacity_factor: c >= 1, expert choice only (C = ceil(c L k / E) or ceil(c B L k / E)).
      normalize: token choice only: renormalise the k weights (not with identity gating).
      ties: Expert Race only, one of TIES. method: Expert Race / expert choice, one of METHODS.
    """

    router: str = "expert_race"
    n_experts: int = 8
    top_k: int = 2
    gating: str | None = None
    capacity_factor: float = 1.0
    normalize: bool = False
    ties: str = "index"
    method: str = "top_k"

    def __post_init__(self):
        check_choice("RoutingConfig.router", self.router, ROUTERS)
        check_int("RoutingConfig.n_experts", self.n_experts)
        check_top_k("RoutingConfig.top_k", self.top_k, self.n_experts)
        if self.gating is None:
            object.__setattr__(self, "gating", DEFAULT_GATING[self.router])
        check_gating("RoutingConfig.gating", self.gating)
        check_capacity_factor("RoutingConfig.capacity_factor", self.capacity_factor)
        if not isinstance(self.normalize, bool):
            raise ValueError(f"RoutingConfig.normalize={self.normalize!r} must be True or False")
        if self.normalize and (self.router != "token_choice" or self.gating == "identity"):
            raise ValueError("RoutingConfig.normalize=True needs router 'token_choice' with "
                             f"gating 'softmax' or 'sigmoid' (got {self.router!r}, "
                             f"{self.gating!r})")
        check_choice("RoutingConfig.ties", self.ties, TIES)
        check_choice("RoutingConfig.method", self.method, METHODS)


def route(config: RoutingConfig, logits: jax.Array, *, axis_name: AxisName = None,
          threshold: RaceThreshold | None = None) -> tuple[MaskRouting, RaceInfo | None]:
    """Applies ``config.router`` to logits [B, L, E] -> (MaskRouting, RaceInfo for Expert Race
    else None). ``threshold``: Expert Race only; ``axis_name``: Expert Race and
    expert_choice_batch only."""
    c = config
    if logits.shape[-1] != c.n_experts:
        raise ValueError(f"logits last dim {logits.shape[-1]} != RoutingConfig.n_experts="
                         f"{c.n_experts}")
    if threshold is not None and c.router != "expert_race":
        raise ValueError(f"threshold is for router 'expert_race', not {c.router!r}")
    if axis_name is not None and c.router not in ("expert_race", "expert_choice_batch"):
        raise ValueError(f"axis_name is for routers 'expert_race' and 'expert_choice_batch', "
                         f"not {c.router!r}")
    if c.router == "token_choice":
        return token_choice(logits, c.top_k, gating=c.gating, normalize=c.normalize), None
    if c.router == "expert_race":
        return expert_race(logits, c.top_k, gating=c.gating, ties=c.ties, method=c.method,
                           axis_name=axis_name, threshold=threshold)
    per = "image" if c.router == "expert_choice_image" else "batch"
    return expert_choice(logits, c.top_k, per=per, gating=c.gating,
                         capacity_factor=c.capacity_factor, method=c.method,
                         axis_name=axis_name), None
