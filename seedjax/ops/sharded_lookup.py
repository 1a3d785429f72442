"""Row-sharded memory tables: ``embedding_bag`` / ``row_dot`` when the table's rows are split
over a mesh axis, run inside ``jax.shard_map`` with explicit in/out specs.

Layout. A table [N, D] is sharded ``P(axis, None)`` over the S shards of mesh axis ``axis`` in
contiguous row blocks: shard s holds global rows [s N/S, (s+1) N/S) (what a ``NamedSharding``
with that spec gives; ``N % S == 0`` is required). Indices are global row ids; ids outside
[0, N) are pad slots that read a zero row and receive no gradient, exactly as in
``seedjax.ops.embedding_bag``.

Two schemes (the math of both equals the unsharded op):

* ``"psum"`` (masked local gather + psum): tokens are replicated over ``axis`` (and may be
  sharded over the batch axes ``token_axes``). Every shard gathers *its own* rows for all
  tokens, with the ids shifted by its row offset (ids owned by other shards fall outside
  [0, N/S) and read zero), applies the weights, and the partial sums [t, Dv] are psum'ed over
  ``axis`` in float32. Communication per shard: one all-reduce of [t, Dv] (forward) and of the
  weights' gradient [t, K, S] (backward). Cheap for a few shards; every shard does the whole
  reduction over K.
* ``"all_to_all"`` (route requests to row owners; UltraMem's memory parallelism for many
  shards): tokens are sharded over ``token_axes`` *and* ``axis``. Each shard buckets its
  t K (token, slot) requests by owner shard into a fixed-capacity buffer [S, C] of local row
  ids (pad -1), ``all_to_all``s the ids to the owners, the owners gather the rows (no
  weights: weights never leave the requester), the rows [S, C, D] go back with a second
  ``all_to_all``, and the requester applies its weights and reduces. The capacity C per
  destination defaults to the worst case t K (all of a shard's requests owned by one shard:
  exact, never drops). ``capacity_factor`` f sets C = min(t K, ceil(f t K / S)) to bound the
  buffers (S C rows per shard instead of S t K); requests beyond a destination's capacity are
  dropped (read zero, like pad slots) and counted: ``return_dropped=True`` returns the total
  number dropped over the mesh so a training loop can check it is 0.

Per-shard work: "psum" runs ``embedding_bag`` / ``row_dot`` on the shard's rows with the ids
shifted by the row offset, so ``implementation`` picks the XLA reference or a Pallas kernel
("auto": the kernel on TPU; kernel partial sums are rounded to the table dtype before the f32
psum); "all_to_all" gathers received row buffers in XLA ("auto" -> "xla"). Gradients come
from JAX autodiff through ``shard_map``: the transposes of the local gathers are local
scatter-adds into the shard's rows (so the table's gradient, and optimizer moments
built from it, stay sharded like the table), psum's transpose is a broadcast, and
``all_to_all``'s transpose is the reverse ``all_to_all``. Weights' gradients of the psum
scheme are psum'ed over ``axis`` by shard_map's replication rule.

Entry points (wrap ``jax.shard_map``; mesh from ``mesh=`` or the ``jax.set_mesh`` context):
    sharded_embedding_bag(values [N, Dv], indices int [..., K], weights [..., K] | [..., K, S],
                          groups=None | int [..., K], n_groups) -> [..., Dv] | [..., G, Dv]
    sharded_row_dot(table [N, Dp], indices int [..., K], x [..., Dp]) -> [..., K] (>= float32)
Per-shard building blocks (call inside your own ``shard_map`` over ``axis``):
    masked_local_rows(table_local [N/S, D], indices [...]) -> rows [..., D] (others' rows zero)
    fetch_rows_all_to_all(table_local, indices [t, K], capacity=) -> (rows [t, K, D], dropped)
    bag_reduce(rows [..., K, Dv], weights [..., K, S], groups, n_groups) -> [..., (G,) Dv] (f32+)
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

from seedjax.ops.common import check_implementation, resolve_implementation, score_dtype
from seedjax.ops.embedding_bag import embedding_bag, gather_rows, row_dot
from seedjax.ops.token_shards import (pad_tokens, run_shard_map, token_shard_count, tokens_spec,
                                      unpad_tokens)

SCHEMES = ("psum", "all_to_all")
DEFAULT_TOKEN_AXES = ("data", "fsdp")


# ---- validation ------------------------------------------------------------------------------


def check_table_sharding(owner: str, scheme, axis, capacity_factor=None) -> None:
    """Validates a module config's ``table_sharding`` (None | one of ``SCHEMES``),
    ``table_axis`` (a mesh-axis name) and ``table_capacity_factor`` (None | number > 0)."""
    if scheme is not None and scheme not in SCHEMES:
        raise ValueError(f"{owner}.table_sharding={scheme!r} is not allowed; allowed: "
                         f"(None, {', '.join(map(repr, SCHEMES))})")
    if not isinstance(axis, str) or not axis:
        raise ValueError(f"{owner}.table_axis={axis!r} must be a mesh axis name (a non-empty "
                         "string)")
    _check_capacity_factor(f"{owner}.table_capacity_factor", capacity_factor)


def _check_capacity_factor(field: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{field}={value!r} must be None (worst-case capacity) or a number > 0")


def _shapes(*arrays):
    """Unsharded shape/dtype stand-ins (an Explicit-mesh sharding would make the unsharded
    op's abstract evaluation fail)."""
    return [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in arrays]


def _local_implementation(fn: str, implementation: str, scheme: str, *operands) -> str:
    """The implementation of the per-shard lookup: "psum" runs ``embedding_bag`` / ``row_dot``
    on the local rows with any implementation ("auto" resolves by backend); "all_to_all"'s
    gathers and reductions are XLA ("auto" -> "xla", explicit kernels rejected)."""
    check_implementation(fn, implementation)
    impl = resolve_implementation(implementation, *operands)
    if scheme == "all_to_all" and impl != "xla":
        if implementation == "auto":
            return "xla"
        raise ValueError(f"{fn}: implementation={implementation!r} is not supported by the "
                         "all_to_all scheme (its gathers run on received row buffers in XLA); "
                         "use 'auto' or 'xla', or scheme='psum'")
    return impl


def _resolve_mesh(fn: str, mesh):
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh is None or mesh.empty:
        raise ValueError(f"{fn}: no mesh: pass mesh= or call it under `with jax.set_mesh(mesh):`")
    return mesh


def _layout(fn: str, mesh, scheme: str, axis: str, token_axes, n_rows: int):
    """-> (n_shards, token mesh axes of the shard_map specs)."""
    if scheme not in SCHEMES:
        raise ValueError(f"{fn}: scheme={scheme!r} is unknown; allowed: {SCHEMES}")
    names = tuple(mesh.axis_names)
    if axis not in names:
        raise ValueError(f"{fn}: table axis {axis!r} is not an axis of the mesh {names}")
    n_shards = mesh.shape[axis]
    if n_rows % n_shards:
        raise ValueError(f"{fn}: the table's {n_rows} rows are not divisible by the {n_shards} "
                         f"shards of mesh axis {axis!r} (contiguous row blocks need N % S == 0)")
    if token_axes is None:
        tok = tuple(a for a in DEFAULT_TOKEN_AXES if a in names and a != axis)
    else:
        tok = (token_axes,) if isinstance(token_axes, str) else tuple(token_axes)
        for a in tok:
            if a not in names:
                raise ValueError(f"{fn}: token axis {a!r} is not an axis of the mesh {names}")
            if a == axis:
                raise ValueError(f"{fn}: token_axes {tok} must not contain the table axis "
                                 f"{axis!r} (the all_to_all scheme adds it itself)")
        if len(set(tok)) != len(tok):
            raise ValueError(f"{fn}: token_axes {tok} has duplicates")
    if scheme == "all_to_all":
        tok = tok + (axis,)
    return n_shards, tok


def _capacity(requests: int, n_shards: int, capacity_factor) -> int:
    if capacity_factor is None:
        return requests
    return max(1, min(requests, math.ceil(capacity_factor * requests / n_shards)))


# ---- per-shard building blocks (inside shard_map) --------------------------------------------


def masked_local_rows(table_local: jax.Array, indices: jax.Array, axis: str) -> jax.Array:
    """Inside ``shard_map`` over ``axis``: table_local [N/S, D] (shard s's contiguous block),
    global ``indices`` [...] -> rows [..., D]: this shard's rows, zero for ids owned by other
    shards or outside [0, N). Its transpose is a scatter-add into ``table_local``."""
    return gather_rows(table_local, local_ids(indices, table_local.shape[0], axis))


def local_ids(indices: jax.Array, n_local: int, axis: str) -> jax.Array:
    """Inside ``shard_map`` over ``axis``: global row ids -> this shard's local ids (rows of
    other shards fall outside [0, n_local) and so act as pad slots)."""
    return indices - lax.axis_index(axis).astype(indices.dtype) * n_local


def fetch_rows_all_to_all(table_local: jax.Array, indices: jax.Array, axis: str, *,
                          capacity: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Inside ``shard_map`` over ``axis`` (S shards): fetch the rows of this shard's requests
    ``indices`` int [t, K] (global ids; outside [0, N) = pad) from their owners.

    Returns (rows [t, K, D] in the table dtype, dropped int32 []: this shard's requests that did
    not fit in ``capacity`` slots per destination; they read zero). ``capacity`` None = t K, the
    worst case (never drops). Buffers per shard: ids [S, C] and rows [S, C, D], sent and
    received once each way."""
    if indices.ndim != 2:
        raise ValueError(f"fetch_rows_all_to_all: indices must be [t, K], got {indices.shape}")
    n_shards = lax.axis_size(axis)
    n_local = table_local.shape[0]
    t, k = indices.shape
    r = t * k
    cap = r if capacity is None else int(capacity)
    if cap < 1:
        raise ValueError(f"fetch_rows_all_to_all: capacity={capacity!r} must be >= 1")
    ids = indices.reshape(r).astype(jnp.int32)
    valid = (ids >= 0) & (ids < n_local * n_shards)
    owner = jnp.where(valid, ids // n_local, n_shards)                  # n_shards = no request
    # position of each request within its owner's bucket, in request order
    onehot = (owner[:, None] == jnp.arange(n_shards, dtype=jnp.int32)).astype(jnp.int32)
    pos = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=1)     # [r]
    kept = valid & (pos < cap)
    dest = jnp.where(kept, owner, n_shards)                               # out of range: dropped
    send = jnp.full((n_shards, cap), -1, jnp.int32).at[dest, pos].set(ids % n_local,
                                                                      mode="drop")
    recv = lax.all_to_all(send, axis, 0, 0, tiled=True)      # recv[src] = ids src asks me for
    served = gather_rows(table_local, recv)                               # [S, C, D]
    back = lax.all_to_all(served, axis, 0, 0, tiled=True)    # back[o] = my rows from owner o
    slot = jnp.where(kept, owner * cap + pos, -1)
    rows = gather_rows(back.reshape(n_shards * cap, -1), slot)            # [r, D]
    dropped = jnp.sum(valid & ~kept).astype(jnp.int32)
    return rows.reshape(t, k, -1), dropped


def bag_reduce(rows: jax.Array, weights: jax.Array, groups: jax.Array | None = None,
               n_groups: int = 1) -> jax.Array:
    """rows [..., K, Dv], weights [..., K, S] (S value slices), groups int [..., K] ->
    [..., Dv] or [..., n_groups, Dv] in float32 or wider (``embedding_bag``'s reduction)."""
    acc = score_dtype(rows, weights)
    n_slices = weights.shape[-1]
    rows = rows.reshape(*rows.shape[:-1], n_slices, -1).astype(acc)     # [..., K, S, Dv/S]
    w = weights.astype(acc)
    if groups is None:
        out = jnp.einsum("...ks,...ksd->...sd", w, rows, preferred_element_type=acc)
    else:
        onehot = jax.nn.one_hot(groups, n_groups, dtype=acc)
        out = jnp.einsum("...kg,...ks,...ksd->...gsd", onehot, w, rows,
                         preferred_element_type=acc)
    return out.reshape(*out.shape[:-2], -1)


# ---- shard_map wrappers ------------------------------------------------------------------------


def sharded_embedding_bag(values: jax.Array, indices: jax.Array, weights: jax.Array, *,
                          groups: jax.Array | None = None, n_groups: int = 1,
                          scheme: str = "psum", axis: str = "mem", mesh=None,
                          token_axes: str | Sequence[str] | None = None,
                          capacity_factor: float | None = None, return_dropped: bool = False,
                          implementation: str = "auto"):
    """``embedding_bag`` (same arguments and result) with ``values`` [N, Dv] row-sharded over
    mesh axis ``axis``; ``scheme`` "psum" | "all_to_all" (module docstring).

    indices int [..., K]; weights [..., K] or [..., K, S]; groups int [..., K] -> [..., Dv] or
    [..., n_groups, Dv] in ``values.dtype``. The leading dims are flattened to tokens, padded to
    a multiple of the token shard count, and sharded over ``token_axes`` (default: the mesh's
    "data"/"fsdp" axes) and, for "all_to_all", also over ``axis``. ``mesh``: a Mesh or
    AbstractMesh (default: the ``jax.set_mesh`` context). ``capacity_factor``: all_to_all
    capacity (None = worst case, exact). ``return_dropped``: also return the int32 number of
    requests dropped for capacity over the whole mesh (always 0 for "psum" or None capacity).
    """
    fn = "sharded_embedding_bag"
    impl = _local_implementation(fn, implementation, scheme, values, weights)
    _check_capacity_factor(f"{fn}: capacity_factor", capacity_factor)
    try:  # embedding_bag's own shape / dtype checks, and the output shape
        out_struct = jax.eval_shape(functools.partial(embedding_bag, n_groups=n_groups),
                                    *_shapes(values, indices, weights),
                                    groups=None if groups is None else _shapes(groups)[0])
    except ValueError as e:
        raise ValueError(f"{fn}: {e}") from None
    mesh = _resolve_mesh(fn, mesh)
    n_shards, tok = _layout(fn, mesh, scheme, axis, token_axes, values.shape[0])
    lead, k = indices.shape[:-1], indices.shape[-1]
    n_tok = math.prod(lead)
    per, n_pad = token_shard_count(mesh, tok, n_tok)
    idx = pad_tokens(mesh, indices.reshape(n_tok, k), n_pad, -1)
    w = pad_tokens(mesh, weights.reshape(n_tok, k, -1), n_pad, 0)      # [T, K, S]
    args = [values, idx, w]
    specs = [P(axis, None), tokens_spec(tok, None), tokens_spec(tok, None, None)]
    if groups is not None:
        args.append(pad_tokens(mesh, groups.reshape(n_tok, k), n_pad, 0))
        specs.append(tokens_spec(tok, None))
    out_dims = (None,) * (len(out_struct.shape) - len(lead))
    all_axes = tuple(dict.fromkeys(tok + (axis,)))
    cap = _capacity(n_pad // per * k, n_shards, capacity_factor)

    def body(v, i, wt, *g):
        grp = g[0] if g else None
        if scheme == "psum" and impl != "xla":  # the kernel on the local rows (partials in
            part = embedding_bag(v, local_ids(i, v.shape[0], axis), wt,   # the table dtype)
                                 groups=grp, n_groups=n_groups, implementation=impl)
            part = part.astype(score_dtype(v, wt))
            return lax.psum(part, axis).astype(v.dtype), jnp.zeros((), jnp.int32)
        if scheme == "psum":
            part = bag_reduce(masked_local_rows(v, i, axis), wt, grp, n_groups)
            return lax.psum(part, axis).astype(v.dtype), jnp.zeros((), jnp.int32)
        rows, dropped = fetch_rows_all_to_all(v, i, axis, capacity=cap)
        out = bag_reduce(rows, wt, grp, n_groups)
        return out.astype(v.dtype), lax.psum(dropped, all_axes)

    out, dropped = run_shard_map(mesh, body, args, specs,
                                 (tokens_spec(tok, *out_dims), P()), check_vma=impl == "xla")
    out = unpad_tokens(mesh, out, n_tok).reshape(out_struct.shape)
    return (out, dropped) if return_dropped else out


def sharded_row_dot(table: jax.Array, indices: jax.Array, x: jax.Array, *,
                    scheme: str = "psum", axis: str = "mem", mesh=None,
                    token_axes: str | Sequence[str] | None = None,
                    capacity_factor: float | None = None, return_dropped: bool = False,
                    implementation: str = "auto"):
    """``row_dot`` with ``table`` [N, Dp] row-sharded over mesh axis ``axis``: indices int
    [..., K], x [..., Dp] -> ``out[..., k] = <table[indices[..., k]], x>`` [..., K] in float32
    or wider. Other arguments as in ``sharded_embedding_bag``."""
    fn = "sharded_row_dot"
    impl = _local_implementation(fn, implementation, scheme, table, x)
    _check_capacity_factor(f"{fn}: capacity_factor", capacity_factor)
    try:
        out_struct = jax.eval_shape(row_dot, *_shapes(table, indices, x))
    except ValueError as e:
        raise ValueError(f"{fn}: {e}") from None
    mesh = _resolve_mesh(fn, mesh)
    n_shards, tok = _layout(fn, mesh, scheme, axis, token_axes, table.shape[0])
    lead, k = indices.shape[:-1], indices.shape[-1]
    n_tok = math.prod(lead)
    per, n_pad = token_shard_count(mesh, tok, n_tok)
    idx = pad_tokens(mesh, indices.reshape(n_tok, k), n_pad, -1)
    xs = pad_tokens(mesh, x.reshape(n_tok, x.shape[-1]), n_pad, 0)
    all_axes = tuple(dict.fromkeys(tok + (axis,)))
    cap = _capacity(n_pad // per * k, n_shards, capacity_factor)
    acc = out_struct.dtype

    def body(tab, i, xx):
        xx = xx.astype(acc)
        if scheme == "psum" and impl != "xla":
            out = row_dot(tab, local_ids(i, tab.shape[0], axis), xx, implementation=impl)
            return lax.psum(out.astype(acc), axis), jnp.zeros((), jnp.int32)
        if scheme == "psum":
            rows = masked_local_rows(tab, i, axis).astype(acc)
            out = jnp.einsum("tkd,td->tk", rows, xx, preferred_element_type=acc)
            return lax.psum(out, axis), jnp.zeros((), jnp.int32)
        rows, dropped = fetch_rows_all_to_all(tab, i, axis, capacity=cap)
        out = jnp.einsum("tkd,td->tk", rows.astype(acc), xx, preferred_element_type=acc)
        return out, lax.psum(dropped, all_axes)

    out, dropped = run_shard_map(
        mesh, body, [table, idx, xs],
        [P(axis, None), tokens_spec(tok, None), tokens_spec(tok, None)],
        (tokens_spec(tok, None), P()), check_vma=impl == "xla")
    out = unpad_tokens(mesh, out, n_tok).reshape(out_struct.shape)
    return (out, dropped) if return_dropped else out
