"""E stacked experts applied to selected (token, expert) pairs: the sparse expert layer of
Expert Race and expert choice (Race-DiT, arXiv 2503.16057; notes C.2.2, C.4, C.10, C.15), where
a token gets 0..E experts and an expert 0..T tokens.

Experts (``kind``), hidden width F, parameters float32, matmuls in the compute ``dtype``:

    "gelu_mlp"  FFN_e(x) = W2_e GELU_tanh(W1_e x + b1_e) + b2_e    (Race-DiT / DiT; biases on
                W1 [E, d, F], b1 [E, F], W2 [E, F, d], b2 [E, d]     by default, ``use_bias``)
    "swiglu"    FFN_e(x) = (silu(x W_gate[e]) * (x W_up[e])) W_down[e]   (``experts.py``'s
                W_gate, W_up [E, d, F], W_down [E, F, d]                  weights and code)

Pairs (``routing_rules.Pairs``, from ``selected_pairs`` or ``PairExperts.select``): P static;
token [P], expert [P], weight [P] float32, valid [P], group_sizes [E]. Contract: the valid
pairs come first, sorted by expert (non-decreasing), group_sizes[e] of them on expert e; padding
pairs (valid False) after them are ignored whatever their fields hold. Output, float32:

    y[t] = sum_{p : valid_p, token_p = t} weight_p FFN_{expert_p}(x[t])        y [T, d]

(a token with no pair gets y[t] = 0: the residual path carries it). Unselected (token, expert)
combinations are never computed, except by "dense_masked".

Dispatch (``dispatch``):
* "blocked" (default): ``experts.blocked_rows``, the same layout code as the token-choice
  ``Experts``: each expert's pairs padded to whole blocks of b rows (b = ``block_size`` shrunk
  to the next power of two >= P / E), G = floor((P + min(E, P)(b - 1)) / b) blocks, each block
  multiplied by its expert's weights. Rows: P + at most min(E, P)(b - 1) padding.
* "ragged_dot": the P pairs as rows of ``jax.lax.ragged_dot`` with int32 group sizes [E];
  rows past sum(group_sizes) (padding pairs) are zeroed after every grouped matmul, since the
  TPU lowering leaves them undefined. On CPU (jax 0.10.2) XLA lowers it to a dense masked
  matmul over all E experts: correct but slow; it is the grouped GEMM of TPU/GPU.
* "dense_masked": every expert on every token, then the [T, E] weights mask and combine (the
  public Race-DiT code's way): the reference and a benchmark arm, E/k times the FLOPs.
``dense_masked(x, weights [T, E])`` is that computation for dense weights (0 = unselected).
Measured forward + backward on a shared 2-core CPU (``results/bench/moe.md``; d = 256,
T = 2048, E = 32, k = 2, F = 512, Expert Race pairs): dense 4d GELU MLP 201 ms, "blocked"
454 ms, "dense_masked" 3347 ms, "ragged_dot" 5862 ms.

Static bound. P is fixed at trace time: an exact Expert Race or expert/token choice selects
K = T k pairs (T = B L tokens, k experts per token on average); the ``ties="ge"`` race and the
inference threshold select a variable number. ``capacity_factor`` c >= 1 gives
P = min(T E, ceil(c T k)) (``PairExpertsConfig.n_pairs``); ``select`` keeps the first P
selected pairs in (expert, token) order and returns the number dropped beyond them.

Expert parallel (``expert_axis`` or ``PairExperts.expert_parallel``; ``expert_parallel.py``):
the E experts split over a mesh axis of n devices, each computing only its E/n experts' pairs
inside ``jax.shard_map``, combined by psum (or psum_scatter to token shards).

FLOPs per selected pair (forward, matmuls): gelu_mlp 4 d F, swiglu 6 d F (``flops_per_pair``);
with F = 4d/s and k = s a token costs one dense 4d-wide GELU MLP on average (C.2.2, C.10).

Parameters (logical axes; weights decayed, biases not; lr group "default"):
    gelu_mlp: w1 [E, d, F] ("expert", "embed", "mlp"), b1 [E, F] ("expert", "mlp"),
              w2 [E, F, d] ("expert", "mlp", "embed"), b2 [E, d] ("expert", "embed")
    swiglu:   w_gate, w_up [E, d, F] ("expert", "embed", "mlp"), w_down [E, F, d]
Init: W1 / W_gate / W_up N(0, init_std^2) (default d^-0.5), W2 / W_down N(0, out_init_std^2)
(default F^-0.5), biases 0.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.moe import experts as ex
from seedjax.nn.moe.expert_parallel import check_expert_parallel, expert_parallel_pairs
from seedjax.nn.moe.routing_rules import Pairs, check_capacity_factor, selected_pairs
from seedjax.nn.params import constant_init, normal_init, param
from seedjax.ops.token_shards import active_mesh
from seedjax.validation import check_choice, check_int

KINDS = ("gelu_mlp", "swiglu")
DISPATCHES = ("blocked", "blocked_sliced", "ragged_dot", "dense_masked")
_PARAMS = {"gelu_mlp": ("w1", "b1", "w2", "b2"), "swiglu": ("w_gate", "w_up", "w_down")}


def _positive_or_none(field: str, value) -> None:
    ok = value is None or (not isinstance(value, bool) and isinstance(value, (int, float))
                           and math.isfinite(value) and value > 0)
    if not ok:
        raise ValueError(f"{field}={value!r} must be a positive finite number or None")


@dataclasses.dataclass(frozen=True)
class PairExpertsConfig:
    """Fields:
      d_model: d, input and output width. n_experts: E >= 1. hidden_dim: F, each expert's
        hidden width (Race-DiT: 4 d / s for hidden split s).
      kind: one of KINDS ("gelu_mlp" | "swiglu").
      dispatch: one of DISPATCHES ("blocked" | "blocked_sliced" | "ragged_dot" |
        "dense_masked"; see ``experts.py`` for the first three).
      use_bias: gelu_mlp's b1, b2; None -> True for gelu_mlp (swiglu has no biases).
      capacity_factor: c >= 1, the static pair bound P = min(T E, ceil(c T k)) of ``select``.
      block_size: rows per block of "blocked" (shrunk to a power of two >= P / E).
      init_std / out_init_std: None -> d^-0.5 / F^-0.5.
      expert_axis: None, or a mesh axis name: ``__call__`` runs expert-parallel over that axis
        when a ``jax.set_mesh`` mesh with it (size > 1) is active (E divisible by its size).
      expert_capacity_factor: expert parallel only: None = each device takes up to all P pairs
        (exact); f >= 1: at most min(P, ceil(f P / n)) pairs per device, the rest dropped.
    """

    d_model: int
    n_experts: int
    hidden_dim: int
    kind: str = "gelu_mlp"
    dispatch: str = "blocked"
    use_bias: bool | None = None
    capacity_factor: float = 1.0
    block_size: int = 128
    init_std: float | None = None
    out_init_std: float | None = None
    expert_axis: str | None = None
    expert_capacity_factor: float | None = None

    def __post_init__(self):
        for name in ("d_model", "n_experts", "hidden_dim", "block_size"):
            check_int(f"PairExpertsConfig.{name}", getattr(self, name))
        check_choice("PairExpertsConfig.kind", self.kind, KINDS)
        check_choice("PairExpertsConfig.dispatch", self.dispatch, DISPATCHES)
        if self.use_bias is None:
            object.__setattr__(self, "use_bias", self.kind == "gelu_mlp")
        if not isinstance(self.use_bias, bool):
            raise ValueError(f"PairExpertsConfig.use_bias={self.use_bias!r} must be True, False "
                             "or None")
        if self.use_bias and self.kind == "swiglu":
            raise ValueError("PairExpertsConfig.use_bias=True is for kind 'gelu_mlp'; 'swiglu' "
                             "experts have no biases")
        check_capacity_factor("PairExpertsConfig.capacity_factor", self.capacity_factor)
        for name in ("init_std", "out_init_std"):
            _positive_or_none(f"PairExpertsConfig.{name}", getattr(self, name))
        check_expert_parallel("PairExpertsConfig", self.expert_axis,
                              self.expert_capacity_factor)

    def n_pairs(self, n_tokens: int, top_k: int) -> int:
        """Static pair bound P = min(T E, ceil(capacity_factor T k)) for T tokens."""
        check_int("n_tokens", n_tokens, minimum=0)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= \
                self.n_experts:
            raise ValueError(f"top_k={top_k!r} must be an integer in [1, n_experts="
                             f"{self.n_experts}]")
        return min(n_tokens * self.n_experts, math.ceil(self.capacity_factor * n_tokens * top_k))

    def flops_per_pair(self) -> int:
        """Forward matmul FLOPs of one selected pair: 4 d F (gelu_mlp) or 6 d F (swiglu)."""
        return (4 if self.kind == "gelu_mlp" else 6) * self.d_model * self.hidden_dim


class PairSelection(NamedTuple):
    pairs: Pairs
    dropped: jax.Array  # int32: selected pairs beyond the static bound P (not computed)


# ---- pure functions of (config, params {name: [E_local, ...] array}) -------------------------

def expert_ffn(kind: str, p: dict, rows: jax.Array, lin, dtype) -> jax.Array:
    """The ``kind`` FFN of the experts in ``p`` on a layout's rows with its grouped ``lin``."""
    if kind == "swiglu":
        return ex.swiglu_ffn(p, rows, lin, dtype)
    cast = lambda name: None if name not in p else p[name].astype(dtype)
    h = jax.nn.gelu(lin(rows, cast("w1"), cast("b1")), approximate=True)
    return lin(h, cast("w2"), cast("b2"))


