"""Expert parallelism for experts over selected (token, expert) pairs (``pair_experts``): the E
experts split over a mesh axis of n devices, dispatch and combine inside ``jax.shard_map``.

Layout. Expert weights [E, ...] are sharded ``P(axis, ...)``: device s holds experts
[s E/n, (s+1) E/n) (E % n == 0). Tokens x [T, d] and the pairs are replicated over the mesh
(every device sees all T tokens; other mesh axes replicate the work). Because the valid pairs
are sorted by expert, device s's pairs are one contiguous run of them:

    start_s = sum_{e < s E/n} group_sizes[e],   count_s = sum_{e in s's experts} group_sizes[e]

Each device takes the run's first C pairs (static C; expert ids shifted to local ones), runs the
local experts on them with the configured dispatch, and scatter-adds its partial y_s [T, d];

    combine "psum":          y = psum_s y_s             y [T, d] replicated
    combine "psum_scatter":  y = psum_scatter_s y_s     y [T, d] sharded over ``axis`` by tokens
                                                        (T % n == 0)

Capacity. ``capacity_factor`` None: C = P (a device can take every pair: exact, never drops).
f >= 1: C = min(P, ceil(f P / n)) rows per device (balanced routing needs P / n); pairs past C
in a device's run (its highest local experts' last tokens) are dropped and counted:
``dropped = sum_s max(count_s - C, 0)``, returned with y (a training loop can log it).

Gradients come from autodiff through ``shard_map``: a device's expert-weight gradient stays on
the device; the gradients of the replicated x and pair weights are psum'ed over ``axis``.
Communication per call: one all-reduce of [T, d] float32 (forward) and of x's and the pair
weights' gradients (backward). An all-to-all that sends each device only its pairs' tokens is
not implemented (the tokens are replicated here).
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from seedjax.nn.moe.routing_rules import Pairs, check_capacity_factor
from seedjax.ops.token_shards import run_shard_map

COMBINES = ("psum", "psum_scatter")


def check_expert_parallel(owner: str, axis, capacity_factor) -> None:
    """Validates an expert axis name (None or a non-empty string) and a per-device capacity
    factor (None or a finite number >= 1)."""
    if axis is not None and (not isinstance(axis, str) or not axis):
        raise ValueError(f"{owner}.expert_axis={axis!r} must be None or a mesh axis name")
    _check_capacity_factor(f"{owner}.expert_capacity_factor", capacity_factor)


def _check_capacity_factor(field: str, value) -> None:
    """None (every pair fits on one device) or a finite number >= 1."""
    if value is not None:
        check_capacity_factor(field, value)


def device_capacity(n_pairs: int, n_shards: int, capacity_factor: float | None) -> int:
    """Pairs a device can take: P, or min(P, ceil(f P / n))."""
    if capacity_factor is None:
        return n_pairs
    return min(n_pairs, math.ceil(capacity_factor * n_pairs / n_shards))


def local_pairs(pairs: Pairs, shard: jax.Array, n_local: int,
                capacity: int) -> tuple[Pairs, jax.Array]:
    """Device ``shard``'s pairs (experts [shard n_local, (shard + 1) n_local)), at most
    ``capacity`` of them, with local expert ids -> (Pairs of length ``capacity``, dropped)."""
    sizes = pairs.group_sizes.astype(jnp.int32)
    first = shard * n_local
    local_sizes = lax.dynamic_slice(sizes, (first,), (n_local,))
    start = jnp.sum(jnp.where(jnp.arange(sizes.shape[0]) < first, sizes, 0))
    count = jnp.sum(local_sizes)
    slot = jnp.arange(capacity, dtype=jnp.int32)
    keep = slot < count
    idx = jnp.clip(start + slot, 0, max(pairs.token.shape[0] - 1, 0))
    local_starts = jnp.cumsum(local_sizes) - local_sizes
    kept_sizes = jnp.clip(capacity - local_starts, 0, local_sizes)
    zero = jnp.zeros((), jnp.int32)
    out = Pairs(jnp.where(keep, pairs.token[idx], zero),
                jnp.where(keep, pairs.expert[idx] - first, zero),
                jnp.where(keep, pairs.weight[idx], jnp.zeros((), pairs.weight.dtype)),
                keep, kept_sizes)
    return out, jnp.maximum(count - capacity, 0)


def expert_parallel_pairs(forward: Callable, params: dict, x: jax.Array, pairs: Pairs, *,
                          axis: str = "expert", mesh=None, capacity_factor: float | None = None,
                          combine: str = "psum") -> tuple[jax.Array, jax.Array]:
    """``forward(params_local, x, local_pairs) -> y_s [T, d]`` run per device of mesh axis
    ``axis`` on its E/n experts (params {name: [E, ...]} sharded over ``axis``), combined over
    the axis. x [T, d], pairs over E experts -> (y [T, d] float32, dropped int32 total).
    ``mesh``: a Mesh / AbstractMesh, default the ``jax.set_mesh`` context."""
    fn = "expert_parallel_pairs"
    if combine not in COMBINES:
        raise ValueError(f"{fn}: combine={combine!r} is not allowed; allowed: {COMBINES}")
    _check_capacity_factor(f"{fn}: capacity_factor", capacity_factor)
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh is None or mesh.empty:
        raise ValueError(f"{fn}: no mesh: pass mesh= or call it under `with jax.set_mesh(mesh):`")
    if axis not in mesh.axis_names:
        raise ValueError(f"{fn}: expert axis {axis!r} is not an axis of the mesh "
                         f"{tuple(mesh.axis_names)}")
    n_shards = mesh.shape[axis]
    n_experts = pairs.group_sizes.shape[0]
    if n_experts % n_shards:
        raise ValueError(f"{fn}: n_experts={n_experts} is not divisible by the {n_shards} "
                         f"devices of mesh axis {axis!r}")
    n_tokens = x.shape[0]
    if combine == "psum_scatter" and n_tokens % n_shards:
        raise ValueError(f"{fn}: combine='psum_scatter' needs T={n_tokens} divisible by the "
                         f"{n_shards} devices of mesh axis {axis!r}")
    names = sorted(params)
    cap = device_capacity(pairs.token.shape[0], n_shards, capacity_factor)
    n_local = n_experts // n_shards

    def body(x, token, expert, weight, valid, sizes, *local):
        mine, dropped = local_pairs(Pairs(token, expert, weight, valid, sizes),
                                    lax.axis_index(axis), n_local, cap)
        y = forward(dict(zip(names, local)), x, mine)
        if combine == "psum":
            y = lax.psum(y, axis)
        else:
            y = lax.psum_scatter(y, axis, scatter_dimension=0, tiled=True)
        return y, lax.psum(dropped, axis)

    args = [x, *pairs, *(params[n] for n in names)]
    specs = [P()] * (1 + len(pairs)) + [P(axis, *(None,) * (params[n].ndim - 1)) for n in names]
    out_specs = (P() if combine == "psum" else P(axis, None), P())
    return run_shard_map(mesh, body, args, specs, out_specs)
