"""``MoEFFN``: fine-grained token-choice top-k Mixture-of-Experts FFN (Switch/GShard routing,
OLMoE/DeepSeekMoE-style fine-grained and shared experts) as a drop-in for the SwiGLU FFN.

For x [..., d_model] flattened to T tokens:

    (w, I, p) = Router(x)                                    top-k weights / experts [T, k]
    y[t]      = sum_j kept[t, j] w[t, j] FFN_{I[t, j]}(x[t])  routed SwiGLU experts (width F)
              + Shared(x[t])                                 S always-on SwiGLU experts
    aux       = {"moe_load_balance": c_lb L_lb, "moe_z_loss": c_z L_z}

Dispatch groups (``MoEConfig.dispatch_groups``): under a ``jax.set_mesh`` mesh whose batch axes
("data" x "fsdp", G shards > 1) divide the leading batch dim of x [B, ..., d], the router and
experts run once per batch shard (``jax.shard_map`` over those axes; the router and expert
weights are gathered to every device, as FSDP does anyway), so each device sorts and
dispatches only its own tokens. One layout over the global batch (``"global"``, or no such
mesh) makes XLA gather every token onto every device: at fsdp = 8 each chip held the dispatch
buffers of 8x its tokens. The losses below are still over all T tokens.

S shared experts of width F_s are one SwiGLU of width S F_s (summing S SwiGLUs equals one
with their hidden units concatenated). kept = False only for assignments dropped by a
capacity (``capacity_factor``); dropless by default. L_lb and L_z (``router.py``) are over the
T tokens of the call; the aux dict holds only the losses with a nonzero coefficient (the LM
adds every entry to the loss, summed over layers; with both coefficients 0 it is empty).

Router logits, probabilities and combine weights are float32 (or wider); expert and shared
matmuls run in the module's compute ``dtype``; the output is in ``dtype``. See ``experts.py``
for the dispatch kernels ("blocked" / "ragged_dot" / capacity).

Parameters (logical axes; optimizer labels: all decayed, lr group "default"):
    router.w_router                [d_model, E]        ("embed", None)
    experts.w_gate, experts.w_up   [E, d_model, F]     ("expert", "embed", "mlp")
    experts.w_down                 [E, F, d_model]     ("expert", "mlp", "embed")
    shared.w_gate, shared.w_up     [d_model, S F_s]    ("embed", "mlp")     only if S > 0
    shared.w_down                  [S F_s, d_model]    ("mlp", "embed")     only if S > 0
Total parameters d E + 3 E d F + 3 S d F_s; activated FLOPs/token 2 d E + 6 k d F + 6 S d F_s
(``MoEConfig.forward_flops_per_token``).

Shapes: x [..., d_model] -> (y [..., d_model], aux {name: scalar float32});
``route(x)`` -> (weights [..., k] float32, experts [..., k] int32, probs [..., E] float32).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.mlp import SwiGLU
from seedjax.nn.moe.config import MoEConfig
from seedjax.nn.moe.experts import Experts
from seedjax.nn.moe.router import Router, Routing, load_balance_loss, z_loss
from seedjax.nn.partitioning import BATCH_AXES
from seedjax.ops.token_shards import active_mesh, run_shard_map

def dispatch_groups(x: jax.Array, mode: str = "batch_shards"):
    """(mesh, batch axes) the dispatch of x [B, ..., d] runs per shard of: the active mesh's
    batch axes when their shards (> 1) divide B (see the module docstring), else (None, ())."""
    mesh = active_mesh()
    if mode == "global" or mesh is None or x.ndim < 3:
        return None, ()
    axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
    g = math.prod(mesh.shape[a] for a in axes)
    if g == 1 or x.shape[0] % g:
        return None, ()
    return mesh, axes


class MoEFFN(nnx.Module):
    """``MoEFFN(MoEConfig(...), dtype=..., rngs=...)``; ``dtype`` is the compute dtype of the
    expert matmuls (parameters stay float32)."""

    def __init__(self, config: MoEConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not isinstance(config, MoEConfig):
            raise ValueError(f"MoEFFN needs a MoEConfig, got {type(config).__name__}")
        c = self.config = config
        self.dtype = dtype
        self.router = Router(c, rngs=rngs)
        self.experts = Experts(c, dtype=dtype, rngs=rngs)
        if c.n_shared_experts:
            in_std = c.expert_init_std if c.expert_init_std is not None else c.d_model ** -0.5
            width = c.n_shared_experts * c.shared_dim
            out_std = c.out_init_std if c.out_init_std is not None else c.shared_dim ** -0.5
            self.shared = SwiGLU(c.d_model, width, init_std=in_std, out_init_std=out_std,
                                 dtype=dtype, rngs=rngs)
        else:
            self.shared = None

    def _routing(self, x: jax.Array) -> Routing:
        d = self.config.d_model
        if x.shape[-1] != d:
            raise ValueError(f"MoEFFN input last dim {x.shape[-1]} != d_model={d}")
        return self.router(x.reshape(-1, d))

    def route(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [..., d_model] -> (weights [..., k] float32, experts [..., k] int32,
        probs [..., E] float32) (no capacity drops applied)."""
        r = self._routing(x)
        lead = x.shape[:-1]
        return (r.weights.reshape(*lead, -1), r.experts.reshape(*lead, -1),
                r.probs.reshape(*lead, -1))

    def _grouped(self, x: jax.Array) -> tuple[jax.Array, Routing]:
        """Routed experts per dispatch group: (y [T, d], routing with leading dim T)."""
        c = self.config

        def routed(router, experts, xs):     # xs: the group's tokens [..., d]
            flat = xs.reshape(-1, c.d_model)
            r = router(flat)
            return experts(flat, r.experts, r.weights), r

        mesh, axes = dispatch_groups(x, c.dispatch_groups)
        if mesh is None:
            return routed(self.router, self.experts, x)
        gd, state = nnx.split((self.router, self.experts))

        def per_shard(state, xl):            # xl: this shard's [B/G, ..., d]
            return routed(*nnx.merge(gd, state), xl)

        spec = jax.sharding.PartitionSpec(axes)
        return run_shard_map(mesh, per_shard, [state, x],
                             (jax.sharding.PartitionSpec(), spec), spec, check_vma=False)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, dict]:
        c = self.config
        if x.shape[-1] != c.d_model:
            raise ValueError(f"MoEFFN input last dim {x.shape[-1]} != d_model={c.d_model}")
        y, r = self._grouped(x)
        if self.shared is not None:
            y = y + self.shared(x).reshape(y.shape).astype(y.dtype)
        aux = {}
        if c.load_balance_coef > 0:
            aux["moe_load_balance"] = c.load_balance_coef * load_balance_loss(r.probs, r.experts)
        if c.z_loss_coef > 0:
            aux["moe_z_loss"] = c.z_loss_coef * z_loss(r.logits)
        return y.reshape(x.shape).astype(self.dtype), aux
