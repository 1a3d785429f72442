"""Activation sharding constraints by logical axis names.

Modules call ``constrain(x, ("batch", "length", "embed"))``. Outside an ``activation_rules``
context this is the identity, so modules run unchanged in other projects; inside it, the
logical names are mapped to mesh axes and ``jax.lax.with_sharding_constraint`` is applied.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")   # the mesh axes the "batch" logical axis maps to (every preset)

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("seedjax_activation_rules", default=None)


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, object]) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec. Unknown names and None stay replicated.

    A mesh axis is used at most once per spec (later dims that map to an already-used mesh
    axis are replicated), which keeps specs valid for any rule preset.
    """
    used: set = set()
    out = []
    for name in axes:
        target = rules.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        targets = (target,) if isinstance(target, str) else tuple(target)
        targets = tuple(t for t in targets if t not in used)
        used.update(targets)
        out.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return PartitionSpec(*out)


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Mapping[str, object]) -> Iterator[None]:
    """Enables ``constrain`` with ``mesh`` and logical->mesh ``rules`` while tracing."""
    token = _ACTIVE.set((mesh, dict(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Applies a sharding constraint to ``x`` by logical ``axes`` if rules are active."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(axes, rules)
    # drop mesh axes that do not divide the dimension (e.g. batch 1 during decoding)
    fixed = []
    for dim, entry in zip(x.shape, spec):
        names = () if entry is None else (entry,) if isinstance(entry, str) else entry
        size = 1
        for n in names:
            size *= mesh.shape[n]
        fixed.append(entry if dim % size == 0 else None)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(*fixed)))
