"""Running a Pallas kernel per token shard under a device mesh.

Mosaic / Triton custom calls are not partitioned by XLA's SPMD partitioner: under ``jit`` with a
multi-device mesh a bare kernel call would make every device gather the whole token batch. So
the ``seedjax.ops`` entry points, when they dispatch to a kernel and a ``jax.set_mesh`` mesh
with more than one device is active, call the kernel inside ``jax.shard_map``: the token
arguments (leading dim T, the flattened batch) split over every mesh axis larger than 1, in
mesh order (so "data"/"fsdp" stay major and an existing batch sharding is kept), the shared
arguments (keys, cores, tables) replicated. The kernels are per-token maps over replicated
operands, so any split of the tokens is exact. Tables sharded by rows go through
``seedjax.ops.sharded_lookup`` instead (which calls these entries per shard).

The shard_map plumbing (token padding, Explicit-mesh resharding, specs) is shared with
``sharded_lookup``.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

def explicit(mesh) -> bool:
    """True if any axis of ``mesh`` has the Explicit axis type."""
    return any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))


def _replicate(mesh, x):
    return jax.sharding.reshard(x, NamedSharding(mesh, P()) if isinstance(mesh, jax.sharding.Mesh)
                                else P())


def pad_tokens(mesh, x: jax.Array, n: int, fill) -> jax.Array:
    """Pads the token dim 0 of x to n rows with ``fill``. Under an Explicit mesh x is first
    replicated (concatenate needs operands of one sharding); the shard_map specs re-split it."""
    if n == x.shape[0]:
        return x
    if explicit(mesh):
        x = _replicate(mesh, x)
    pad = jnp.full((n - x.shape[0], *x.shape[1:]), fill, x.dtype)
    return jnp.concatenate([x, pad], axis=0)


def unpad_tokens(mesh, x: jax.Array, n: int) -> jax.Array:
    """The first n rows of x (inverse of ``pad_tokens``)."""
    if n == x.shape[0]:
        return x
    if explicit(mesh):  # Explicit slicing needs the sharded dim to stay divisible
        x = _replicate(mesh, x)
    return x[:n]


def run_shard_map(mesh, body, args, in_specs, out_specs, *, check_vma: bool = True):
    """shard_map over ``mesh``; on a mesh with Explicit axes the inputs are first resharded to
    their specs (shard_map refuses mismatched Explicit inputs instead of resharding)."""
    if explicit(mesh):
        concrete = isinstance(mesh, jax.sharding.Mesh)
        args = [jax.sharding.reshard(a, NamedSharding(mesh, s) if concrete else s)
                for a, s in zip(args, in_specs)]
    return jax.shard_map(body, mesh=mesh, in_specs=tuple(in_specs), out_specs=out_specs,
                         check_vma=check_vma)(*args)


def token_shard_count(mesh, tok: tuple, n_tok: int) -> tuple[int, int]:
    """(shards over the mesh axes ``tok``, n_tok rounded up to a positive multiple of them)."""
    per = math.prod(mesh.shape[a] for a in tok)
    return per, -(-max(n_tok, 1) // per) * per


def tokens_spec(tok: tuple, *rest):
    """PartitionSpec with dim 0 over the mesh axes ``tok`` (None if empty), then ``rest``."""
    return P(tok if tok else None, *rest)


def active_mesh():
    """The ``jax.set_mesh`` mesh if it spans more than one device, else None. Inside a
    ``shard_map`` (any Manual axis) also None: the caller already runs per shard."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or mesh.empty or math.prod(mesh.shape.values()) == 1:
        return None
    if any(t == AxisType.Manual for t in mesh.axis_types):
        return None
    return mesh


def over_token_shards(kernel: Callable, tokens: Sequence[tuple[jax.Array, object]],
                      shared: Sequence[jax.Array] = ()):
    """``kernel(*token_arrays, *shared)`` run per token shard of the active mesh.

    tokens: (array [T, ...], pad fill) pairs with one T; the kernel must map them to outputs
    with leading dim T (a pytree). Pad rows (T rounded up to the shard count) are filled with
    their fill value and cut from the outputs, so fills must be inputs the kernel accepts
    (e.g. index -1 = a pad slot, weight 0). Without an active multi-device mesh this is a plain
    call.
    """
    arrays = [a for a, _ in tokens]
    mesh = active_mesh()
    if mesh is None:
        return kernel(*arrays, *shared)
    tok = tuple(a for a in mesh.axis_names if mesh.shape[a] > 1)
    n_tok = arrays[0].shape[0]
    _, n_pad = token_shard_count(mesh, tok, n_tok)
    args = [pad_tokens(mesh, a, n_pad, fill) for a, fill in tokens] + list(shared)
    specs = [tokens_spec(tok, *(None,) * (a.ndim - 1)) for a in arrays] + [P()] * len(shared)
    # check_vma=False: pallas_call has no varying-manual-axes typing rule to check against
    out = run_shard_map(mesh, kernel, args, specs, tokens_spec(tok), check_vma=False)
    return jax.tree.map(lambda o: unpad_tokens(mesh, o, n_tok), out)
