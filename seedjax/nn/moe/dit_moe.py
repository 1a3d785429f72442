"""The Race-DiT MoE FFN (arXiv 2503.16057, Fig. 2 / Fig. 12; notes C.2.2, C.4-C.6): a router
trunk shared by the gating head and the per-layer-regularisation head, any routing rule of
``routing_rules``, and sparse experts over the selected pairs (``pair_experts``).

For the adaLN-modulated FFN input h [B, L, d] (N = B L tokens):

    r      = GELU(h W_1 + b_1)                 router trunk [B, L, d]   (``trunk=False``: r = h)
    z      = r W_g + b_g                       router logits [B, L, E]
    (mask, weights) = route(z)                 ``router`` / ``gating`` / ``top_k`` (k), the
                                               Expert Race EMA threshold in eval mode
    y[t]   = sum_e weights[t, e] FFN_e(h[t])   selected pairs only; E experts of hidden
                                               F = dense_hidden / split (4d / s); k = s keeps
                                               the activated FLOPs of one dense MLP
    P      = r W_t + b_t                       PLR prediction [B, L, p p C] (training only;
                                               absent from the eval graph)

Auxiliary losses (weighted here, summed over layers by the DiT): ``similarity_coef`` x the
router similarity loss (``routing_stats``), ``balance_coef`` x the Switch loss
E sum_e f_e mean_t softmax(z)_te with f_e the fraction of selected pairs on e.

Static pair bound. Training with an exact rule (token choice, expert choice, Expert Race with
ties "index") selects at most ceil(c N k) pairs (c = the rule's capacity_factor, 1 for the
race), all computed. The Expert Race at inference (threshold) or with ties "ge" selects a
variable number: at most ``pair_capacity`` N k pairs are computed, in (expert, token) order,
and the stats report the rest as ``dropped`` (0 when the threshold matches the training K).

Statistics per layer (``FFNOut.stats``, float32 scalars unless noted): max_violation,
combination_usage, experts_per_token, tokens_without_expert (``routing_stats``), dropped,
tau / kth / excess (Expert Race), expert_load [E], experts_per_token_map [B, L] (allocation
maps over patches and time, Fig. 6).

Parameters (logical axes): trunk w [d, d] ("embed", "mlp"), gate w [d, E] ("embed", None),
target head w [d, p p C] (PLR), experts (``pair_experts``). Init: Xavier-uniform router and heads
(the community block's), zero biases.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.dit import Dense, FFNOut
from seedjax.nn.moe.pair_experts import (DISPATCHES, PairExperts, PairExpertsConfig,
                                         select_pairs)
from seedjax.nn.moe.racing import RaceThreshold
from seedjax.nn.moe.routing_rules import RoutingConfig, route
from seedjax.nn.moe.routing_stats import expert_load, router_similarity_loss, routing_stats
from seedjax.validation import check_choice, check_int, dataclass_from_dict


@dataclasses.dataclass(frozen=True)
class DiTMoEConfig:
    """Fields:
      d_model, target_dim (p p C of the PLR head): set by the DiT.
      router, n_experts, top_k, gating, capacity_factor, normalize, ties, method:
        ``routing_rules.RoutingConfig`` (gating None: the router's default, identity for
        Expert Race).
      split: hidden split s, each expert's hidden = dense_hidden / s (dense_hidden: 4 d).
      threshold: Expert Race only: keep the EMA threshold (decay, init) and route by it in eval
        mode; False: the batch race also at inference.
      similarity_coef, balance_coef: weights of the router similarity / Switch balance losses.
      plr: build the per-layer regularisation head.
      trunk: the router's Linear(d, d) + GELU trunk (False: logits straight from h, no PLR).
      dispatch: ``pair_experts.DISPATCHES``; pair_capacity >= 1: bound of the variable-size
        selections (module doc); block_size: rows per block of "blocked".
      expert_axis: None or a mesh axis (e.g. "expert"): under a mesh where it has size > 1 the
        experts run expert-parallel inside ``shard_map`` (``pair_experts``), each device
        computing its E / n experts' pairs; use the ``fsdp_tp_mem`` rules so the expert weights
        are stored sharded the same way.
    """

    d_model: int
    target_dim: int
    router: str = "expert_race"
    n_experts: int = 8
    top_k: int = 2
    split: int = 2
    dense_hidden: int | None = None
    gating: str | None = None
    capacity_factor: float = 1.0
    normalize: bool = False
    ties: str = "index"
    method: str = "top_k"
    threshold: bool = True
    threshold_decay: float = 0.95
    threshold_init: float = 1.0
    similarity_coef: float = 1e-4
    balance_coef: float = 0.0
    plr: bool = True
    trunk: bool = True
    dispatch: str = "blocked"
    pair_capacity: float = 2.0
    block_size: int = 128
    expert_axis: str | None = None

    def __post_init__(self):
        for name in ("d_model", "target_dim", "split", "block_size"):
            check_int(f"model.moe_kwargs.{name}", getattr(self, name))
        if self.dense_hidden is None:
            object.__setattr__(self, "dense_hidden", 4 * self.d_model)
        check_int("model.moe_kwargs.dense_hidden", self.dense_hidden)
        if self.dense_hidden % self.split:
            raise ValueError(f"model.moe_kwargs.split={self.split} must divide the dense hidden "
                             f"width {self.dense_hidden}")
        self.routing  # validates the routing fields
        check_choice("model.moe_kwargs.dispatch", self.dispatch, DISPATCHES)
        for name in ("threshold", "plr", "trunk"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"model.moe_kwargs.{name}={getattr(self, name)!r} must be "
                                 "True or False")
        if self.plr and not self.trunk:
            raise ValueError("model.moe_kwargs.plr=True needs trunk=True (the PLR head reads "
                             "the router trunk)")
        for name in ("similarity_coef", "balance_coef"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"model.moe_kwargs.{name}={v!r} must be a number >= 0")
        if not (isinstance(self.pair_capacity, (int, float)) and self.pair_capacity >= 1):
            raise ValueError(f"model.moe_kwargs.pair_capacity={self.pair_capacity!r} must be "
                             ">= 1")
        if self.threshold and self.router == "expert_race":
            RaceThreshold(decay=self.threshold_decay, init=self.threshold_init)  # validates

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **fixed) -> "DiTMoEConfig":
        return dataclass_from_dict(cls, d, "model.moe_kwargs", **fixed)

    @property
    def routing(self) -> RoutingConfig:
        try:
            return RoutingConfig(router=self.router, n_experts=self.n_experts, top_k=self.top_k,
                                 gating=self.gating, capacity_factor=self.capacity_factor,
                                 normalize=self.normalize, ties=self.ties, method=self.method)
        except ValueError as e:
            raise ValueError(str(e).replace("RoutingConfig.", "model.moe_kwargs.")) from None

    @property
    def expert_hidden(self) -> int:
        return self.dense_hidden // self.split

    @property
    def uses_threshold(self) -> bool:
        return self.threshold and self.router == "expert_race"

    def exact_pairs(self, n_tokens: int) -> int:
        """Pairs a training step selects at most: ceil(c N k) (c = 1 for the exact race)."""
        c = self.capacity_factor if self.router.startswith("expert_choice") else 1.0
        return min(n_tokens * self.n_experts, math.ceil(c * n_tokens * self.top_k))

    def forward_flops_per_token(self) -> dict[str, int]:
        """Activated forward matmul FLOPs per token (k experts on average)."""
        d = self.d_model
        out = {"router": 2 * d * self.n_experts + (2 * d * d if self.trunk else 0),
               "experts": self.top_k * 4 * d * self.expert_hidden}
        if self.plr:
            out["plr_head"] = 2 * d * self.target_dim
        return out


def switch_balance_loss(logits: jax.Array, mask: jax.Array) -> jax.Array:
    """E sum_e f_e P_e: f_e the fraction of selected pairs on expert e, P_e the mean softmax
    probability of e over tokens (1 when both are uniform)."""
    e = logits.shape[-1]
    p = jax.nn.softmax(logits.reshape(-1, e).astype(jnp.float32), axis=-1)
    return e * jnp.sum(expert_load(mask) * jnp.mean(p, axis=0))


class DiTMoE(nnx.Module):
    """``DiTMoE(DiTMoEConfig(...), dtype=..., rngs=...)(h [B, L, d], *, race_axis=None, t=None)
    -> FFNOut``; ``eval()`` (via the model) switches to threshold routing and drops the PLR head.
    """

    def __init__(self, config: DiTMoEConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        c = self.config = config
        self.use_running_average = False
        d = c.d_model
        self.trunk = Dense(d, d, ("embed", "mlp"), rngs=rngs) if c.trunk else None
        self.gate = Dense(d, c.n_experts, ("embed", None), rngs=rngs)
        self.target_head = Dense(d, c.target_dim, ("embed", None), rngs=rngs) if c.plr else None
        self.threshold = (RaceThreshold(decay=c.threshold_decay, init=c.threshold_init,
                                        ties=c.ties, method=c.method)
                          if c.uses_threshold else None)
        self.experts = PairExperts(PairExpertsConfig(
            d_model=d, n_experts=c.n_experts, hidden_dim=c.expert_hidden, kind="gelu_mlp",
            dispatch=c.dispatch, block_size=c.block_size, expert_axis=c.expert_axis),
            dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array, *, race_axis: Any = None, t: jax.Array | None = None
                 ) -> FFNOut:
        c = self.config
        b, n, d = h.shape
        infer = self.use_running_average
        r = (jax.nn.gelu(self.trunk(h).astype(jnp.float32), approximate=False)
             if self.trunk is not None else h.astype(jnp.float32))
        logits = self.gate(r).astype(jnp.float32)
        routing, info = route(c.routing, logits,
                              axis_name=race_axis if c.router in ("expert_race",
                                                                  "expert_choice_batch") else None,
                              threshold=self.threshold)
        exact = c.router != "expert_race" or (c.ties == "index"
                                               and not (infer and c.uses_threshold))
        n_pairs = (c.exact_pairs(b * n) if exact
                   else min(b * n * c.n_experts, math.ceil(c.pair_capacity * b * n * c.top_k)))
        sel = select_pairs(routing.mask, routing.weights, n_pairs)
        y = self.experts(h.reshape(b * n, d), sel.pairs).reshape(b, n, d)
        aux = {}
        if c.similarity_coef > 0 and not infer:
            aux["router_similarity"] = c.similarity_coef * router_similarity_loss(
                logits, routing.mask)
        if c.balance_coef > 0 and not infer:
            aux["balance"] = c.balance_coef * switch_balance_loss(logits, routing.mask)
        pred = (self.target_head(r).astype(jnp.float32)
                if self.target_head is not None and not infer else None)
        stats = {**routing_stats(routing.mask), "dropped": sel.dropped.astype(jnp.float32),
                 "expert_load": expert_load(routing.mask),
                 "experts_per_token_map": jnp.sum(routing.mask, -1, dtype=jnp.int32)}
        if info is not None:
            stats.update(kth=info.kth, excess=info.excess.astype(jnp.float32))
        if self.threshold is not None:
            stats["tau"] = self.threshold.tau[...]
        return FFNOut(y.astype(h.dtype), aux, pred, stats)
