"""Shared helpers of the ``seedjax.ops`` entry points: the implementation switch and dtypes.

``implementation``:
  * "xla": this package's pure-XLA reference (the default of every memory module);
  * "auto": ``kernels_pallas`` picks by ``jax.default_backend()`` (TPU -> the Pallas TPU kernel,
    GPU and CPU -> XLA, since the GPU kernels have never been compiled or timed on a GPU);
  * "pallas_tpu", "pallas_gpu": that kernel (TPU / Triton); "interpret": the TPU kernel in
    Pallas interpret mode (numerics on any backend).
Pallas kernels are not auto-partitioned: under a multi-device mesh call them inside
``jax.shard_map`` (see ``seedjax.ops.sharded_lookup``) or keep "xla".
"""
from __future__ import annotations

import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "auto", "pallas_tpu", "pallas_gpu", "interpret")
INT32_MAX = 2**31 - 1


def kernel_implementation(implementation: str) -> str | None:
    """The ``kernels_pallas`` name of a non-"xla" implementation ("auto" -> None)."""
    return None if implementation == "auto" else implementation


def check_implementation(fn: str, implementation: str) -> None:
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{fn}: implementation={implementation!r} is unknown; allowed: "
                         f"{IMPLEMENTATIONS}")


def score_dtype(*xs) -> jnp.dtype:
    """float32 at least (bf16 inputs score in f32; float64 stays float64 under x64)."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)
