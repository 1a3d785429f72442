"""Registry entry for the token-choice top-k MoE FFN (``seedjax.nn.moe.MoEFFN``).

``model.ffn = "moe"``: every block's FFN is a MoE. ``model.ffn_kwargs`` are the ``MoEConfig``
fields except ``d_model`` (taken from the model):

  * ``n_experts`` (int, 64), ``top_k`` (int, 8; <= n_experts), ``expert_dim`` (int | None,
    None = d_model // 2): routed SwiGLU experts.
  * ``n_shared_experts`` (int, 0), ``shared_dim`` (int | None, None = expert_dim).
  * ``router_score`` ("softmax" | "sigmoid", "softmax"), ``normalize_topk_weights`` (True).
  * ``load_balance_coef`` (0.01), ``z_loss_coef`` (0.0): weights of the aux losses
    ``moe_load_balance`` / ``moe_z_loss`` (per layer, summed over layers into the loss).
  * ``capacity_factor`` (None = dropless), ``grouped_matmul`` ("blocked" | "ragged_dot"),
    ``block_size`` (128).
  * ``router_init_std`` and ``expert_init_std`` (None here = ``model.init_std``, like the
    SwiGLU FFN), ``out_init_std`` (None here = the residual-branch output std,
    ``model.init_std / sqrt(2 n_layers)`` times the connection's scale).

FLOPs per token (``moe.flops_per_token``, read by ``seedjax.train.flops``): activated compute,
router 2 d E + experts k 6 d F + shared S 6 d F_s (= ``MoECost``).

Example: ``LMConfig(ffn="moe", ffn_kwargs={"n_experts": 16, "top_k": 4, "expert_dim": 64})``
has the activated FFN compute of a SwiGLU with mlp_dim 256.
"""
from __future__ import annotations

from flax import nnx

from seedjax.models.config import LMConfig
from seedjax.models.factories import branch_out_init_std
from seedjax.models.registry import register
from seedjax.nn.moe import MoEConfig, MoEFFN


@register("ffn", "moe")
def moe(cfg: LMConfig, layer_idx: int, *, rngs: nnx.Rngs, **kwargs):
    kwargs.setdefault("router_init_std", cfg.init_std)
    kwargs.setdefault("expert_init_std", cfg.init_std)
    kwargs.setdefault("out_init_std", branch_out_init_std(cfg))
    return MoEFFN(MoEConfig(d_model=cfg.d_model, **kwargs), dtype=cfg.compute_dtype, rngs=rngs)


def _moe_flops(cfg: LMConfig) -> dict[str, int]:
    return MoEConfig(d_model=cfg.d_model, **dict(cfg.ffn_kwargs)).forward_flops_per_token()


moe.flops_per_token = _moe_flops  # read by seedjax.train.flops