def pairs_to_dense(pairs: Pairs, n_tokens: int, n_experts: int) -> jax.Array:
    """Dense combine weights [T, E] float32: the sum of the valid pairs' weights per cell."""
    w = jnp.where(pairs.valid, pairs.weight, 0).astype(jnp.promote_types(pairs.weight.dtype,
                                                                         jnp.float32))
    return jnp.zeros((n_tokens, n_experts), w.dtype).at[pairs.token, pairs.expert].add(w)


def pair_layout(pairs: Pairs, n_experts: int, dispatch: str, block_size: int) -> ex.Layout:
    """Rows of the ``dispatch`` layout ("blocked" / "blocked_sliced" | "ragged_dot") for
    expert-sorted pairs;
    assign_row / assign_kept are per pair [P]."""
    n = pairs.token.shape[0]
    if dispatch == "ragged_dot":
        r = ex.ragged_rows(pairs.group_sizes, n)
    else:
        r = ex.blocked_rows(pairs.expert.astype(jnp.int32), pairs.group_sizes.astype(jnp.int32),
                            n_experts, ex.block_rows(block_size, n, n_experts))
    return ex.Layout(pairs.token[r.row_src], r.row_valid, r.slot_row, pairs.valid, r.groups)


def combine_pairs(rows: jax.Array, layout: ex.Layout, weight: jax.Array, token: jax.Array,
                  n_tokens: int) -> jax.Array:
    """rows [R, d] -> y [T, d] (float32+): y[token_p] += weight_p rows[assign_row_p] over the
    kept pairs (scatter-add; a masked-out row never reaches y, even if it holds NaN)."""
    dt = jnp.promote_types(weight.dtype, jnp.float32)
    kept = layout.assign_kept[:, None]
    contrib = jnp.where(kept, weight.astype(dt)[:, None] * rows[layout.assign_row].astype(dt), 0)
    return jnp.zeros((n_tokens, rows.shape[-1]), dt).at[token].add(contrib)


