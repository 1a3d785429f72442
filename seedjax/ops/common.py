"""Shared helpers of the ``seedjax.ops`` entry points: the implementation switch and dtypes.

``implementation``:
  * "auto" (the default of every memory module): by ``jax.default_backend()``: TPU -> the
    Pallas TPU kernel (float32 / bfloat16 operands), GPU and CPU -> XLA (the GPU kernels lower
    for cuda but have never been timed on a GPU, so XLA stays the GPU default);
  * "xla": this package's pure-XLA reference;
  * "pallas_tpu", "pallas_gpu": that kernel (TPU / Triton); "interpret": the TPU kernel in
    Pallas interpret mode (numerics on any backend).
Under a ``jax.set_mesh`` mesh with more than one device, kernel calls run per token shard inside
``jax.shard_map`` (``seedjax.ops.token_shards``), since XLA does not partition custom calls.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "auto", "pallas_tpu", "pallas_gpu", "interpret")
INT32_MAX = 2**31 - 1


KERNEL_DTYPES = (jnp.float32, jnp.bfloat16)


def resolve_implementation(implementation: str, *operands) -> str:
    """The implementation a call runs: "auto" -> "pallas_tpu" on a TPU backend when every
    floating operand is float32 or bfloat16, else "xla"; other names unchanged."""
    if implementation != "auto":
        return implementation
    floats = [jnp.result_type(x) for x in operands
              if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    if jax.default_backend() == "tpu" and all(d in KERNEL_DTYPES for d in floats):
        return "pallas_tpu"
    return "xla"


def check_implementation(fn: str, implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{fn}: implementation={implementation!r} is unknown; allowed: "
                         f"{IMPLEMENTATIONS}")


def score_dtype(*xs) -> jnp.dtype:
    """float32 at least (bf16 inputs score in f32; float64 stays float64 under x64)."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def top_k(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``lax.top_k`` over the last axis with -0.0 and +0.0 ranked as equal (ties keep the lowest
    index, as the Pallas kernels' iterative max does; ``lax.top_k`` alone orders -0 below +0,
    and which zero a dot product yields depends on the backend). Values, and their gradients,
    are taken from ``x``."""
    _, idx = jax.lax.top_k(jnp.where(x == 0, jnp.zeros_like(x), x), k)
    return jnp.take_along_axis(x, idx, axis=-1), idx
