"""The specification of the expert race: ``seedjax.nn.moe.racing`` (not restated here).

Unlike the other kernel folders, whose reference.py restates an op independently, this one is
a thin view of ``seedjax.nn.moe.racing``: the order (NaN lowest, -0.0 == +0.0, lower flat
index first among equal values), the tie modes and ``RaceInfo`` are defined there once, and
the kernel must reproduce them bit for bit. This file is the only place in
``kernels_pallas/expert_race`` that imports seedjax; ``seedjax.nn.moe.racing`` itself imports
only jax, flax and ``seedjax.validation`` (never kernels_pallas), so there is no cycle.

Re-exported for the kernel: ``sortable_key`` (evaluated inside the Mosaic kernel on float32
tiles), ``key_to_score`` (kth from the kernel's threshold key), ``key_bits``, ``race_budget``,
``RaceInfo``, ``TIES``, ``SCORE_DTYPES``.
"""
from __future__ import annotations

import jax

from seedjax.nn.moe.racing import (SCORE_DTYPES, TIES, RaceInfo, expert_counts, key_bits,
                                   key_to_score, race_budget, race_select, sortable_key,
                                   top_count_mask)

__all__ = ["SCORE_DTYPES", "TIES", "RaceInfo", "expert_counts", "expert_race_reference",
           "key_bits", "key_to_score", "race_budget", "sortable_key", "top_count_mask"]


def expert_race_reference(scores: jax.Array, k_per_token: int, *, ties: str = "index",
                          method: str = "top_k") -> tuple[jax.Array, RaceInfo]:
    """``racing.race_select`` on one device: scores [..., E] (>= 2 dims) ->
    (mask bool like scores, RaceInfo(kth [] f32, excess [] i32, counts [E] i32)).
    method "top_k" (``lax.top_k`` of the keys, the reference) or "threshold" (the counting
    passes the kernel implements, in XLA)."""
    return race_select(scores, k_per_token, ties=ties, method=method)
