"""Expert Race selection: exact top-K over a flattened score tensor, and the EMA threshold
that replaces it at inference (Race-DiT, arXiv 2503.16057, Sec. 4; notes C.3, C.4, C.15).

Selection. For scores S [B, L, E] and k experts per token on average, K = B L k:

    mask = the K highest-ranked entries of flatten(S)    ties="index": exactly K
         = every entry ranked at or above the K-th       ties="ge": K + excess (reported)

Order (both tie modes, both methods): by value, with -0.0 == +0.0; NaN ranks below -inf (all
NaNs equal); among equal values the lower flattened (row-major) index ranks higher. So
"index" selects exactly K pairs, +inf first, and a NaN only when K exceeds the number of
non-NaN scores; "ge" is the community Race-DiT rule ``S >= kth`` (ties can add pairs; under
this order every NaN is selected only when the K-th value itself is NaN). XLA on CPU flushes
float32 subnormals to zero (checked), so there they tie with 0.

``top_count_mask`` is the general rule of C.3, "keep the top ``count`` of every group": the
``axes`` of S form the candidates of a group (flattened row-major), the remaining axes index
the groups. Expert choice per image is axes=(1,) of [B, L, E], per batch axes=(0, 1), Expert
Race all three axes (``race_select``).

Two methods give the same mask (tested equal):
* "top_k": ``jax.lax.top_k`` of the sortable keys (exact; equal keys -> lower index first,
  as documented by ``lax.top_k``). The reference.
* "threshold": the algorithm the Pallas kernel will implement, made of counting passes only:
    1. key = sortable_key(S), an order-preserving integer view (below), as unsigned u;
    2. the K-th largest t = max{t : #(u >= t) >= K}, set bit by bit from the top
       (32 passes for float32, 16 for bfloat16/float16), each one compare + count over N;
    3. gt = u > t (fewer than K), eq = u == t, need = K - #gt >= 1;
    4. "index": j = max{j : #(eq & idx < j) < need} by a second bitwise search over the flat
       index (bit_length(N) passes); mask = gt | (eq & idx <= j).  "ge": mask = u >= t.
  Every pass needs only a count, so across data-parallel shards (``axis_name``) each pass is
  one ``psum`` of [groups] int32 and a shard's flat indices are offset by its position; no
  score moves between shards. ("top_k" with ``axis_name`` all-gathers the keys instead.)

Sortable key (int32, signed order): b = the float's bit pattern as a signed integer after
-0.0 -> +0.0; key = b if b >= 0 else b XOR 0x7FFFFFFF (16-bit floats: their 16-bit pattern,
XOR 0x7FFF, widened to int32); NaN -> INT32_MIN (16-bit floats: -2**15), below -inf's key.
Adding 2**31 (2**15) gives the unsigned form, "flip every bit if negative, else flip the sign
bit", that FlashInfer / vLLM radix top-k use; the searches run on that unsigned form.

Inference threshold (``RaceThreshold``): during training tau <- decay tau + (1 - decay) kth
(float32; community values decay 0.95, tau_0 1.0), at inference a pair is selected iff its
score > tau, element-wise, so a sample's routing does not depend on the rest of the batch.
tau is a ``RouterStat`` (an ``nnx.BatchStat``), never an ``nnx.Param``: seedjax's optimizer
and ``ModelDef`` see only Params, so a trainer must carry and checkpoint RouterStat state
explicitly (see the class docstring).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from seedjax.validation import check_choice

TIES = ("index", "ge")
METHODS = ("top_k", "threshold")
SCORE_DTYPES = ("float32", "bfloat16", "float16")

AxisName = str | tuple[str, ...] | None


class RaceInfo(NamedTuple):
    kth: jax.Array      # [] float32: the K-th largest score (+inf when K = 0); inference: tau
    excess: jax.Array   # [] int32: pairs selected - K (0 with ties="index"; this shard's count
                        #   minus its share at inference; global in training with axis_name)
    counts: jax.Array   # [E] int32: selected pairs per expert (this shard's tokens)


def key_bits(dtype) -> int:
    """Bits of the sortable key of a score dtype: 32 (float32) or 16 (bfloat16, float16)."""
    d = jnp.dtype(dtype)
    if d == jnp.float32:
        return 32
    if d in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return 16
    raise ValueError(f"scores dtype={d} is not allowed; allowed: {SCORE_DTYPES}")


def sortable_key(scores: jax.Array) -> jax.Array:
    """scores [...] float32 | bfloat16 | float16 -> int32 keys [...] with
    key(a) < key(b) iff a ranks below b (NaN lowest, -0.0 == +0.0; see the module doc)."""
    bits = key_bits(scores.dtype)
    x = jnp.where(scores == 0, jnp.zeros_like(scores), scores)
    if bits == 32:
        b = lax.bitcast_convert_type(x, jnp.int32)
        key = jnp.where(b < 0, b ^ jnp.int32(0x7FFFFFFF), b)
    else:
        b = lax.bitcast_convert_type(x, jnp.int16).astype(jnp.int32)
        key = jnp.where(b < 0, b ^ jnp.int32(0x7FFF), b)
    return jnp.where(jnp.isnan(scores), jnp.int32(-2 ** (bits - 1)), key)


def key_to_score(key: jax.Array, dtype) -> jax.Array:
    """Inverse of ``sortable_key`` (the NaN key gives NaN; 0 gives +0.0)."""
    bits = key_bits(dtype)
    key = jnp.asarray(key, jnp.int32)
    if bits == 32:
        b = jnp.where(key < 0, key ^ jnp.int32(0x7FFFFFFF), key)
        x = lax.bitcast_convert_type(b, jnp.float32)
    else:
        b = jnp.where(key < 0, key ^ jnp.int32(0x7FFF), key).astype(jnp.int16)
        x = lax.bitcast_convert_type(b, jnp.dtype(dtype))
    return jnp.where(key == -2 ** (bits - 1), jnp.full_like(x, jnp.nan), x)


def _to_unsigned(key: jax.Array, bits: int) -> jax.Array:
    if bits == 32:
        return lax.bitcast_convert_type(key, jnp.uint32) ^ jnp.uint32(0x80000000)
    return (key + 2 ** 15).astype(jnp.uint32)


def _from_unsigned(u: jax.Array, bits: int) -> jax.Array:
    if bits == 32:
        return lax.bitcast_convert_type(u ^ jnp.uint32(0x80000000), jnp.int32)
    return u.astype(jnp.int32) - 2 ** 15


def _count(pred: jax.Array, axis_name: AxisName) -> jax.Array:
    """#True along the last axis [G, n] -> [G] int32, summed over shards with ``axis_name``."""
    c = jnp.sum(pred, axis=-1, dtype=jnp.int32)
    return c if axis_name is None else lax.psum(c, axis_name)


