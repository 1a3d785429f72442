"""Product Key Memory (PKM; Lample et al. 2019, arXiv 1907.05242) as a Flax NNX module.

For a token x [d_model] and each head h = 1..H:

    q_h      = Norm_h( (x W_q)[h] )                        W_q [d_model, H*Dk], q_h [Dk]
    q_h      = [q1_h ; q2_h]                                halves of Dk/2
    s_h(i,j) = <q1_h, K1_h[i]> + <q2_h, K2_h[j]>            K1_h, K2_h [n, Dk/2], N = n^2 slots
    (S_h, I_h) = top-k_{(i,j)} s_h(i,j)                     exact two-stage product-key top-k
    w_h      = softmax(S_h)  (over the k selected scores; or raw S_h with score_fn="none")
    y        = sum_h sum_t w_h[t] * V[I_h[t]]               V [N, Dv], shared by all heads
    out      = y W_o  if Dv != d_model else y               W_o [Dv, d_model]

Norm_h is a LayerNorm over each head's Dk query features (gain/bias per feature), or the
identity. PKM's query BatchNorm is deliberately not offered: its batch statistics include
future tokens of the same sequence (a causal leak) and break with padding.

Retrieval and the value read go through ``seedjax.ops`` (``product_key_topk``,
``weighted_value_sum``), which switch between the XLA reference and Pallas kernels via
``PKMConfig.implementation``. Scores, the query norm and the value accumulation run in float32
(or wider); projections run in the module's compute ``dtype``.

Parameters (logical axes; optimizer labels):
    w_query      [d_model, H*Dk]       ("embed", "mem_query")
    query_scale, query_bias [H*Dk]     ("mem_query",)                weight_decay=False
    sub_keys     [H, 2, n, Dk/2]       ("mem_heads", None, "mem_keys", "mem_kdim")
    values       [N, Dv]               ("mem_rows", "mem_dim")       weight_decay=False,
                                                                     lr_group="memory_values"
    w_out        [Dv, d_model]         ("mem_dim", "embed")          only when Dv != d_model

PKM trains the values with their own Adam at a constant lr 1e-3; here they form the lr group
``memory_values``, so ``train.lr_multipliers.memory_values`` sets their learning rate relative
to the base one (e.g. base 1e-4 and multiplier 10 reproduce 1e-3; the multiplier follows the
base schedule).

Init (PKM reference code): sub-keys ~ U(+-1/sqrt(Dk/2)), values ~ N(0, 1/Dv), query weights
~ N(0, 1/d_model) (an nn.Linear-sized fan-in init), output projection ~ N(0, 1/Dv); each std
is overridable.

Shapes: x [..., d_model] -> [..., d_model]; ``retrieve(x)`` -> (scores [..., H, k] raw
pre-softmax float32, indices [..., H, k] int32 in [0, N)).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.linear import project
from seedjax.nn.memory.pk_common import (QUERY_NORMS, ProductKeyRetrieval,  # noqa: F401
                                         check_implementation_field, check_k_dim_and_keys,
                                         check_query_norm, positive_float_or_none, uniform_init)
from seedjax.nn.params import normal_init, param
from seedjax.ops import weighted_value_sum
from seedjax.ops.sharded_lookup import check_table_sharding, sharded_embedding_bag
from seedjax.validation import check_int

SCORE_FNS = ("softmax", "none")


@dataclasses.dataclass(frozen=True)
class PKMConfig:
    """Validated PKM hyper-parameters (defaults: the PKM reference code, 4 heads x top-32 over
    512^2 = 262,144 slots with Dk = 256).

    Fields:
      d_model: model width (input and output of the layer).
      n_keys: sub-keys per side n; the memory has N = n_keys**2 slots.
      heads: retrieval heads H (own query slice and sub-keys each; one shared value table).
      k_dim: query/key dim Dk per head (even; each half-key has Dk/2).
      v_dim: value dim Dv; None -> d_model. If != d_model, a Linear(Dv -> d_model) follows.
      topk: slots read per head k.
      topk_side: per-side candidates k_s (k_s <= n_keys, topk <= k_s**2); None ->
        min(topk, n_keys) (PKM uses k for both stages). Retrieval is exact when
        topk <= k_s or k_s == n_keys; k_s < topk is the top of the k_s x k_s candidate grid.
      query_norm: "layernorm" (per head over Dk) | "none".
      score_fn: "softmax" over the k selected scores (PKM) | "none" (raw scores, UltraMem).
      value_init_std / query_init_std / out_init_std: None -> Dv**-0.5 / d_model**-0.5 /
        Dv**-0.5.
      norm_eps: LayerNorm epsilon of the query norm.
      implementation: kernel implementation for ``seedjax.ops`` (one of ``IMPLEMENTATIONS``;
        default "auto": the Pallas kernels on TPU, XLA on CPU and GPU).
      table_sharding: None (plain gather) | "psum" | "all_to_all": read the value table
        row-sharded over mesh axis ``table_axis`` with ``seedjax.ops.sharded_lookup`` (under
        the ``jax.set_mesh`` context); table_capacity_factor: all_to_all capacity (None =
        worst case, exact).
    """

    d_model: int
    n_keys: int = 512
    heads: int = 4
    k_dim: int = 256
    v_dim: int | None = None
    topk: int = 32
    topk_side: int | None = None
    query_norm: str = "layernorm"
    score_fn: str = "softmax"
    value_init_std: float | None = None
    query_init_std: float | None = None
    out_init_std: float | None = None
    norm_eps: float = 1e-5
    implementation: str = "auto"
    table_sharding: str | None = None
    table_axis: str = "mem"
    table_capacity_factor: float | None = None

    def __post_init__(self):
        check_table_sharding("PKMConfig", self.table_sharding, self.table_axis,
                             self.table_capacity_factor)
        for name in ("d_model", "n_keys", "heads", "k_dim", "topk"):
            check_int(f"PKMConfig.{name}", getattr(self, name))
        if self.v_dim is None:
            object.__setattr__(self, "v_dim", self.d_model)
        check_int("PKMConfig.v_dim", self.v_dim)
        if self.topk_side is None:
            object.__setattr__(self, "topk_side", min(self.topk, self.n_keys))
        check_int("PKMConfig.topk_side", self.topk_side)
        check_k_dim_and_keys("PKMConfig", self.k_dim, self.n_keys)
        if self.topk_side > self.n_keys:
            raise ValueError(f"PKMConfig.topk_side={self.topk_side} must be <= n_keys="
                             f"{self.n_keys}")
        if self.topk > self.topk_side ** 2:
            raise ValueError(f"PKMConfig.topk={self.topk} must be <= topk_side**2="
                             f"{self.topk_side ** 2} (topk_side={self.topk_side})")
        check_query_norm("PKMConfig", self.query_norm)
        if self.score_fn not in SCORE_FNS:
            raise ValueError(f"PKMConfig.score_fn={self.score_fn!r} is not one of {SCORE_FNS}")
        for name in ("value_init_std", "query_init_std", "out_init_std", "norm_eps"):
            positive_float_or_none("PKMConfig", name, getattr(self, name))
        check_implementation_field("PKMConfig", self.implementation)

    @property
    def n_slots(self) -> int:
        return self.n_keys * self.n_keys

    @property
    def has_out_proj(self) -> bool:
        return self.v_dim != self.d_model

    def forward_flops_per_token(self) -> dict[str, int]:
        """Forward matmul FLOPs per token (2 per multiply-add), by part: query projection
        2 d H Dk, sub-key scores 2 H n Dk (both sides), value read 2 H k Dv, output projection
        2 Dv d. Top-k, softmax, the query norm and the H k_s^2 candidate additions are not
        counted (like norms and elementwise ops in ``seedjax.train.flops``)."""
        d, h, dk, dv = self.d_model, self.heads, self.k_dim, self.v_dim
        out = {"mem_query": 2 * d * h * dk, "mem_keys": 2 * h * self.n_keys * dk,
               "mem_values": 2 * h * self.topk * dv}
        if self.has_out_proj:
            out["mem_out"] = 2 * dv * d
        return out


class ProductKeyMemory(ProductKeyRetrieval):
    """PKM layer (see the module docstring). ``ProductKeyMemory(PKMConfig(...), rngs=...)``;
    ``dtype`` is the compute dtype of the projections (parameters stay float32). ``query`` and
    ``retrieve`` come from ``pk_common.ProductKeyRetrieval``."""

    def __init__(self, config: PKMConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not isinstance(config, PKMConfig):
            raise ValueError(f"ProductKeyMemory needs a PKMConfig, got {type(config).__name__}")
        c = config
        self.config, self.dtype = c, dtype
        v_std = c.value_init_std if c.value_init_std is not None else c.v_dim ** -0.5
        self._init_retrieval(c, rngs)
        self.values = param(rngs, normal_init(v_std), (c.n_slots, c.v_dim), ("mem_rows", "mem_dim"),
                            weight_decay=False, lr_group="memory_values")
        if c.has_out_proj:
            o_std = c.out_init_std if c.out_init_std is not None else c.v_dim ** -0.5
            self.w_out = param(rngs, normal_init(o_std), (c.v_dim, c.d_model), ("mem_dim", "embed"))
        else:
            self.w_out = None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., d_model] -> [..., d_model] in the compute dtype."""
        c, dt = self.config, self.dtype
        scores, indices = self.retrieve(x)
        weights = jax.nn.softmax(scores, axis=-1) if c.score_fn == "softmax" else scores
        lead = indices.shape[:-2]
        # all heads read the one table: one bag of H*k (index, weight) pairs per token
        if c.table_sharding is None:
            y = weighted_value_sum(self.values[...], indices.reshape(*lead, -1),
                                   weights.reshape(*lead, -1), implementation=c.implementation)
        else:
            y = sharded_embedding_bag(self.values[...], indices.reshape(*lead, -1),
                                      weights.reshape(*lead, -1), scheme=c.table_sharding,
                                      axis=c.table_axis, capacity_factor=c.table_capacity_factor,
                                      implementation=c.implementation)
        y = y.astype(dt)
        if self.w_out is not None:
            y = project(y, self.w_out[...].astype(dt))
        return y
