"""Shared helpers of the ``seedjax.ops`` entry points: the implementation switch and dtypes."""
from __future__ import annotations

import jax.numpy as jnp

IMPLEMENTATIONS = ("xla",)
INT32_MAX = 2**31 - 1


def check_implementation(fn: str, implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{fn}: implementation={implementation!r} is unknown; allowed: "
                         f"{IMPLEMENTATIONS}")


def score_dtype(*xs) -> jnp.dtype:
    """float32 at least (bf16 inputs score in f32; float64 stays float64 under x64)."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)
