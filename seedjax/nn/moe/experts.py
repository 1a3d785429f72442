"""E stacked SwiGLU experts with dispatch (tokens -> expert rows) and combine (rows -> tokens).

Expert e:  FFN_e(x) = (silu(x W_gate[e]) * (x W_up[e])) W_down[e]   W_gate, W_up [E, d, F],
                                                                    W_down [E, F, d]
Token t routed to experts I[t, :k] with weights w[t, :k] (float32):

    y[t] = sum_j kept[t, j] w[t, j] FFN_{I[t, j]}(x[t])                     (float32)

Dispatch. The A = T k assignments (t, j) are flattened choice-major (a = j T + t) and stably
sorted by expert, so each expert's queue holds its first-choice tokens in token order, then its
second-choice tokens, and so on. The queue is laid out as rows of a [R, d] buffer (row r holds
x[row_token[r]], or zeros for padding), the experts run on the rows, and combine gathers
row ``assign_row[t, j]`` back for every kept assignment. Three layouts:

* "blocked" (dropless, default): each expert's queue padded to whole blocks of b rows;
  G = floor((A + min(E, A)(b - 1)) / b) blocks bound every routing, so R = G b. Each block
  multiplies its rows by its own expert's weights, gathered per block ([G, d, F], recomputed
  in the backward pass rather than stored). Matmul rows: A + at most min(E, A)(b - 1) padding.
* "ragged_dot" (dropless): the sorted assignments as R = A rows and ``jax.lax.ragged_dot``
  with the E group sizes (a grouped GEMM on TPU/GPU). On CPU with jax 0.10.2 it is correct,
  gradient included, but XLA lowers it to a dense masked matmul over all E experts with an
  [A, E d] operand, hence "blocked" is the default.
* "blocked_sliced" (dropless): the "blocked" layout, but a loop over the experts that own
  blocks reads each one's weights once by a dynamic slice and multiplies its blocks by them
  in an inner loop (``_block_matmul_sliced``), instead of a [G, d, F] gather; unused trailing
  blocks are skipped. XLA:CPU gathers large slices at about 1 GB/s, which is what made the
  "blocked" MoE 13-19x its roofline at decode (issue 23); a dynamic slice is a memcpy, and one
  per touched expert is the fewest weight reads a dropless layout can do. The backward pass
  runs the same loops and writes each expert's d_w once.
* capacity C (``capacity_factor``): rows [E, C]; expert e takes the first C entries of its
  queue, later ones are dropped (kept = False: zero contribution, no renormalisation of the
  token's remaining weights). All E C slots are computed; no weight gather.

Measured forward + backward on CPU (2 shared cores, T = 2048, d = 256, E = 16, k = 4, F = 192):
dense SwiGLU of width k F 135 ms, "blocked" 264 ms, capacity 1.25 282 ms, "ragged_dot" 2540 ms.

The layout code (``blocked_rows`` / ``ragged_rows`` over expert-sorted assignments) and the
grouped linear maps (``blocked_linear`` / ``ragged_linear`` / ``stacked_linear``) are shared
with ``pair_experts.PairExperts``, whose inputs are already expert-sorted (token, expert) pairs
(Expert Race / expert choice: 0..E experts per token).

The layouts are global over the T tokens of a call: under a sharded mesh (e.g. "expert" and
"mlp" sharded by ``fsdp_tp_mem``) XLA's partitioner inserts the collectives. A hand-written
expert-parallel version over pairs (experts over a mesh axis, shard_map) is in
``expert_parallel.py``.

Matmuls run in the compute dtype; combine weights and the sum over choices in float32 or wider.

Parameters (logical axes; optimizer labels: decayed, lr group "default"):
    w_gate, w_up   [E, d_model, F]   ("expert", "embed", "mlp")
    w_down         [E, F, d_model]   ("expert", "mlp", "embed")
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.moe.config import MoEConfig
from seedjax.nn.params import normal_init, param


class Layout(NamedTuple):
    row_token: jax.Array    # [R] int32 token copied into each row
    row_valid: jax.Array    # [R] bool; False: padding row (input zeros)
    assign_row: jax.Array   # [T, k] (or [P] for pairs) int32 row holding each assignment
    assign_kept: jax.Array  # [T, k] (or [P]) bool; False: dropped by the capacity / padding
    groups: jax.Array       # blocked: expert of each block [G]; ragged: sizes [E]; capacity: [E]


class SortedRows(NamedTuple):
    """Rows of A assignments already sorted by expert (valid ones first, ``sizes`` of them)."""
    row_src: jax.Array   # [R] int32 sorted assignment feeding each row (clipped for padding)
    row_valid: jax.Array  # [R] bool
    slot_row: jax.Array  # [A] int32 row of each sorted assignment (0 past the valid ones)
    groups: jax.Array    # blocked: expert of each block [G]; ragged: sizes [E]


def _sorted_queues(experts: jax.Array, n_experts: int):
    """Choice-major flattening, stable sort by expert. Returns (order [A]: sorted position ->
    flat assignment, sorted_expert [A], pos [A]: index within its expert's queue,
    sizes [E], starts [E])."""
    flat = experts.T.reshape(-1).astype(jnp.int32)
    order = jnp.argsort(flat, stable=True).astype(jnp.int32)
    sizes = jnp.bincount(flat, length=n_experts).astype(jnp.int32)
    starts = jnp.cumsum(sizes) - sizes
    sorted_expert = flat[order]
    pos = jnp.arange(flat.size, dtype=jnp.int32) - starts[sorted_expert]
    return order, sorted_expert, pos, sizes, starts


def _per_assignment(sorted_values: jax.Array, order: jax.Array, n_tokens: int) -> jax.Array:
    """Values by sorted position [A] -> by assignment [T, k]."""
    flat = jnp.zeros_like(sorted_values).at[order].set(sorted_values)
    return flat.reshape(-1, n_tokens).T


def _row_tokens(order, starts, expert_of_row, pos_of_row, n_tokens):
    """Token feeding the row at queue position ``pos_of_row`` of ``expert_of_row`` (clipped
    index for padding rows, which are masked anyway)."""
    idx = jnp.clip(starts[expert_of_row] + pos_of_row, 0, order.size - 1)
    return order[idx] % n_tokens


def block_rows(block_size: int, n_assignments: int, n_experts: int) -> int:
    """Rows per block: ``block_size``, shrunk to the next power of two >= A / E."""
    mean_rows = -(-n_assignments // n_experts)
    return max(1, min(block_size, 1 << (mean_rows - 1).bit_length()))


def n_blocks(n_assignments: int, n_experts: int, block: int) -> int:
    """Blocks bounding every routing of A assignments: floor((A + min(E, A)(b - 1)) / b)."""
    return (n_assignments + min(n_experts, n_assignments) * (block - 1)) // block


def blocked_rows(sorted_expert: jax.Array, sizes: jax.Array, n_experts: int,
                 block: int) -> SortedRows:
    """The "blocked" layout of A expert-sorted assignments (sorted_expert [A], the first
    sum(sizes) valid, sizes [E]): each expert's queue padded to whole blocks of ``block`` rows,
    ``n_blocks(A, E, block)`` blocks; ``groups`` is the expert of each block, E for the trailing
    blocks no expert uses (their rows are all padding). Shared by token choice ([T, k] sorted by
    ``_sorted_queues``) and by expert-sorted (token, expert) pairs (``pair_experts``)."""
    a = sorted_expert.shape[0]
    starts = jnp.cumsum(sizes) - sizes
    padded = (sizes + block - 1) // block * block
    ends = jnp.cumsum(padded)
    pstarts = ends - padded
    g = n_blocks(a, n_experts, block)
    block_expert = jnp.searchsorted(ends, jnp.arange(g) * block, side="right",
                                    method="compare_all").astype(jnp.int32)   # E: unused
    rows = jnp.arange(g * block, dtype=jnp.int32)
    e = jnp.minimum(block_expert, n_experts - 1)[rows // block]
    p = rows - pstarts[e]       # trailing unused blocks: p >= padded[E-1] >= sizes[E-1]
    idx = jnp.arange(a, dtype=jnp.int32)
    valid = idx < jnp.sum(sizes)
    slot = jnp.where(valid, pstarts[sorted_expert] + idx - starts[sorted_expert], 0)
    return SortedRows(jnp.clip(starts[e] + p, 0, max(a - 1, 0)), p < sizes[e],
                      slot.astype(jnp.int32), block_expert)


def ragged_rows(sizes: jax.Array, n_assignments: int) -> SortedRows:
    """The "ragged_dot" layout: one row per sorted assignment, rows past sum(sizes) invalid."""
    idx = jnp.arange(n_assignments, dtype=jnp.int32)
    return SortedRows(idx, idx < jnp.sum(sizes), idx, sizes.astype(jnp.int32))


def blocked_layout(experts: jax.Array, n_experts: int, block: int) -> Layout:
    n, k = experts.shape
    order, sorted_expert, _, sizes, _ = _sorted_queues(experts, n_experts)
    r = blocked_rows(sorted_expert, sizes, n_experts, block)
    return Layout(order[r.row_src] % n, r.row_valid, _per_assignment(r.slot_row, order, n),
                  jnp.ones((n, k), bool), r.groups)


def ragged_layout(experts: jax.Array, n_experts: int) -> Layout:
    n, k = experts.shape
    order, _, _, sizes, _ = _sorted_queues(experts, n_experts)
    r = ragged_rows(sizes, n * k)
    return Layout(order[r.row_src] % n, r.row_valid, _per_assignment(r.slot_row, order, n),
                  jnp.ones((n, k), bool), r.groups)


def capacity_layout(experts: jax.Array, n_experts: int, capacity: int) -> Layout:
    n, _ = experts.shape
    order, sorted_expert, pos, sizes, starts = _sorted_queues(experts, n_experts)
    rows = jnp.arange(n_experts * capacity, dtype=jnp.int32)
    e, p = rows // capacity, rows % capacity
    assign_row = sorted_expert * capacity + jnp.minimum(pos, capacity - 1)
    return Layout(_row_tokens(order, starts, e, p, n), p < sizes[e],
                  _per_assignment(assign_row, order, n),
                  _per_assignment(pos < capacity, order, n),
                  jnp.arange(n_experts, dtype=jnp.int32))


def dispatch(x: jax.Array, layout: Layout) -> jax.Array:
    """x [T, d] -> rows [R, d] (zeros in padding rows)."""
    return jnp.where(layout.row_valid[:, None], x[layout.row_token], 0).astype(x.dtype)


def combine(rows: jax.Array, layout: Layout, weights: jax.Array) -> jax.Array:
    """rows [R, d] (compute dtype), weights [T, k] -> y [T, d] in weights' (float32+) dtype."""
    w = jnp.where(layout.assign_kept, weights, 0)
    picked = rows[layout.assign_row].astype(weights.dtype)   # [T, k, d]
    return jnp.einsum("tk,tkd->td", w, picked)


