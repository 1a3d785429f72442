"""Argument shapes shared by the tests and the benchmark.

``TINY_*``: interpret-mode numerics on CPU (few tokens, one token tile). ``PRODUCTION_*``: the
configurations of the papers (memory_layers.md §2.1, §4.7) at a per-device token count T,
used for export / TPU compile checks and the roofline table.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class PKSpec:
    """PKM retrieval: q1, q2 [*lead, H, d]; k1, k2 [H, n, d] with d = Dk/2."""
    name: str
    lead: tuple[int, ...]
    heads: int
    n: int
    half_dim: int
    topk_side: int
    topk: int
    dtype: str = "float32"

    @property
    def tokens(self) -> int:
        return int(np.prod(self.lead))

    def shapes(self):
        q = jax.ShapeDtypeStruct((*self.lead, self.heads, self.half_dim), jnp.dtype(self.dtype))
        k = jax.ShapeDtypeStruct((self.heads, self.n, self.half_dim), jnp.dtype(self.dtype))
        return q, q, k, k

    def make(self, seed: int = 0):
        """Random normal queries and U(+-1/sqrt(d)) sub-keys (PKM init), fixed numpy seed."""
        rng = np.random.default_rng(seed)
        q1, q2, k1, _ = self.shapes()
        bound = 1.0 / np.sqrt(self.half_dim)
        qs = [jnp.asarray(rng.normal(size=q1.shape), q1.dtype) for _ in range(2)]
        ks = [jnp.asarray(rng.uniform(-bound, bound, size=k1.shape), k1.dtype) for _ in range(2)]
        return (*qs, *ks)

    def kwargs(self):
        return dict(topk_side=self.topk_side, topk=self.topk)


@dataclasses.dataclass(frozen=True)
class TuckerSpec:
    """TDQKR retrieval: q_row, q_col [*lead, H, r, Dk]; k_row, k_col [H, n, r, Dk];
    cores [h_c, H, r, r]."""
    name: str
    lead: tuple[int, ...]
    heads: int
    n: int
    rank: int
    dk: int
    n_cores: int
    topk_side: int
    topk: int
    dtype: str = "float32"
    preselect: str = "top"

    @property
    def tokens(self) -> int:
        return int(np.prod(self.lead))

    def shapes(self):
        dt = jnp.dtype(self.dtype)
        q = jax.ShapeDtypeStruct((*self.lead, self.heads, self.rank, self.dk), dt)
        k = jax.ShapeDtypeStruct((self.heads, self.n, self.rank, self.dk), dt)
        c = jax.ShapeDtypeStruct((self.n_cores, self.heads, self.rank, self.rank), jnp.float32)
        return q, q, k, k, c

    def make(self, seed: int = 0):
        """Random normal queries, N(0, 1/Dk) keys and U(0, 1) cores (UltraMem init)."""
        rng = np.random.default_rng(seed)
        q, _, k, _, c = self.shapes()
        qs = [jnp.asarray(rng.normal(size=q.shape), q.dtype) for _ in range(2)]
        ks = [jnp.asarray(rng.normal(size=k.shape) / np.sqrt(self.dk), k.dtype)
              for _ in range(2)]
        return (*qs, *ks, jnp.asarray(rng.uniform(size=c.shape), jnp.float32))

    def kwargs(self):
        return dict(topk_side=self.topk_side, topk=self.topk, preselect=self.preselect)


TINY_PK = (
    PKSpec("pk_tiny", (20,), heads=2, n=24, half_dim=8, topk_side=4, topk=4),
    PKSpec("pk_tiny_lead", (3, 5), heads=3, n=16, half_dim=12, topk_side=6, topk=5),
    PKSpec("pk_tiny_grid_full", (9,), heads=1, n=10, half_dim=8, topk_side=4, topk=16),
    PKSpec("pk_tiny_side_full", (11,), heads=2, n=7, half_dim=8, topk_side=7, topk=9),
    PKSpec("pk_tiny_bf16", (13,), heads=2, n=40, half_dim=16, topk_side=8, topk=8,
           dtype="bfloat16"),
)
TINY_TUCKER = (
    TuckerSpec("tk_tiny", (20,), heads=2, n=24, rank=2, dk=8, n_cores=2, topk_side=4, topk=4),
    TuckerSpec("tk_tiny_lead_abs", (3, 4), heads=1, n=18, rank=2, dk=12, n_cores=2,
               topk_side=6, topk=6, preselect="abs"),
    TuckerSpec("tk_tiny_r3_c1", (10,), heads=2, n=12, rank=3, dk=8, n_cores=1, topk_side=5,
               topk=7),
    TuckerSpec("tk_tiny_grid_full", (7,), heads=1, n=9, rank=2, dk=8, n_cores=2, topk_side=3,
               topk=9),
    TuckerSpec("tk_tiny_side_full", (9,), heads=2, n=6, rank=2, dk=8, n_cores=2, topk_side=6,
               topk=6),
    TuckerSpec("tk_tiny_bf16", (12,), heads=1, n=30, rank=2, dk=16, n_cores=2, topk_side=8,
               topk=8, dtype="bfloat16"),
)

# Papers' configurations (memory_layers.md): T tokens per device per call.
PRODUCTION_PK = (
    PKSpec("pkm_n512_dk256", (4096,), heads=4, n=512, half_dim=128, topk_side=32, topk=32,
           dtype="bfloat16"),
    PKSpec("pkm_n1024_dk512", (4096,), heads=4, n=1024, half_dim=256, topk_side=32, topk=32,
           dtype="bfloat16"),
    PKSpec("pkm_n1024_dk512_f32", (2048,), heads=4, n=1024, half_dim=256, topk_side=32,
           topk=32, dtype="float32"),
)
PRODUCTION_TUCKER = (
    TuckerSpec("umv2_227m_n360_dk192_m32", (2048,), heads=1, n=360, rank=2, dk=192, n_cores=2,
               topk_side=32, topk=32, dtype="bfloat16"),
    TuckerSpec("ultramem_227m_n808_dk192_m80", (4096,), heads=2, n=808, rank=2, dk=192,
               n_cores=2, topk_side=80, topk=80, dtype="bfloat16"),
    TuckerSpec("tdqkr_n1138_dk384_m80", (4096,), heads=2, n=1138, rank=2, dk=384, n_cores=2,
               topk_side=80, topk=80, dtype="bfloat16"),
    TuckerSpec("umv2_1b_n528_dk512_m128", (4096,), heads=1, n=528, rank=2, dk=512, n_cores=2,
               topk_side=128, topk=128, dtype="bfloat16"),
)


def by_name(name: str):
    for spec in TINY_PK + TINY_TUCKER + PRODUCTION_PK + PRODUCTION_TUCKER:
        if spec.name == name:
            return spec
    raise ValueError(f"unknown arg spec {name!r}")
