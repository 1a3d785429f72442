"""Row ids of hashed n-gram tables (Over-Tokenized Transformer, Algorithm 1), exact in int32.

The n-gram id of order n at position t is ``g = sum_{a=0}^{n-1} x_{t-a} V^a`` (the current token
has weight 1, the oldest ``V^(n-1)``), and a slice table with modulus M reads row ``g mod M``. In
JAX's default 32-bit mode ``V^a`` overflows for any real vocabulary, so the row is computed as
``sum_a (x_{t-a} * c_a) mod M`` with ``c_a = V^a mod M`` computed exactly on the host (Python
integers) and each product reduced by shift-and-add over the bits of ``x`` in uint32: every
partial value stays below ``2 M <= 2^32``, so the result is exact for any ``V <= 2^31`` and any
modulus ``M <= 2^31 - 1`` (tested against Python big integers).

Look-back and document boundaries (``lagged_tokens``): lag ``a`` of position t reads ``x_{t-a}``
and reads the pad id 0 instead when ``t - a`` lies before the sequence (the paper's rule) or in
another document, i.e. when ``segments[t - a] != segments[t]``. Segments come from one of:

* ``boundary="eos"`` (default; LongCat's convention): ``segments[t]`` = the number of eos tokens
  strictly before t, so the token after an eos starts fresh while the eos itself keeps its
  document's look-back;
* ``boundary="segment"`` (Marin's convention): caller-supplied segment ids (e.g. packed-document
  ids), tokens of another segment are zeroed;
* ``boundary="none"``: only the sequence start cuts the look-back (the paper's Eq. 1).

Decode carries the last ``n - 1`` tokens (and segment ids) as a history prepended to the new
tokens: ``rows(history ++ tokens)`` restricted to the new positions equals the full forward
(an all-zero history with segment -1 is exactly "before the sequence").

Injectivity (``check_moduli``): lag a enters as ``x -> V^a x mod M``, which is one-to-one on
[0, V) iff ``M / gcd(V^a, M) >= V``. A modulus that is a multiple of V makes lag 1 collide
structurally (Table 4 of the paper) and is an error unless the table is exact (``M >= V^n``); a
lag whose period ``M / gcd(V^a, M)`` is below V is a warning that states the period (e.g. the
paper's m = 12,800,000 with Llama-3's V = 128,256: lag-1 period 50,000).
"""
from __future__ import annotations

import math
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

BOUNDARIES = ("eos", "segment", "none")
MAX_MODULUS = 2**31 - 1


def check_boundary(boundary: str, owner: str = "boundary") -> str:
    if boundary not in BOUNDARIES:
        raise ValueError(f"{owner}={boundary!r} is not allowed; allowed: {BOUNDARIES}")
    return boundary


def lag_period(vocab_size: int, modulus: int, lag: int) -> int:
    """Number of distinct values of ``x V^lag mod M`` as x runs over the integers."""
    return modulus // math.gcd(vocab_size**lag % modulus or modulus, modulus)


def check_moduli(vocab_size: int, moduli: Sequence[int], orders: Sequence[int], *,
                 owner: str = "over_encoding", allow_multiple: bool = False) -> list[str]:
    """Validates slice moduli (``moduli[s]`` belongs to n-gram order ``orders[s]``).

    ValueError when a modulus is out of (0, 2^31 - 1] or a multiple of V for a hashed table
    (``allow_multiple=True``: a warning instead, for the paper's Table 4 ablation); a warning
    (returned and issued) for every lag whose period is below V."""
    notes = []
    for s, (m, n) in enumerate(zip(moduli, orders)):
        if not isinstance(m, (int, np.integer)) or not 0 < m <= MAX_MODULUS:
            raise ValueError(f"{owner}: slice {s} modulus {m!r} must be an integer in "
                             f"[1, {MAX_MODULUS}]")
        if m >= vocab_size**n:  # every n-gram id < V^n has its own row: nothing is hashed
            continue
        if m % vocab_size == 0 and not allow_multiple:
            raise ValueError(f"{owner}: slice {s} (order {n}) modulus {m} is a multiple of the "
                             f"vocabulary size {vocab_size}: the previous token would only enter "
                             f"mod {m // vocab_size} (structured collisions, paper Table 4); "
                             "choose m not divisible by V (or allow_collisions=True)")
        for lag in range(n):
            period = lag_period(vocab_size, m, lag)
            if period < vocab_size:
                notes.append(f"{owner}: slice {s} (order {n}, modulus {m}): lag {lag} has "
                             f"period {period} < V = {vocab_size}; tokens that differ by a "
                             f"multiple of {period} at that lag share rows")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return notes