def dense_masked_forward(config: PairExpertsConfig, params: dict, x: jax.Array,
                         weights: jax.Array, dtype) -> jax.Array:
    """Every expert of ``params`` on every token x [T, d], combined with weights [T, E]."""
    out = expert_ffn(config.kind, params, x.astype(dtype), ex.stacked_linear, dtype)  # [E, T, d]
    w = weights.astype(jnp.promote_types(weights.dtype, jnp.float32))
    return jnp.einsum("te,etd->td", w, out.astype(w.dtype))


def pair_forward(config: PairExpertsConfig, params: dict, x: jax.Array, pairs: Pairs,
                 dtype) -> jax.Array:
    """y [T, d] float32 for x [T, d] and pairs over the experts of ``params`` (E = their
    leading dim), with ``config.dispatch``."""
    n_tokens, d = x.shape
    n_experts = params[_PARAMS[config.kind][0]].shape[0]
    if config.dispatch == "dense_masked":
        return dense_masked_forward(config, params, x,
                                    pairs_to_dense(pairs, n_tokens, n_experts), dtype)
    if pairs.token.shape[0] == 0:
        return jnp.zeros((n_tokens, d), jnp.promote_types(pairs.weight.dtype, jnp.float32))
    layout = pair_layout(pairs, n_experts, config.dispatch, config.block_size)
    rows = ex.apply_rows(lambda r, lin: expert_ffn(config.kind, params, r, lin, dtype),
                         ex.dispatch(x.astype(dtype), layout), config.dispatch, layout.groups)
    return combine_pairs(rows, layout, pairs.weight, pairs.token, n_tokens)


