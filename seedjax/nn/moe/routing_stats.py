"""Router similarity loss (Race-DiT Sec. 5, "Eq. 9-11"; notes C.5) and the load statistics of
a routing mask, as pure functions (float32; leading dims of [..., E] are flattened to N tokens).

Router similarity loss, for logits Z [N, E] and the selection mask M [N, E]:

    P    = softmax(Z) over E                  (softmax even when the gating is identity)
    P'   = P^T P    [E, E]                    probability co-activation, sum_ij P'_ij = N
    M'   = M^T M    [E, E]                    M'_ii = load of expert i, M'_ij = #tokens on i and j
    W_ii = E M'_ii / sum_a M'_aa              diagonal normalised to mean 1
    W_ij = (E^2 - E) M'_ij / sum_{a!=b} M'_ab off-diagonal normalised to mean 1, separately
    L    = (1/N) sum_ij stopgrad(W_ij) P'_ij

With uniform usage W = 1 and L = 1 (no gradient); otherwise it moves probability co-mass
away from over-used experts and over-used expert pairs. A zero denominator (nothing selected;
no token with two experts; E = 1) gives W = 0 on that part. ``axis_name``: M' is summed over
those shard_map axes first, so every shard weights its own P' by the global usage.

Statistics (no gradient), from M:
    pair_counts                  [E, E] int32   M' = M^T M
    expert_load                  [E] float32    c_e / sum c (c = M'_ee pairs per expert; 0 if none)
    max_violation                [] float32     (max_e c_e - mean_e c_e) / mean_e c_e (0 if none)
    experts_per_token_histogram  [E + 1] int32  tokens with 0, 1, ..., E experts
    combination_usage            [] float32     fraction of the E(E-1)/2 unordered pairs that,
                                                most used first, hold ``mass`` (0.95) of all
                                                co-activations (x100 = the paper's Comb %)
    routing_stats                dict of the above scalars plus mean experts per token
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from seedjax.nn.moe.racing import AxisName


def _flat(a: jax.Array) -> jax.Array:
    return a.reshape(-1, a.shape[-1])


def pair_counts(mask: jax.Array) -> jax.Array:
    """mask [..., E] bool -> M^T M [E, E] int32 (diagonal: pairs per expert)."""
    m = _flat(mask).astype(jnp.int32)
    return jnp.einsum("ni,nj->ij", m, m)


def _normalise_parts(m2: jax.Array) -> jax.Array:
    """W from M' [E, E]: diagonal and off-diagonal each scaled to mean 1 (0 if empty)."""
    e = m2.shape[0]
    eye = jnp.eye(e, dtype=bool)
    diag_sum = jnp.sum(jnp.where(eye, m2, 0.0))
    off_sum = jnp.sum(jnp.where(eye, 0.0, m2))
    w_diag = jnp.where(diag_sum > 0, e * m2 / jnp.maximum(diag_sum, 1e-30), 0.0)
    w_off = jnp.where(off_sum > 0, (e * e - e) * m2 / jnp.maximum(off_sum, 1e-30), 0.0)
    return jnp.where(eye, w_diag, w_off)


def router_similarity_loss(logits: jax.Array, mask: jax.Array,
                           axis_name: AxisName = None) -> jax.Array:
    """L_sim (module doc) from logits [..., E] and mask [..., E] bool -> [] float32."""
    z = _flat(logits).astype(jnp.promote_types(logits.dtype, jnp.float32))
    p = jax.nn.softmax(z, axis=-1)
    m2 = pair_counts(mask).astype(z.dtype)
    if axis_name is not None:
        m2 = lax.psum(m2, axis_name)
    w = lax.stop_gradient(_normalise_parts(m2))
    return jnp.sum(w * (p.T @ p)) / z.shape[0]


def expert_load(mask: jax.Array) -> jax.Array:
    """Fraction of the selected pairs on each expert, [E] float32 (all 0 if none)."""
    c = jnp.sum(_flat(mask), axis=0, dtype=jnp.int32).astype(jnp.float32)
    return c / jnp.maximum(jnp.sum(c), 1.0)


def max_violation(mask: jax.Array) -> jax.Array:
    """MaxVio = (max_e c_e - mean_e c_e) / mean_e c_e, [] float32 (0 if nothing selected)."""
    c = jnp.sum(_flat(mask), axis=0, dtype=jnp.int32).astype(jnp.float32)
    mean = jnp.mean(c)
    return jnp.where(mean > 0, (jnp.max(c) - mean) / jnp.maximum(mean, 1e-30), 0.0)


def experts_per_token_histogram(mask: jax.Array) -> jax.Array:
    """[E + 1] int32: number of tokens routed to 0, 1, ..., E experts."""
    m = _flat(mask)
    per_token = jnp.sum(m, axis=-1, dtype=jnp.int32)
    return jnp.zeros(m.shape[-1] + 1, jnp.int32).at[per_token].add(1)


def combination_usage(mask: jax.Array, mass: float = 0.95) -> jax.Array:
    """Fraction of the E(E-1)/2 expert pairs needed, most co-activated first, to hold ``mass``
    of all co-activations, [] float32 in (0, 1] (0 if no token has two experts, or E = 1)."""
    if not 0 < mass <= 1:
        raise ValueError(f"mass={mass!r} must be in (0, 1]")
    m2 = pair_counts(mask)
    e = m2.shape[0]
    if e < 2:
        return jnp.zeros((), jnp.float32)
    i, j = jnp.triu_indices(e, k=1)
    c = jnp.sort(m2[i, j].astype(jnp.float32))[::-1]
    total = jnp.sum(c)
    cum = jnp.cumsum(c) / jnp.maximum(total, 1.0)
    needed = jnp.minimum(jnp.sum(cum < mass) + 1, c.size)
    return jnp.where(total > 0, needed / c.size, 0.0).astype(jnp.float32)


def routing_stats(mask: jax.Array, mass: float = 0.95) -> dict[str, jax.Array]:
    """Scalars to log for one routing: max_violation, combination_usage, experts_per_token
    (mean), tokens_without_expert (fraction)."""
    hist = experts_per_token_histogram(mask)
    n = jnp.maximum(jnp.sum(hist), 1).astype(jnp.float32)
    return {"max_violation": max_violation(mask),
            "combination_usage": combination_usage(mask, mass),
            "experts_per_token": jnp.sum(hist * jnp.arange(hist.size)) / n,
            "tokens_without_expert": hist[0] / n}