def _mulmod(x: jax.Array, c: int, modulus: int, bits: int) -> jax.Array:
    """(x * c) mod M exactly, for int x in [0, 2^bits) and 0 <= c < M <= 2^31 - 1 -> uint32."""
    x = x.astype(jnp.uint32)
    acc = jnp.zeros(x.shape, jnp.uint32)
    step = c % modulus
    m = jnp.uint32(modulus)
    for b in range(bits):
        if step:
            term = jnp.where((x >> b) & 1, jnp.uint32(step), jnp.uint32(0))
            acc = acc + term                       # both < M <= 2^31 - 1: no uint32 wrap
            acc = jnp.where(acc >= m, acc - m, acc)
        step = (2 * step) % modulus
    return acc


def segments_of(tokens: jax.Array, boundary: str, eos_id: int,
                segment_ids: jax.Array | None) -> jax.Array | None:
    """Segment ids int32 [..., T] deciding look-back cuts (module docstring), or None (none)."""
    if boundary == "none":
        return None
    if boundary == "segment":
        if segment_ids is None:
            raise ValueError("boundary='segment' needs segment_ids (int [B, T], one id per "
                             "packed document); use boundary='eos' to cut at eos tokens")
        return segment_ids.astype(jnp.int32)
    is_eos = (tokens == eos_id).astype(jnp.int32)
    return jnp.cumsum(is_eos, axis=-1) - is_eos


def lagged_tokens(tokens: jax.Array, segments: jax.Array | None, lag: int) -> jax.Array:
    """x_{t-lag} int32 [..., T] with pad 0 before the sequence start or across a boundary."""
    tokens = tokens.astype(jnp.int32)
    if lag == 0:
        return tokens
    pad = [(0, 0)] * (tokens.ndim - 1) + [(lag, 0)]
    shifted = jnp.pad(tokens, pad)[..., :tokens.shape[-1]]
    if segments is None:
        return shifted
    prev = jnp.pad(segments, pad, constant_values=-1)[..., :tokens.shape[-1]]
    return jnp.where(prev == segments, shifted, 0)


def ngram_rows(tokens: jax.Array, *, vocab_size: int, orders: Sequence[int],
               moduli: Sequence[int], offsets: Sequence[int] | None = None,
               segments: jax.Array | None = None) -> jax.Array:
    """Row ids int32 [..., T, S] of S slices: slice s hashes the order-``orders[s]`` n-gram ending
    at each position with modulus ``moduli[s]`` and adds ``offsets[s]`` (flat-table row offset).

    tokens int [..., T] in [0, V); segments int [..., T] or None (see ``lagged_tokens``)."""
    if len(orders) != len(moduli):
        raise ValueError(f"ngram_rows: {len(orders)} orders but {len(moduli)} moduli")
    offsets = [0] * len(moduli) if offsets is None else list(offsets)
    rows = max((o + m for o, m in zip(offsets, moduli)), default=0)
    if rows > MAX_MODULUS + 1:
        raise ValueError(f"ngram_rows: the flat table has {rows} rows, more than int32 row ids "
                         f"address ({MAX_MODULUS + 1})")
    bits = max(int(vocab_size - 1).bit_length(), 1)
    lags = {a: lagged_tokens(tokens, segments, a) for a in range(max(orders, default=1))}
    cols = []
    for n, m, off in zip(orders, moduli, offsets):
        acc = jnp.zeros(tokens.shape, jnp.uint32)
        mu = jnp.uint32(m)
        for a in range(n):
            term = _mulmod(lags[a], pow(vocab_size, a, m), m, bits)
            acc = acc + term
            acc = jnp.where(acc >= mu, acc - mu, acc)
        cols.append(acc.astype(jnp.int32) + jnp.int32(off))
    return jnp.stack(cols, axis=-1)