def select_pairs(mask: jax.Array, weights: jax.Array, n_pairs: int) -> PairSelection:
    """``routing_rules.selected_pairs`` plus the number of selected pairs it cut (int32)."""
    pairs = selected_pairs(mask, weights, n_pairs)
    dropped = jnp.sum(mask, dtype=jnp.int32) - jnp.sum(pairs.valid, dtype=jnp.int32)
    return PairSelection(pairs, dropped)


# ---- module -----------------------------------------------------------------------------------

class PairExperts(nnx.Module):
    """``PairExperts(PairExpertsConfig(...), dtype=jnp.float32, rngs=nnx.Rngs(...))``;
    ``dtype`` is the compute dtype of the expert matmuls (parameters stay float32).

    ``(x [..., d], pairs) -> y [..., d]`` float32 (tokens flattened: pairs index the T rows);
    ``dense_masked(x [..., d], weights [..., E])`` the all-experts reference;
    ``select(mask [..., E], weights [..., E], top_k)`` -> PairSelection with P =
    ``config.n_pairs(T, top_k)``; ``expert_parallel(x, pairs, ...)`` -> (y, dropped).
    """

    def __init__(self, config: PairExpertsConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not isinstance(config, PairExpertsConfig):
            raise ValueError(f"PairExperts needs a PairExpertsConfig, got "
                             f"{type(config).__name__}")
        c = self.config = config
        self.dtype = dtype
        e, d, f = c.n_experts, c.d_model, c.hidden_dim
        in_std = c.init_std if c.init_std is not None else d ** -0.5
        out_std = c.out_init_std if c.out_init_std is not None else f ** -0.5
        if c.kind == "swiglu":
            self.w_gate, self.w_up, self.w_down = ex.swiglu_params(rngs, e, d, f, in_std, out_std)
            return
        self.w1 = param(rngs, normal_init(in_std), (e, d, f), ("expert", "embed", "mlp"))
        self.w2 = param(rngs, normal_init(out_std), (e, f, d), ("expert", "mlp", "embed"))
        if c.use_bias:
            zero = constant_init(0.0)
            self.b1 = param(None, zero, (e, f), ("expert", "mlp"), weight_decay=False)
            self.b2 = param(None, zero, (e, d), ("expert", "embed"), weight_decay=False)

    def expert_params(self) -> dict:
        """{name: float32 array [E, ...]} of this kind's parameters."""
        return {n: getattr(self, n)[...] for n in _PARAMS[self.config.kind] if hasattr(self, n)}

    def _tokens(self, x: jax.Array) -> jax.Array:
        if x.ndim < 1 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"PairExperts input shape {x.shape} must be [..., d_model="
                             f"{self.config.d_model}]")
        return x.reshape(-1, self.config.d_model)

    def _check_pairs(self, pairs: Pairs) -> None:
        n = pairs.token.shape
        if len(n) != 1 or any(a.shape != n for a in (pairs.expert, pairs.weight, pairs.valid)):
            raise ValueError("pairs.token/expert/weight/valid must share one shape [P], got "
                             f"{[tuple(a.shape) for a in pairs[:4]]}")
        if pairs.group_sizes.shape != (self.config.n_experts,):
            raise ValueError(f"pairs.group_sizes shape {pairs.group_sizes.shape} must be "
                             f"[n_experts={self.config.n_experts}]")

    def select(self, mask: jax.Array, weights: jax.Array, top_k: int) -> PairSelection:
        """Expert-sorted pairs of mask / weights [..., E] with the static bound
        P = config.n_pairs(T, top_k), and the number of selected pairs beyond it."""
        e = self.config.n_experts
        if mask.shape[-1:] != (e,) or weights.shape != mask.shape:
            raise ValueError(f"mask {mask.shape} and weights {weights.shape} must both be "
                             f"[..., n_experts={e}]")
        return select_pairs(mask, weights, self.config.n_pairs(mask.size // e, top_k))

    def __call__(self, x: jax.Array, pairs: Pairs, *, return_dropped: bool = False):
        c = self.config
        xt = self._tokens(x)
        self._check_pairs(pairs)
        mesh = active_mesh() if c.expert_axis is not None else None
        if mesh is not None and mesh.shape.get(c.expert_axis, 1) > 1:
            y, dropped = self.expert_parallel(xt, pairs, axis=c.expert_axis,
                                              capacity_factor=c.expert_capacity_factor)
        else:
            y = pair_forward(c, self.expert_params(), xt, pairs, self.dtype)
            dropped = jnp.zeros((), jnp.int32)
        y = y.reshape(x.shape)
        return (y, dropped) if return_dropped else y

    def dense_masked(self, x: jax.Array, weights: jax.Array) -> jax.Array:
        """Every expert on every token, masked: y[t] = sum_e weights[t, e] FFN_e(x[t]),
        x [..., d], weights [..., E] (0 = unselected) -> y [..., d] float32."""
        xt = self._tokens(x)
        e = self.config.n_experts
        if weights.shape != (*x.shape[:-1], e):
            raise ValueError(f"weights shape {weights.shape} must be {(*x.shape[:-1], e)}")
        y = dense_masked_forward(self.config, self.expert_params(), xt, weights.reshape(-1, e),
                                 self.dtype)
        return y.reshape(x.shape)

    def expert_parallel(self, x: jax.Array, pairs: Pairs, *, axis: str = "expert", mesh=None,
                        capacity_factor: float | None = None, combine: str = "psum"):
        """x [T, d], pairs -> (y [T, d] float32, dropped int32) with the experts split over
        mesh axis ``axis`` (``expert_parallel.expert_parallel_pairs``)."""
        xt = self._tokens(x)
        self._check_pairs(pairs)
        forward = lambda p, xx, pr: pair_forward(self.config, p, xx, pr, self.dtype)
        return expert_parallel_pairs(forward, self.expert_params(), xt, pairs, axis=axis,
                                     mesh=mesh, capacity_factor=capacity_factor,
                                     combine=combine)
