"""Token-level losses shared by the LM heads and objectives."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token cross-entropy (nats): logits [..., V], targets int [...] -> float32 [...]."""
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    return lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
