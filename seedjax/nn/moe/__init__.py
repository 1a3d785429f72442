"""Mixture-of-Experts: the token-choice top-k FFN (config, router, experts, layer) and the
experts over selected (token, expert) pairs for Expert Race / expert choice (``PairExperts``,
expert parallel over a mesh axis)."""
from seedjax.nn.moe.config import GROUPED_MATMULS, ROUTER_SCORES, MoEConfig
from seedjax.nn.moe.expert_parallel import expert_parallel_pairs
from seedjax.nn.moe.experts import Experts
from seedjax.nn.moe.layer import MoEFFN
from seedjax.nn.moe.pair_experts import (DISPATCHES, KINDS, PairExperts, PairExpertsConfig,
                                         PairSelection, select_pairs)
from seedjax.nn.moe.router import Router, Routing, load_balance_loss, z_loss

__all__ = ["MoEConfig", "MoEFFN", "Router", "Routing", "Experts", "load_balance_loss", "z_loss",
           "ROUTER_SCORES", "GROUPED_MATMULS", "PairExperts", "PairExpertsConfig",
           "PairSelection", "select_pairs", "expert_parallel_pairs", "KINDS", "DISPATCHES"]
