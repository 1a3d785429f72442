"""PEER, "Mixture of A Million Experts" (He 2024, arXiv 2407.04153), as a Flax NNX module.

N = n^2 single-neuron experts e_i(x) = sigma(<u_i, x>) v_i (u_i, v_i in R^D). For a token
x [D] and each head h = 1..H:

    q_h        = Norm_h( (x W_q)[h] ) = [q1_h ; q2_h]      W_q [D, H*Dk], q_h [Dk]
    s_h(i, j)  = <q1_h, K1_h[i]> + <q2_h, K2_h[j]>          K1_h, K2_h [n, Dk/2]
    (S_h, I_h) = top-k s_h                                  exact: sub-key top-k, then top-k
                                                            of the k x k candidate grid
    g_h        = softmax(S_h)                               over the head's k scores
    out        = sum_h sum_{t<k} g_h[t] sigma(<U[I_h[t]], x>) V[I_h[t]]

so every head's weights sum to 1 (the paper's router; lucidrains' PEER-pytorch defaults to
ReLU "non-competing" scores with top-1 per head instead). sigma is GELU (exact erf form, as
torch's nn.GELU) or ReLU. Norm_h is a per-head LayerNorm over Dk or the identity. PEER's query
BatchNorm is not offered: its statistics mix all tokens of the batch, including future tokens of
the same sequence (a causal leak), and break with padding.

Retrieval goes through ``seedjax.ops.product_key_topk`` (``pk_common.ProductKeyRetrieval``).
The experts (``expert_compute``): "gather" (default, the sparse compute the paper counts) takes
the down-projections <U[i], x> through ``seedjax.ops.row_dot`` and the weighted up-sum through
``seedjax.ops.weighted_value_sum`` (each token reads one bag of H*k rows); "dense" computes
x U^T for all N experts by one matmul, picks the H*k selected entries, and multiplies the
router-weighted activations, scattered into an [..., N] vector, by V. Same output (to float
rounding) at N / (H k) times the matmul FLOPs, but no row gathers and, in the backward pass,
no scatter-add of H*k rows per token into the [N, D] tables: on a CPU with N = 1,296 and H k =
96 a layer's forward + backward is 1.7x faster (0.23 vs 0.39 s for 2,048 tokens; the
retrieval's top-48 of 1,296 cells per head is then half of it). "dense" suits small N only.

Parameters (logical axes; optimizer labels): the retrieval's (``pk_common``) plus
    expert_down  U [N, D]   ("mem_rows", "mem_pdim")   weight_decay=False, lr_group="memory_values"
    expert_up    V [N, D]   ("mem_rows", "mem_dim")    weight_decay=False, lr_group="memory_values"

Init (not fixed by the paper; Meta's PEER variant initialises both tables like values):
sub-keys ~ U(+-1/sqrt(Dk/2)), W_q ~ N(0, 1/D), U and V ~ N(0, 1/D); stds overridable.

Shapes: x [..., D] -> [..., D] (compute dtype); ``retrieve(x)`` -> (raw scores [..., H, k]
float32, expert indices [..., H, k] int32 in [0, N)).
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.memory.pk_common import (ExactTopkFields, ProductKeyRetrieval, check_exact_topk,
                                         check_query_norm, flat_heads, positive_float_or_none,
                                         retrieval_flops)
from seedjax.nn.params import normal_init, param
from seedjax.ops import row_dot, weighted_value_sum
from seedjax.validation import check_choice

ACTIVATIONS = ("gelu", "relu")
EXPERT_COMPUTE = ("gather", "dense")
_ACT = {"gelu": lambda h: jax.nn.gelu(h, approximate=False), "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class PEERConfig(ExactTopkFields):
    """Validated PEER hyper-parameters (defaults: the paper's headline 1024^2 experts, 8 heads
    x top-16, Dk = 256).

    Fields:
      d_model: model width D (input, output and expert dim).
      n_keys: sub-keys per side n; N = n_keys**2 experts.
      heads: retrieval heads H (own query slice and sub-keys each; one shared expert pool).
      k_dim: query/key dim Dk per head (even; each half-key has Dk/2).
      topk: experts per head k (exact product-key top-k, per-side candidates min(k, n)).
      activation: sigma of the expert neuron, "gelu" | "relu".
      query_norm: "layernorm" (per head over Dk) | "none".
      query_init_std / expert_init_std: None -> d_model**-0.5 (W_q; both expert tables).
      norm_eps: LayerNorm epsilon of the query norm.
      implementation: ``seedjax.ops`` implementation ("auto": Pallas on TPU, XLA elsewhere).
      expert_compute: "gather" (row gathers of the selected experts) | "dense" (all N experts
        by matmul, the selected ones kept; see the module docstring).
    """

    d_model: int
    n_keys: int = 1024
    heads: int = 8
    k_dim: int = 256
    topk: int = 16
    activation: str = "gelu"
    query_norm: str = "layernorm"
    query_init_std: float | None = None
    expert_init_std: float | None = None
    norm_eps: float = 1e-5
    implementation: str = "auto"
    expert_compute: str = "gather"

    def __post_init__(self):
        owner = "PEERConfig"
        check_exact_topk(self, owner)
        check_choice(f"{owner}.activation", self.activation, ACTIVATIONS)
        check_choice(f"{owner}.expert_compute", self.expert_compute, EXPERT_COMPUTE)
        check_query_norm(owner, self.query_norm)
        for name in ("query_init_std", "expert_init_std"):
            positive_float_or_none(owner, name, getattr(self, name))

    @property
    def n_experts(self) -> int:
        return self.n_slots

    def forward_flops_per_token(self) -> dict[str, int]:
        """Query 2 D H Dk + sub-key scores 2 H n Dk + expert down 2 H k D and up 2 H k D (top-k,
        softmax, the activation and the query norm are not counted)."""
        out = retrieval_flops(self)
        out["mem_experts"] = 2 * 2 * self.heads * self.topk * self.d_model
        return out


class PEER(ProductKeyRetrieval):
    """PEER layer (see the module docstring). ``PEER(PEERConfig(...), rngs=...)``; ``dtype`` is
    the compute dtype of the query projection (parameters stay float32; scores, router weights
    and expert activations are float32)."""

    def __init__(self, config: PEERConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not isinstance(config, PEERConfig):
            raise ValueError(f"PEER needs a PEERConfig, got {type(config).__name__}")
        c = config
        self.config, self.dtype = c, dtype
        e_std = c.expert_init_std if c.expert_init_std is not None else c.d_model ** -0.5
        self._init_retrieval(c, rngs)
        self.expert_down = param(rngs, normal_init(e_std), (c.n_experts, c.d_model),
                                 ("mem_rows", "mem_pdim"), weight_decay=False,
                                 lr_group="memory_values")
        self.expert_up = param(rngs, normal_init(e_std), (c.n_experts, c.d_model),
                               ("mem_rows", "mem_dim"), weight_decay=False,
                               lr_group="memory_values")

    def router(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [..., D] -> (router weights g [..., H, k] float32, each head's summing to 1;
        expert indices [..., H, k] int32)."""
        scores, indices = self.retrieve(x)
        return jax.nn.softmax(scores, axis=-1), indices

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., D] -> [..., D] in the compute dtype."""
        c, dt = self.config, self.dtype
        weights, indices = flat_heads(*self.retrieve(x))                    # [..., H*k]
        dense = c.expert_compute == "dense"
        down = _dense_row_dot if dense else partial(row_dot, implementation=c.implementation)
        up = (_dense_weighted_sum if dense
              else partial(weighted_value_sum, implementation=c.implementation))
        h = down(self.expert_down[...], indices, x.astype(dt))             # <u_i, x>, f32
        coef = weights * _ACT[c.activation](h)
        y = up(self.expert_up[...], indices, coef.astype(jnp.float32))
        return y.astype(dt)


def _dense_row_dot(table: jax.Array, indices: jax.Array, x: jax.Array) -> jax.Array:
    """``row_dot`` by one matmul over all N rows: <table[indices[j]], x> for table [N, D],
    indices [..., J], x [..., D] -> [..., J] float32."""
    h_all = jnp.einsum("td,nd->tn", x.reshape(-1, x.shape[-1]), table.astype(x.dtype),
                       preferred_element_type=jnp.float32)    # [T, N]: 2-D, as seedjax/nn/linear
    h = jnp.take_along_axis(h_all, indices.reshape(h_all.shape[0], -1), axis=-1)
    return h.reshape(indices.shape)


def _dense_weighted_sum(table: jax.Array, indices: jax.Array, coef: jax.Array) -> jax.Array:
    """``weighted_value_sum`` by one matmul: sum_j coef[j] table[indices[j]] for table [N, D],
    indices / coef [..., J] -> [..., D] float32; coef is scattered into [..., N] first (repeated
    indices add)."""
    lead, n = indices.shape[:-1], table.shape[0]
    idx = indices.reshape(-1, indices.shape[-1])
    rows = jnp.arange(idx.shape[0])[:, None]
    mix = jnp.zeros((idx.shape[0], n), jnp.float32).at[rows, idx].add(
        coef.reshape(idx.shape).astype(jnp.float32))
    return (mix @ table.astype(jnp.float32)).reshape(*lead, table.shape[-1])