@jax.checkpoint
def _block_matmul(rows: jax.Array, w: jax.Array, block_expert: jax.Array) -> jax.Array:
    """rows [G, b, i] @ w[block_expert] [G, i, o] -> [G, b, o] (block_expert E, an unused
    block, reads expert E - 1: its rows are zeros); the [G, i, o] gather is recomputed in the
    backward pass instead of being stored."""
    return jnp.einsum("gbi,gio->gbo", rows, w[jnp.minimum(block_expert, w.shape[0] - 1)])


def _expert_slice(w: jax.Array, e: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(w, e, keepdims=False)


def _expert_runs(block_expert: jax.Array, n_experts: int):
    """Block ranges of the experts that own blocks (block_expert [G] non-decreasing, E for
    unused blocks) -> (touched experts [E] (the first ``n`` valid), first block [E], blocks [E],
    n int32)."""
    e = jnp.arange(n_experts, dtype=block_expert.dtype)
    first = jnp.searchsorted(block_expert, e, side="left", method="compare_all")
    count = jnp.searchsorted(block_expert, e, side="right", method="compare_all") - first
    touched = jnp.nonzero(count > 0, size=n_experts, fill_value=0)[0]
    return touched, first.astype(jnp.int32), count.astype(jnp.int32), \
        jnp.sum(count > 0, dtype=jnp.int32)


def _over_runs(block_expert: jax.Array, n_experts: int, per_expert: Callable, carry):
    """``carry = per_expert(e, first_block, n_blocks, carry)`` for every expert owning blocks,
    in expert order (a loop with a data-dependent trip count)."""
    touched, first, count, n = _expert_runs(block_expert, n_experts)

    def body(j, c):
        e = touched[j]
        return per_expert(e, first[e], count[e], c)
    return jax.lax.fori_loop(0, n, body, carry)


@jax.custom_vjp
def _block_matmul_sliced(rows: jax.Array, w: jax.Array, block_expert: jax.Array) -> jax.Array:
    """``_block_matmul`` as a loop over the experts that own blocks: w[e] [i, o] is read once by
    a dynamic slice (no [G, i, o] gathered copy: XLA:CPU gathers large slices at ~1 GB/s, a
    dynamic slice is a memcpy), then an inner loop multiplies each of e's blocks by it; unused
    blocks (expert E) are skipped and stay zero. Backward: the same loops, giving d_rows and
    d_w[e] summed over e's blocks, written once per expert."""
    def per_expert(e, first, count, out):
        we = _expert_slice(w, e)

        def block(g, o):
            y = _expert_slice(rows, g) @ we
            return jax.lax.dynamic_update_index_in_dim(o, y.astype(o.dtype), g, 0)
        return jax.lax.fori_loop(first, first + count, block, out)

    out = jnp.zeros(rows.shape[:2] + w.shape[2:], jnp.result_type(rows, w))
    return _over_runs(block_expert, w.shape[0], per_expert, out)


def _block_matmul_sliced_fwd(rows, w, block_expert):
    return _block_matmul_sliced(rows, w, block_expert), (rows, w, block_expert)


def _block_matmul_sliced_bwd(res, dy):
    rows, w, block_expert = res
    dy = dy.astype(rows.dtype)

    def per_expert(e, first, count, c):
        dw, drows = c
        we = _expert_slice(w, e)

        def block(g, c2):
            dwe, dr = c2
            r, gy = _expert_slice(rows, g), _expert_slice(dy, g)
            dr = jax.lax.dynamic_update_index_in_dim(dr, (gy @ we.T).astype(dr.dtype), g, 0)
            return dwe + (r.T @ gy).astype(dwe.dtype), dr

        dwe, drows = jax.lax.fori_loop(first, first + count, block,
                                       (jnp.zeros(w.shape[1:], w.dtype), drows))
        return jax.lax.dynamic_update_index_in_dim(dw, dwe, e, 0), drows

    dw, drows = _over_runs(block_expert, w.shape[0], per_expert,
                           (jnp.zeros_like(w), jnp.zeros_like(rows)))
    return drows, dw, None


_block_matmul_sliced.defvjp(_block_matmul_sliced_fwd, _block_matmul_sliced_bwd)


# ---- grouped linear maps: lin(rows, w [E, i, o], bias [E, o] | None) in a layout's row shape ----

def blocked_linear(block_expert: jax.Array, sliced: bool = False) -> Callable:
    """rows [G, b, i] -> rows @ w[block_expert] (+ bias[block_expert]) [G, b, o]; ``sliced``:
    the loop over blocks with dynamic slices (``_block_matmul_sliced``) instead of a gather."""
    matmul = _block_matmul_sliced if sliced else _block_matmul

    def lin(a, w, b=None):
        y = matmul(a, w, block_expert)
        return y if b is None else y + b[jnp.minimum(block_expert, b.shape[0] - 1)][:, None, :]
    return lin


def ragged_linear(sizes: jax.Array) -> Callable:
    """rows [R, i] grouped by ``sizes`` [E] -> ``jax.lax.ragged_dot`` (+ each row's expert's
    bias) [R, o], int32 group sizes; rows past sum(sizes) are set to zero (TPU leaves them
    undefined)."""
    sizes = sizes.astype(jnp.int32)

    def lin(a, w, b=None):
        rows = jnp.arange(a.shape[0], dtype=jnp.int32)
        y = jax.lax.ragged_dot(a, w, sizes)
        if b is not None:
            row_expert = jnp.searchsorted(jnp.cumsum(sizes), rows, side="right",
                                          method="compare_all")
            y = y + b[jnp.minimum(row_expert, w.shape[0] - 1)]
        return jnp.where((rows < jnp.sum(sizes))[:, None], y, jnp.zeros((), y.dtype))
    return lin


def stacked_linear(a: jax.Array, w: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """Every expert on its own rows a [E, C, i], or on the same rows a [C, i]: -> [E, C, o]."""
    y = jnp.einsum("ci,eio->eco" if a.ndim == 2 else "eci,eio->eco", a, w)
    return y if b is None else y + b[:, None, :]


def apply_rows(ffn: Callable, rows: jax.Array, mode: str, groups: jax.Array) -> jax.Array:
    """``ffn(rows, lin)`` on a layout's rows [R, d] -> [R, d_out]; ``mode`` "blocked" or
    "blocked_sliced" (groups: expert per block), "ragged_dot" (groups: sizes [E]) or "capacity" ([E] rows
    each, groups: arange(E))."""
    if mode == "ragged_dot":
        return ffn(rows, ragged_linear(groups))
    lin = (stacked_linear if mode == "capacity"
           else blocked_linear(groups, sliced=mode == "blocked_sliced"))
    n, d = rows.shape
    return ffn(rows.reshape(groups.shape[0], -1, d), lin).reshape(n, -1)


def swiglu_params(rngs: nnx.Rngs, n_experts: int, d_model: int, hidden: int, in_std: float,
                  out_std: float) -> tuple[nnx.Param, nnx.Param, nnx.Param]:
    """(w_gate, w_up [E, d, F] ("expert", "embed", "mlp"), w_down [E, F, d])."""
    e, d, f = n_experts, d_model, hidden
    return (param(rngs, normal_init(in_std), (e, d, f), ("expert", "embed", "mlp")),
            param(rngs, normal_init(in_std), (e, d, f), ("expert", "embed", "mlp")),
            param(rngs, normal_init(out_std), (e, f, d), ("expert", "mlp", "embed")))


def swiglu_ffn(p: dict, rows: jax.Array, lin: Callable, dtype) -> jax.Array:
    """(silu(rows W_gate) * (rows W_up)) W_down with the layout's grouped ``lin``; ``p`` holds
    the float32 arrays w_gate, w_up, w_down, cast to the compute ``dtype``."""
    gate = lin(rows, p["w_gate"].astype(dtype))
    up = lin(rows, p["w_up"].astype(dtype))
    return lin(jax.nn.silu(gate) * up, p["w_down"].astype(dtype))


class Experts(nnx.Module):
    """``Experts(config, dtype=..., rngs=...)(x [T, d], experts [T, k], weights [T, k])
    -> y [T, d]`` (float32 or wider; dispatch chosen by the config, see module docstring)."""

    def __init__(self, config: MoEConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        c = self.config = config
        self.dtype = dtype
        in_std = c.expert_init_std if c.expert_init_std is not None else c.d_model ** -0.5
        out_std = c.out_init_std if c.out_init_std is not None else c.expert_dim ** -0.5
        self.w_gate, self.w_up, self.w_down = swiglu_params(
            rngs, c.n_experts, c.d_model, c.expert_dim, in_std, out_std)

    def layout(self, experts: jax.Array) -> Layout:
        """Row layout of this config for experts [T, k]."""
        c = self.config
        n, k = experts.shape
        if c.capacity_factor is not None:
            return capacity_layout(experts, c.n_experts, c.capacity(n))
        if c.grouped_matmul == "ragged_dot":
            return ragged_layout(experts, c.n_experts)
        return blocked_layout(experts, c.n_experts, block_rows(c.block_size, n * k, c.n_experts))

    def __call__(self, x: jax.Array, experts: jax.Array, weights: jax.Array) -> jax.Array:
        c = self.config
        layout = self.layout(experts)
        mode = "capacity" if c.capacity_factor is not None else c.grouped_matmul
        p = {"w_gate": self.w_gate[...], "w_up": self.w_up[...], "w_down": self.w_down[...]}
        out = apply_rows(lambda rows, lin: swiglu_ffn(p, rows, lin, self.dtype),
                         dispatch(x.astype(self.dtype), layout), mode, layout.groups)
        return combine(out, layout, weights)
