"""UltraMemV2 value-table sharing across layers (§4.2.8, Table 7).

Layer l (0-indexed, of L) reads the union of g consecutive layer tables starting at
``window_start``:

* "ring":   a window of g tables centred on l (start l - (g-1)//2), wrapping around L
            (S4-Ring: layer 1 -> tables 24, 1, 2, 3 in the paper's 1-indexed Table 7).
* "noring": the same window clipped to [0, L - g] (S4-NoRing: layers 1 and 2 -> 1, 2, 3, 4).
* "block":  contiguous blocks of g layers share their g tables (start = g * floor(l / g)).
* "none":   each layer has its own table (g must be 1).

A local slot j in [0, g N) of layer l maps to global row ``table(l, j // N) * N + j mod N`` of
the one [L N, D] table, where ``table(l, w) = (start + w) mod L``. With g = 1 and any scheme,
layer l reads exactly rows [l N, (l + 1) N): per-layer tables.
"""
from __future__ import annotations

import jax.numpy as jnp

from seedjax.validation import check_choice, check_int

SHARING = ("none", "ring", "noring", "block")


def check_sharing(owner: str, scheme: str, group: int, n_layers: int) -> None:
    check_choice(f"{owner}.sharing", scheme, SHARING)
    check_int(f"{owner}.share_group", group)
    check_int(f"{owner}.n_layers", n_layers)
    if scheme == "none" and group != 1:
        raise ValueError(f"{owner}.share_group={group} needs sharing in "
                         f"{SHARING[1:]} (sharing='none' means one table per layer)")
    if group > n_layers:
        raise ValueError(f"{owner}.share_group={group} exceeds n_layers={n_layers}")
    if scheme == "block" and n_layers % group:
        raise ValueError(f"{owner}.share_group={group} must divide n_layers={n_layers} for "
                         "sharing='block'")


def window_start(scheme: str, layer, n_layers: int, group: int):
    """First table (0-indexed, before wrapping) of layer ``layer``'s window; ``layer`` may be a
    traced integer (the LM's scan over layers)."""
    if scheme == "none" or group == 1:
        return layer
    if scheme == "ring":
        return layer - (group - 1) // 2
    if scheme == "noring":
        return jnp.clip(layer - (group - 1) // 2, 0, n_layers - group)
    return group * (layer // group)


def shared_tables(scheme: str, layer: int, n_layers: int, group: int) -> list[int]:
    """The g table ids (0-indexed) layer ``layer`` reads, in window order."""
    check_sharing("shared_tables", scheme, group, n_layers)
    start = int(window_start(scheme, layer, n_layers, group))
    return [(start + w) % n_layers for w in range(group)]


def global_rows(local_slots, *, scheme: str, layer, n_layers: int, group: int,
                rows_per_table: int):
    """Local slots [...] in [0, g N) -> rows of the global [L N, D] table (int32)."""
    start = window_start(scheme, layer, n_layers, group)
    table = (start + local_slots // rows_per_table) % n_layers
    return (table * rows_per_table + local_slots % rows_per_table).astype(jnp.int32)
