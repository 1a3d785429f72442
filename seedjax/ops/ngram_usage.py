"""How an over-encoding table is used by a token stream: hits and collisions per slice.

For slice s (order n, modulus M) and the n-grams ending at every position of a token stream
(with the module's boundary rule), ``table_usage`` reports

* ``ngrams``: distinct n-grams seen (an n-gram = the n lagged tokens, pads included);
* ``rows_hit``: distinct rows they read, and ``occupancy`` = rows_hit / M;
* ``collision_rate``: the fraction of distinct n-grams that share their row with another
  distinct n-gram seen in the stream (0 for an injective table on this data);
* ``token_collision_rate``: the same counted per position (how often a token reads a shared row);
* ``max_ngrams_per_row`` and ``max_row_hits`` (positions reading the busiest row).

Everything is exact NumPy int64 host arithmetic (x V^a mod M computed as x (V^a mod M) mod M,
products < 2^62), independent of the JAX int32 path it checks. NumPy only. ``config`` is any
object with ``vocab_size, slice_orders, moduli, boundary, eos_id`` (an ``OverEncodingConfig``).
"""
from __future__ import annotations

from typing import Any

import numpy as np


def _segments(tokens: np.ndarray, boundary: str, eos_id: int, segment_ids) -> np.ndarray | None:
    if boundary == "none":
        return None
    if boundary == "segment":
        if segment_ids is None:
            raise ValueError("boundary='segment' needs segment_ids")
        return np.asarray(segment_ids, np.int64)
    is_eos = (tokens == eos_id).astype(np.int64)
    return np.cumsum(is_eos, axis=-1) - is_eos


def lag_matrix(tokens: np.ndarray, order: int, segments: np.ndarray | None) -> np.ndarray:
    """[..., T, order] int64: x_{t-a} for a = 0..order-1 with pad 0 before the start or across a
    boundary (the rule of ``seedjax.ops.ngram_rows``)."""
    tokens = np.asarray(tokens, np.int64)
    t = tokens.shape[-1]
    cols = []
    for a in range(order):
        shifted = np.zeros_like(tokens)
        shifted[..., a:] = tokens[..., :t - a]
        if segments is not None and a:
            prev = np.full_like(segments, -1)
            prev[..., a:] = segments[..., :t - a]
            shifted = np.where(prev == segments, shifted, 0)
        cols.append(shifted)
    return np.stack(cols, axis=-1)


def table_usage(config: Any, tokens, *, segment_ids=None) -> list[dict]:
    """Per-slice usage statistics (module docstring) of tokens int [T] or [B, T]."""
    tokens = np.atleast_2d(np.asarray(tokens, np.int64))
    if tokens.size == 0:
        raise ValueError("table_usage needs at least one token")
    if tokens.min() < 0 or tokens.max() >= config.vocab_size:
        raise ValueError(f"token ids must be in [0, {config.vocab_size}), got "
                         f"[{tokens.min()}, {tokens.max()}]")
    segs = _segments(tokens, config.boundary, config.eos_id, segment_ids)
    out = []
    lags = {n: lag_matrix(tokens, n, segs).reshape(-1, n) for n in set(config.slice_orders)}
    for s, (n, m) in enumerate(zip(config.slice_orders, config.moduli)):
        grams, counts = np.unique(lags[n], axis=0, return_counts=True)
        coef = np.array([pow(config.vocab_size, a, m) for a in range(n)], np.int64)
        rows = np.zeros(len(grams), np.int64)
        for a in range(n):
            rows = (rows + (grams[:, a] * coef[a]) % m) % m
        row_ids, inverse, per_row = np.unique(rows, return_inverse=True, return_counts=True)
        shared = per_row[inverse] > 1
        hits = np.bincount(inverse, weights=counts)
        out.append(dict(slice=s, order=n, modulus=m, positions=int(counts.sum()),
                        ngrams=int(len(grams)), rows_hit=int(len(row_ids)),
                        occupancy=len(row_ids) / m,
                        collision_rate=float(shared.mean()),
                        token_collision_rate=float(counts[shared].sum() / counts.sum()),
                        max_ngrams_per_row=int(per_row.max()), max_row_hits=int(hits.max())))
    return out


def usage_metrics(usage: list[dict]) -> dict[str, float]:
    """Flat metric names for logs: ``oe/<stat>/s<slice>``."""
    keys = ("collision_rate", "token_collision_rate", "occupancy", "ngrams", "rows_hit")
    return {f"oe/{k}/s{u['slice']}": float(u[k]) for u in usage for k in keys}
