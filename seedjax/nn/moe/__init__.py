"""Token-choice top-k Mixture-of-Experts FFN: config, router, experts, layer."""
from seedjax.nn.moe.config import GROUPED_MATMULS, ROUTER_SCORES, MoEConfig
from seedjax.nn.moe.experts import Experts
from seedjax.nn.moe.layer import MoEFFN
from seedjax.nn.moe.router import Router, Routing, load_balance_loss, z_loss

__all__ = ["MoEConfig", "MoEFFN", "Router", "Routing", "Experts", "load_balance_loss", "z_loss",
           "ROUTER_SCORES", "GROUPED_MATMULS"]
