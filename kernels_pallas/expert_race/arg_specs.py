"""Argument shapes shared by the tests and the benchmark.

``TINY``: interpret-mode numerics on CPU (a few chunks of 32 rows at most). ``PRODUCTION``:
Race-DiT routing at one chip's batch (race_dit.md C.4, Table 5's k-in-E settings): scores
[B, L, E] with L = 256 tokens per image (256x256 images, patch 2, latent 32x32), B = 32..256
images per chip, E = 8..128 experts, k = 1..8 experts per token on average, so N = B L E up to
8.4M scores and K = B L k. Used for export / TPU compile checks and the CPU benchmark.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class RaceSpec:
    """One race: scores [*shape] (the last axis is E), ``k_per_token``, dtype, tie mode."""
    name: str
    shape: tuple[int, ...]
    k_per_token: int
    dtype: str = "float32"
    ties: str = "index"

    @property
    def scores(self) -> int:
        return math.prod(self.shape)

    @property
    def count(self) -> int:
        """K = tokens x k."""
        return self.scores // self.shape[-1] * self.k_per_token

    def shape_struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, jnp.dtype(self.dtype))

    def make(self, seed: int = 0) -> jax.Array:
        """Standard normal scores (identity gating: raw router logits), fixed numpy seed."""
        x = np.random.default_rng(seed).standard_normal(self.shape, dtype=np.float32)
        return jnp.asarray(x, jnp.dtype(self.dtype))

    def kwargs(self) -> dict:
        return dict(k_per_token=self.k_per_token, ties=self.ties)


TINY = (
    RaceSpec("race_tiny_2in8", (4, 16, 8), 2),
    RaceSpec("race_tiny_bf16_e6", (3, 10, 6), 3, dtype="bfloat16"),
    RaceSpec("race_tiny_ge", (2, 40, 8), 1, ties="ge"),
    RaceSpec("race_tiny_e300", (5, 300), 4),
    RaceSpec("race_tiny_f16", (2, 24, 16), 2, dtype="float16"),
)

# (batch per chip, E, k): B/2 2-in-8 (the paper's ablation default), 4-in-32 (Table 4's
# B/2..XL/2 MoE), 8-in-64 / 8-in-128 (Table 5's largest), 1-in-16; bf16 and "ge" variants.
PRODUCTION = (
    RaceSpec("b256_2in8", (256, 256, 8), 2),
    RaceSpec("b32_4in32", (32, 256, 32), 4),
    RaceSpec("b256_4in32_bf16", (256, 256, 32), 4, dtype="bfloat16"),
    RaceSpec("b64_1in16_ge", (64, 256, 16), 1, ties="ge"),
    RaceSpec("b256_8in64", (256, 256, 64), 8),
    RaceSpec("b128_8in128", (128, 256, 128), 8),
    RaceSpec("b256_8in128_bf16", (256, 256, 128), 8, dtype="bfloat16"),
)


def by_name(name: str) -> RaceSpec:
    for spec in TINY + PRODUCTION:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown arg spec {name!r}")
