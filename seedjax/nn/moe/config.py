"""``MoEConfig``: validated hyper-parameters of the token-choice top-k MoE FFN (``MoEFFN``).

Defaults follow OLMoE (64 experts, top-8, expert inner width d_model/2, no shared expert,
load-balance coefficient 0.01), dropless. FLOPs are the activated compute (router + k routed
experts + shared experts), the ``seedjax.train.memory_cost.MoECost`` formula.
"""
from __future__ import annotations

import dataclasses
import math

from seedjax.validation import check_choice, check_int

ROUTER_SCORES = ("softmax", "sigmoid")
DISPATCH_GROUPS = ("batch_shards", "global")
GROUPED_MATMULS = ("blocked", "blocked_sliced", "ragged_dot")


def _is_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _check_positive_or_none(name: str, value) -> None:
    if value is not None and not (_is_number(value) and value > 0):
        raise ValueError(f"MoEConfig.{name}={value!r} must be a positive finite number or None")


def _check_nonnegative(name: str, value) -> None:
    if not (_is_number(value) and value >= 0):
        raise ValueError(f"MoEConfig.{name}={value!r} must be a finite number >= 0")


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """Fields:
      d_model: model width (input and output of the layer).
      n_experts: routed experts E.
      top_k: experts per token k, 1 <= k <= E.
      expert_dim: inner width F of each SwiGLU expert; None -> max(1, d_model // 2).
      n_shared_experts: always-on SwiGLU experts S (>= 0), each of width shared_dim.
      shared_dim: inner width F_s of a shared expert; None -> expert_dim.
      router_score: "softmax" over the E logits | "sigmoid" per logit.
      normalize_topk_weights: renormalise the k selected scores to sum 1 (with top_k=1 and
        softmax this makes every weight 1 and cuts the router out of the LM loss; Switch
        uses False there).
      load_balance_coef: weight of the Switch/GShard loss E * sum_e f_e P_e (0 disables it).
      z_loss_coef: weight of the router z-loss mean_t logsumexp(logits_t)^2 (0 disables it).
      capacity_factor: None = dropless; c > 0 gives each expert capacity
        min(T, ceil(c T k / E)) for T tokens per call (c < 1 always drops).
      grouped_matmul: dropless kernel, "blocked" (CPU-friendly; gathers each block's expert
        weights) | "blocked_sliced" (the same blocks, a loop reading each block's expert by
        a dynamic slice: no gathered weight copy; faster at decode, see experts.py) |
        "ragged_dot" (``jax.lax.ragged_dot``; a native grouped GEMM on TPU/GPU, dense on CPU).
      block_size: rows per block of the "blocked" kernel (shrunk to the next power of two
        >= T k / E when experts get fewer rows on average).
      dispatch_groups: "batch_shards" (default): under a ``jax.set_mesh`` mesh whose batch
        axes ("data" x "fsdp") split the leading batch dim, each batch shard sorts and
        dispatches its own tokens (per-device routing, as OLMoE / MaxText), so no device
        holds the global batch's dispatch buffers; without such a mesh there is one group.
        "global": one layout over all T tokens of the call wherever they live (under a
        batch-sharded mesh XLA then gathers every token onto every device). Dropless
        outputs are the same either way; with ``capacity_factor`` the capacity is per group.
      router_init_std / expert_init_std / out_init_std: None -> d_model**-0.5 (router and
        expert gate/up, fan-in) / F**-0.5 (expert down projections). Shared experts use
        expert_init_std and out_init_std too.
    """

    d_model: int
    n_experts: int = 64
    top_k: int = 8
    expert_dim: int | None = None
    n_shared_experts: int = 0
    shared_dim: int | None = None
    router_score: str = "softmax"
    normalize_topk_weights: bool = True
    load_balance_coef: float = 0.01
    z_loss_coef: float = 0.0
    capacity_factor: float | None = None
    grouped_matmul: str = "blocked"
    block_size: int = 128
    dispatch_groups: str = "batch_shards"
    router_init_std: float | None = None
    expert_init_std: float | None = None
    out_init_std: float | None = None

    def __post_init__(self):
        for name in ("d_model", "n_experts", "top_k", "block_size"):
            check_int(f"MoEConfig.{name}", getattr(self, name))
        if self.expert_dim is None:
            object.__setattr__(self, "expert_dim", max(1, self.d_model // 2))
        check_int("MoEConfig.expert_dim", self.expert_dim)
        check_int("MoEConfig.n_shared_experts", self.n_shared_experts, minimum=0)
        if self.shared_dim is None:
            object.__setattr__(self, "shared_dim", self.expert_dim)
        check_int("MoEConfig.shared_dim", self.shared_dim)
        if self.top_k > self.n_experts:
            raise ValueError(f"MoEConfig.top_k={self.top_k} must be in [1, n_experts="
                             f"{self.n_experts}]")
        check_choice("MoEConfig.router_score", self.router_score, ROUTER_SCORES)
        check_choice("MoEConfig.grouped_matmul", self.grouped_matmul, GROUPED_MATMULS)
        check_choice("MoEConfig.dispatch_groups", self.dispatch_groups, DISPATCH_GROUPS)
        if not isinstance(self.normalize_topk_weights, bool):
            raise ValueError(f"MoEConfig.normalize_topk_weights={self.normalize_topk_weights!r} "
                             "must be True or False")
        _check_nonnegative("load_balance_coef", self.load_balance_coef)
        _check_nonnegative("z_loss_coef", self.z_loss_coef)
        if self.capacity_factor is not None and not (
                _is_number(self.capacity_factor) and self.capacity_factor > 0):
            raise ValueError(f"MoEConfig.capacity_factor={self.capacity_factor!r} must be None "
                             "(dropless) or a finite number > 0")
        for name in ("router_init_std", "expert_init_std", "out_init_std"):
            _check_positive_or_none(name, getattr(self, name))

    def capacity(self, n_tokens: int) -> int | None:
        """Rows per expert for ``n_tokens`` tokens: min(T, ceil(c T k / E)); None if dropless.
        (An expert gets at most one of a token's k distinct choices, so T rows never drop.)"""
        if self.capacity_factor is None:
            return None
        c = math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)
        return max(1, min(n_tokens, c))

    def forward_flops_per_token(self) -> dict[str, int]:
        """Activated forward matmul FLOPs per token (2 per multiply-add): router 2 d E, routed
        experts k 6 d F, shared experts S 6 d F_s (omitted when S = 0). Padding rows of the
        blocked kernel and unused capacity slots are not counted (model FLOPs)."""
        d = self.d_model
        out = {"router": 2 * d * self.n_experts,
               "experts": self.top_k * 6 * d * self.expert_dim}
        if self.n_shared_experts:
            out["shared"] = self.n_shared_experts * 6 * d * self.shared_dim
        return out