def _kth_unsigned(u: jax.Array, count: int, bits: int, axis_name: AxisName) -> jax.Array:
    """u [G, n] uint32 -> t [G] uint32, the count-th largest of each row (1 <= count <= n)."""
    def body(i, t):
        cand = t | (jnp.uint32(1) << (bits - 1 - i).astype(jnp.uint32))
        return jnp.where(_count(u >= cand[:, None], axis_name) >= count, cand, t)
    return lax.fori_loop(0, bits, body, jnp.zeros_like(u[:, 0]))


def _shard_offset(n: int, axis_name: AxisName) -> tuple[jax.Array | int, int]:
    """(flat index of this shard's first candidate, candidates over all shards)."""
    if axis_name is None:
        return 0, n
    return lax.axis_index(axis_name) * n, n * lax.axis_size(axis_name)


def _select_threshold(keys, count, bits, ties, axis_name):
    """Counting-pass selection on keys [G, n] int32 -> (mask [G, n], kth key [G])."""
    u = _to_unsigned(keys, bits)
    t = _kth_unsigned(u, count, bits, axis_name)
    if ties == "ge":
        return u >= t[:, None], _from_unsigned(t, bits)
    gt, eq = u > t[:, None], u == t[:, None]
    need = count - _count(gt, axis_name)
    offset, n_all = _shard_offset(keys.shape[1], axis_name)
    idx = offset + jnp.arange(keys.shape[1], dtype=jnp.int32)
    n_bits = max(1, (n_all - 1).bit_length())

    def body(i, j):
        cand = j | (jnp.int32(1) << (n_bits - 1 - i))
        return jnp.where(_count(eq & (idx < cand[:, None]), axis_name) < need, cand, j)

    j = lax.fori_loop(0, n_bits, body, jnp.zeros_like(need))
    return gt | (eq & (idx <= j[:, None])), _from_unsigned(t, bits)


def _select_top_k(keys, count, ties, axis_name):
    """lax.top_k selection on keys [G, n] int32 -> (mask [G, n], kth key [G])."""
    n = keys.shape[1]
    full = keys if axis_name is None else lax.all_gather(keys, axis_name, axis=1, tiled=True)
    values, idx = lax.top_k(full, count)
    kth = values[:, -1]
    if ties == "ge":
        mask = full >= kth[:, None]
    else:
        rows = jnp.arange(full.shape[0])[:, None]
        mask = jnp.zeros(full.shape, bool).at[rows, idx].set(True)
    if axis_name is not None:
        mask = lax.dynamic_slice_in_dim(mask, lax.axis_index(axis_name) * n, n, axis=1)
    return mask, kth


