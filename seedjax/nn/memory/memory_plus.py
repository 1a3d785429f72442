"""Memory+ ("Memory Layers at Scale", Berges et al. 2024, arXiv 2412.09764) as a Flax NNX module.

A PKM read followed by a SiLU-gated projection. For a token x [D] and each head h = 1..H:

    q_h        = ((x W_q + b_q)[h]) = [q1_h ; q2_h]         W_q [D, H*Dk], b_q [H*Dk]
    s_h(i, j)  = <q1_h, K1_h[i]> + <q2_h, K2_h[j]>          K1_h, K2_h [n, Dk/2]
    (S_h, I_h) = top-k s_h                                  exact product-key top-k
    y          = sum_h sum_t softmax(S_h)[t] V[I_h[t]]      V [n^2, Dv], shared by the heads
    out        = W2( y * silu(W1 x) )                       W1 [D, Dv], W2 [Dv, D]

``qk_norm=True`` (the paper's §3.1.4 stabiliser, absent from the released code, hence off by
default) L2-normalises every half-query and sub-key before scoring, so each side's score is a
cosine. The paper does not spell out its form; this parameter-free variant is our choice.
No query norm (the released code uses none) and no biases on W1 / W2.

Parameters (logical axes; optimizer labels): the retrieval's (``pk_common``: w_query, b_query,
sub_keys) plus
    values  [n^2, Dv]   ("mem_rows", "mem_dim")   weight_decay=False, lr_group="memory_values"
    w_in    W1 [D, Dv]  ("embed", "mem_dim")
    w_out   W2 [Dv, D]  ("mem_dim", "embed")
Memory+ trains the values at a fixed lr 1e-3 (base 1e-4): ``train.lr_multipliers.memory_values``.

Init (released code): sub-keys ~ U(+-1/sqrt(Dk)), values ~ N(0, Dv^-1/2) (std Dv^-0.5), W_q
xavier_uniform (b_q = 0), W1 and W2 ~ N(0, D^-1/2) (std D^-0.5); stds overridable.

Shapes: x [..., D] -> [..., D] (compute dtype); ``read(x)`` -> y [..., Dv] float32;
``retrieve(x)`` -> (raw scores [..., H, k] float32, slots [..., H, k] int32 in [0, n^2)).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.linear import project
from seedjax.nn.memory.pk_common import (ExactTopkFields, ProductKeyRetrieval, check_exact_topk,
                                         flat_heads, positive_float_or_none, retrieval_flops)
from seedjax.nn.params import normal_init, param
from seedjax.ops import weighted_value_sum
from seedjax.validation import check_int


@dataclasses.dataclass(frozen=True)
class MemoryPlusConfig(ExactTopkFields):
    """Validated Memory+ hyper-parameters (defaults: the released code's 4 heads x top-32,
    Dk = 512, over 1024^2 values as in ``pkplus_373m_1024k``).

    Fields:
      d_model: model width D.
      n_keys: sub-keys per side n; n_keys**2 value rows.
      heads: retrieval heads H (own query slice and sub-keys each; one shared value table).
      k_dim: query/key dim Dk per head (even; each half-key has Dk/2).
      v_dim: value dim Dv; None -> d_model.
      topk: values read per head k (exact product-key top-k).
      qk_norm: L2-normalise half-queries and sub-keys before scoring (default False).
      value_init_std / proj_init_std: None -> Dv**-0.5 (values) / d_model**-0.5 (W1, W2).
      norm_eps: epsilon of the qk normalisation.
      implementation: ``seedjax.ops`` implementation ("auto": Pallas on TPU, XLA elsewhere).
    """

    d_model: int
    n_keys: int = 1024
    heads: int = 4
    k_dim: int = 512
    v_dim: int | None = None
    topk: int = 32
    qk_norm: bool = False
    value_init_std: float | None = None
    proj_init_std: float | None = None
    norm_eps: float = 1e-6
    implementation: str = "auto"

    def __post_init__(self):
        owner = "MemoryPlusConfig"
        check_exact_topk(self, owner)
        if self.v_dim is None:
            object.__setattr__(self, "v_dim", self.d_model)
        check_int(f"{owner}.v_dim", self.v_dim)
        if not isinstance(self.qk_norm, bool):
            raise ValueError(f"{owner}.qk_norm={self.qk_norm!r} must be True or False")
        for name in ("value_init_std", "proj_init_std"):
            positive_float_or_none(owner, name, getattr(self, name))

    def forward_flops_per_token(self) -> dict[str, int]:
        """Query 2 D H Dk + sub-key scores 2 H n Dk + value read 2 H k Dv + W1 and W2
        2 * 2 D Dv (top-k, softmax and the gate product are not counted)."""
        out = retrieval_flops(self)
        out["mem_values"] = 2 * self.heads * self.topk * self.v_dim
        out["mem_out"] = 2 * 2 * self.d_model * self.v_dim
        return out


def _xavier_uniform(key, shape, dtype):
    bound = (6.0 / (shape[0] + shape[1])) ** 0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class MemoryPlus(ProductKeyRetrieval):
    """Memory+ layer (see the module docstring). ``MemoryPlus(MemoryPlusConfig(...),
    rngs=...)``; ``dtype`` is the compute dtype of the projections (parameters stay float32)."""

    def __init__(self, config: MemoryPlusConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not isinstance(config, MemoryPlusConfig):
            raise ValueError(f"MemoryPlus needs a MemoryPlusConfig, got {type(config).__name__}")
        c = config
        self.config, self.dtype = c, dtype
        v_std = c.value_init_std if c.value_init_std is not None else c.v_dim ** -0.5
        p_std = c.proj_init_std if c.proj_init_std is not None else c.d_model ** -0.5
        self._init_retrieval(c, rngs, query_init=_xavier_uniform, key_bound=c.k_dim ** -0.5,
                             query_bias=True)
        self.values = param(rngs, normal_init(v_std), (c.n_slots, c.v_dim),
                            ("mem_rows", "mem_dim"), weight_decay=False,
                            lr_group="memory_values")
        self.w_in = param(rngs, normal_init(p_std), (c.d_model, c.v_dim), ("embed", "mem_dim"))
        self.w_out = param(rngs, normal_init(p_std), (c.v_dim, c.d_model), ("mem_dim", "embed"))

    def read(self, x: jax.Array) -> jax.Array:
        """The PKM read y [..., Dv] (float32): per-head softmax weights, summed over heads."""
        weights, indices = flat_heads(*self.retrieve(x))
        return weighted_value_sum(self.values[...], indices, weights,
                                  implementation=self.config.implementation)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> W2(y * silu(W1 x)) [..., D] in the compute dtype."""
        dt = self.dtype
        y = self.read(x).astype(dt)
        gate = jax.nn.silu(project(x.astype(dt), self.w_in[...].astype(dt)))
        return project(y * gate, self.w_out[...].astype(dt))