def top_count_mask(scores: jax.Array, count: int, *, axes: Sequence[int],
                   ties: str = "index", method: str = "top_k", axis_name: AxisName = None
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keep the top ``count`` entries of every group (module doc for the order and ties).

    scores: [...] float32 | bfloat16 | float16. ``axes``: the axes whose entries, flattened
    row-major, are the candidates of one group; the other axes index groups (G of them).
    ``count``: a static int in [0, n] (n = candidates per group over all shards).
    ``axis_name``: mesh axis (or axes) of a ``shard_map`` over which axis 0 of ``scores`` is
    split; the groups then span all shards (axis 0 must be the first of ``axes``).

    Returns (mask [...] bool like scores, kth [group shape] float32 (the count-th largest of each
    group, +inf if count = 0), excess [group shape] int32 (selected - count; 0 for "index")).
    """
    check_choice("ties", ties, TIES)
    check_choice("method", method, METHODS)
    bits = key_bits(scores.dtype)
    nd = scores.ndim
    axes = sorted({a % nd for a in axes}) if nd else []
    if not axes:
        raise ValueError(f"axes={axes} must name at least one axis of scores {scores.shape}")
    if axis_name is not None and axes[0] != 0:
        raise ValueError(f"axes={tuple(axes)} must start with the sharded axis 0 when "
                         f"axis_name={axis_name!r}")
    rest = [a for a in range(nd) if a not in axes]
    group_shape = tuple(scores.shape[a] for a in rest)
    n = math.prod(scores.shape[a] for a in axes)
    n_all = n if axis_name is None else n * lax.axis_size(axis_name)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= n_all:
        raise ValueError(f"count={count!r} must be an integer in [0, {n_all}] (candidates per "
                         "group)")
    if n_all >= 2 ** 31:
        raise ValueError(f"{n_all} candidates per group do not fit int32 indices")
    if count == 0:
        return (jnp.zeros(scores.shape, bool), jnp.full(group_shape, jnp.inf, jnp.float32),
                jnp.zeros(group_shape, jnp.int32))
    perm = rest + axes
    keys = sortable_key(jnp.transpose(scores, perm)).reshape(-1, n)
    if method == "threshold":
        mask, kth = _select_threshold(keys, count, bits, ties, axis_name)
    else:
        mask, kth = _select_top_k(keys, count, ties, axis_name)
    excess = (_count(mask, axis_name) - count if ties == "ge"
              else jnp.zeros(keys.shape[:1], jnp.int32))
    mask = jnp.transpose(mask.reshape([scores.shape[a] for a in perm]), _inverse(perm))
    kth = key_to_score(kth, scores.dtype).astype(jnp.float32)
    return mask, kth.reshape(group_shape), excess.reshape(group_shape)


def _inverse(perm: list[int]) -> list[int]:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def expert_counts(mask: jax.Array) -> jax.Array:
    """mask [..., E] bool -> [E] int32 selected pairs per expert (the selection's histogram)."""
    return jnp.sum(mask.reshape(-1, mask.shape[-1]), axis=0, dtype=jnp.int32)


def race_budget(scores_shape: Sequence[int], k_per_token: int, n_shards: int = 1) -> int:
    """K = tokens x k: tokens = prod(scores_shape[:-1]) x n_shards."""
    n_experts = scores_shape[-1]
    if isinstance(k_per_token, bool) or not isinstance(k_per_token, int) or not (
            0 <= k_per_token <= n_experts):
        raise ValueError(f"k_per_token={k_per_token!r} must be an integer in [0, n_experts="
                         f"{n_experts}]")
    return math.prod(scores_shape[:-1]) * n_shards * k_per_token


def race_select(scores: jax.Array, k_per_token: int, *, ties: str = "index",
                method: str = "top_k", axis_name: AxisName = None
                ) -> tuple[jax.Array, RaceInfo]:
    """Expert Race: the global top-K of scores [B, L, E] (any [..., E] with >= 2 dims),
    K = B L k_per_token (B over all shards of ``axis_name``; scores split on axis 0).

    Returns (mask [B, L, E] bool, RaceInfo(kth [] float32, excess [] int32, counts [E] int32)).
    With ties="index" exactly K pairs are selected (over all shards); a token may get 0..E
    experts and an expert 0..B L tokens.
    """
    if scores.ndim < 2:
        raise ValueError(f"scores shape {scores.shape} must be [..., E] with >= 2 dims")
    n_shards = 1 if axis_name is None else lax.axis_size(axis_name)
    count = race_budget(scores.shape, k_per_token, n_shards)
    mask, kth, excess = top_count_mask(scores, count, axes=range(scores.ndim), ties=ties,
                                       method=method, axis_name=axis_name)
    return mask, RaceInfo(kth, excess, expert_counts(mask))


def kth_largest(scores: jax.Array, count: int, *, method: str = "threshold",
                axis_name: AxisName = None) -> jax.Array:
    """The ``count``-th largest entry of scores [...] (over all of it and all shards of
    ``axis_name``) as [] float32 in the module's order (NaN lowest; +inf if count = 0)."""
    return top_count_mask(scores, count, axes=range(scores.ndim), ties="ge", method=method,
                          axis_name=axis_name)[1]


class RouterStat(nnx.BatchStat):
    """A non-trainable router statistic (e.g. the Expert Race threshold).

    Not an ``nnx.Param``: ``nnx.Optimizer(wrt=nnx.Param)`` and seedjax's trainer
    (``train/state.py``: ``nnx.split(model, nnx.Param, ...)``) never differentiate or update
    it. Select it with ``nnx.state(model, RouterStat)`` (or ``nnx.BatchStat``). The seedjax
    trainer today carries only Params in its train state (and so in checkpoints); non-Param
    variables sit in ``ModelDef.rest``, frozen at their abstract values: a trainer must carry
    ``nnx.to_pure_dict(nnx.state(model, RouterStat))`` in its state to train and save them.
    """


class RaceThreshold(nnx.Module):
    """Expert Race selection with the inference threshold of C.4 (one per MoE layer).

    ``RaceThreshold(decay=0.95, init=1.0, sync_axes=None, sync_race=True, ties="index",
    method="top_k", use_running_average=False)``;
    ``(scores [B, L, E], k_per_token) -> (mask [B, L, E] bool, RaceInfo)``.

    Training (``use_running_average`` False, set by ``model.train()``): the exact race
    (``race_select``), then tau <- decay tau + (1 - decay) kth in float32; a non-finite kth
    (NaN, +-inf, or K = 0) leaves tau unchanged.
    Inference (True, set by ``model.eval()``): mask = scores > tau element-wise (NaN never),
    independent of the other samples; ``excess`` = selected - B L k.

    ``sync_axes``: data-parallel mesh axes (inside ``shard_map``). With ``sync_race`` the race
    itself is global over those axes (K = global B L k; every shard gets the same kth), else
    each shard races its own tokens and the shards' finite kth values are averaged
    (``psum``/count) before the update. Either way every shard holds the identical tau.
    """

    def __init__(self, *, decay: float = 0.95, init: float = 1.0, sync_axes: AxisName = None,
                 sync_race: bool = True, ties: str = "index", method: str = "top_k",
                 use_running_average: bool = False):
        if not (isinstance(decay, (int, float)) and 0 <= decay < 1):
            raise ValueError(f"RaceThreshold.decay={decay!r} must be a number in [0, 1)")
        if not (isinstance(init, (int, float)) and math.isfinite(init)):
            raise ValueError(f"RaceThreshold.init={init!r} must be a finite number")
        check_choice("RaceThreshold.ties", ties, TIES)
        check_choice("RaceThreshold.method", method, METHODS)
        self.decay, self.sync_axes, self.sync_race = float(decay), sync_axes, bool(sync_race)
        self.ties, self.method = ties, method
        self.use_running_average = use_running_average
        self.tau = RouterStat(jnp.asarray(init, jnp.float32))

    def update(self, kth: jax.Array) -> None:
        """tau <- decay tau + (1 - decay) kth (kth [] float; averaged over ``sync_axes``
        unless ``sync_race``); skipped when no finite kth."""
        kth = jnp.asarray(kth, jnp.float32)
        ok = jnp.isfinite(kth)
        if self.sync_axes is not None and not self.sync_race:
            n = lax.psum(ok.astype(jnp.float32), self.sync_axes)
            kth = lax.psum(jnp.where(ok, kth, 0.0), self.sync_axes) / jnp.maximum(n, 1.0)
            ok = n > 0
        tau = self.tau[...]
        self.tau[...] = jnp.where(ok, self.decay * tau + (1 - self.decay) * kth, tau)

    def __call__(self, scores: jax.Array, k_per_token: int, *,
                 use_running_average: bool | None = None) -> tuple[jax.Array, RaceInfo]:
        infer = self.use_running_average if use_running_average is None else use_running_average
        if infer:
            count = race_budget(scores.shape, k_per_token)
            tau = self.tau[...]
            mask = scores.astype(jnp.float32) > tau
            excess = jnp.sum(mask, dtype=jnp.int32) - count
            return mask, RaceInfo(tau, excess, expert_counts(mask))
        axis = self.sync_axes if self.sync_race else None
        mask, info = race_select(scores, k_per_token, ties=self.ties, method=self.method,
                                 axis_name=axis)
        self.update(info.kth)
        return mask, info
