"""Named argument shapes shared by the tests and the benchmark.

``op`` is "bag" (embedding_bag) or "row_dot". Tiny specs are for interpret-mode numerics; the
production specs are the memory layers' per-device shapes (T = 4096 tokens, N = 2^20 rows):
PKM reads (K = heads x top-m = 32 or 256, S = 1, no groups), UltraMem's MCS + IVE read (2 x 80
slots, S = h_c = 2 value slices, G = E = 4 groups, Dv 384), UltraMemV2-1B's read (TopM 128,
S = 2, Dv 768, single projector so no groups) and its PEER pre-value row_dot (Dp 384).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ArgSpec:
    name: str
    op: str                   # "bag" | "row_dot"
    n_rows: int               # N
    dim: int                  # Dv (bag) or Dp (row_dot)
    tokens: int               # T (the product of ``lead``)
    k: int                    # slots per token
    slices: int = 0           # S; 0: weights [..., K] (no slice axis)
    groups: int = 0           # G; 0: no groups argument
    dtype: str = "float32"    # table (and row_dot x) dtype
    lead: tuple[int, ...] | None = None   # leading shape of indices (default (tokens,))
    production: bool = False

    @property
    def lead_shape(self) -> tuple[int, ...]:
        return self.lead or (self.tokens,)

    @property
    def n_slices(self) -> int:
        return max(self.slices, 1)

    @property
    def n_groups(self) -> int:
        return max(self.groups, 1)

    def shapes(self) -> dict[str, jax.ShapeDtypeStruct]:
        """ShapeDtypeStructs of the public API's arguments (``values``/``table`` first)."""
        dt = jnp.dtype(self.dtype)
        ik = self.lead_shape + (self.k,)
        if self.op == "row_dot":
            return {"table": jax.ShapeDtypeStruct((self.n_rows, self.dim), dt),
                    "indices": jax.ShapeDtypeStruct(ik, jnp.int32),
                    "x": jax.ShapeDtypeStruct(self.lead_shape + (self.dim,), dt)}
        out = {"values": jax.ShapeDtypeStruct((self.n_rows, self.dim), dt),
               "indices": jax.ShapeDtypeStruct(ik, jnp.int32),
               "weights": jax.ShapeDtypeStruct(ik + ((self.slices,) if self.slices else ()),
                                               jnp.float32)}
        if self.groups:
            out["groups"] = jax.ShapeDtypeStruct(ik, jnp.int32)
        return out

    def make(self, seed: int = 0, *, pad_frac: float = 0.1, dup_frac: float = 0.2,
             zero_frac: float = 0.1, with_table: bool = True) -> dict[str, jax.Array]:
        """Random arguments: a ``pad_frac`` share of out-of-range indices (negative and >= N),
        ``dup_frac`` of slots repeating another slot's index of the same token, ``zero_frac`` of
        zero weights. Row values are N(0, 1); weights N(0, 1) (f32). ``with_table=False``
        leaves out the table (benchmarks fill their own)."""
        rng = np.random.default_rng(seed)
        s = self.shapes()
        ik = s["indices"].shape
        idx = rng.integers(0, self.n_rows, size=ik)
        if self.k > 1:
            dup = rng.random(ik) < dup_frac
            idx = np.where(dup, np.roll(idx, 1, axis=-1), idx)
        pad = rng.random(ik) < pad_frac
        idx = np.where(pad, np.where(rng.random(ik) < 0.5, -1 - rng.integers(0, 3, ik),
                                     self.n_rows + rng.integers(0, 3, ik)), idx)
        table_key = "table" if self.op == "row_dot" else "values"
        dt = jnp.dtype(self.dtype)
        out = {"indices": jnp.asarray(idx, jnp.int32)}
        if with_table:
            out[table_key] = jnp.asarray(rng.normal(size=s[table_key].shape), dt)
        if self.op == "row_dot":
            out["x"] = jnp.asarray(rng.normal(size=s["x"].shape), dt)
            return out
        w = rng.normal(size=s["weights"].shape)
        w = np.where(rng.random(w.shape) < zero_frac, 0.0, w)
        out["weights"] = jnp.asarray(w, jnp.float32)
        if self.groups:
            out["groups"] = jnp.asarray(rng.integers(0, self.groups, size=ik), jnp.int32)
        return out

    def cost(self) -> dict[str, float]:
        """Bytes moved and FLOPs of one forward call, from shapes: gathered rows, indices,
        weights, groups and x in; the output out. Each gathered element costs a multiply-add."""
        b = jnp.dtype(self.dtype).itemsize
        rows = self.tokens * self.k
        gathered = rows * self.dim * b
        if self.op == "row_dot":
            moved = gathered + rows * 4 + self.tokens * self.dim * b + rows * 4
        else:
            moved = (gathered + rows * 4 + rows * self.n_slices * 4
                     + (rows * 4 if self.groups else 0)
                     + self.tokens * self.n_groups * self.dim * b)
        return {"bytes": float(moved), "gathered_bytes": float(gathered),
                "flops": float(2 * rows * self.dim)}


_M = 1 << 20
SPECS: dict[str, ArgSpec] = {s.name: s for s in [
    # tiny: interpret-mode numerics (duplicates, pads, zero weights come from ``make``)
    ArgSpec("tiny_pkm_f32", "bag", 64, 128, 16, 8),
    ArgSpec("tiny_pkm_bf16_batched", "bag", 64, 128, 12, 5, dtype="bfloat16", lead=(3, 4)),
    ArgSpec("tiny_mcs_ive_bf16", "bag", 96, 256, 10, 12, slices=2, groups=4, dtype="bfloat16"),
    ArgSpec("tiny_mcs_g3_f32", "bag", 50, 256, 9, 6, slices=2, groups=3),
    ArgSpec("tiny_row_dot_f32", "row_dot", 64, 128, 10, 8),
    ArgSpec("tiny_row_dot_bf16", "row_dot", 64, 256, 6, 12, dtype="bfloat16"),
    # production (per device)
    ArgSpec("pkm_k32_f32", "bag", _M, 256, 4096, 32, production=True),
    ArgSpec("pkm_k256_bf16", "bag", _M, 256, 4096, 256, dtype="bfloat16", production=True),
    ArgSpec("pkm_k256_f32", "bag", _M, 256, 4096, 256, production=True),
    ArgSpec("ultramem_mcs_ive_bf16", "bag", _M, 384, 4096, 160, slices=2, groups=4,
            dtype="bfloat16", production=True),
    ArgSpec("ultramemv2_1b_bf16", "bag", _M, 768, 4096, 128, slices=2, dtype="bfloat16",
            production=True),
    ArgSpec("peer_row_dot_bf16", "row_dot", _M, 384, 4096, 128, dtype="bfloat16",
            production=True),
]}

TINY = tuple(n for n, s in SPECS.items() if not s.production)
PRODUCTION = tuple(n for n, s in SPECS.items() if s.production)


def call(spec: ArgSpec, args: dict, **kw):
    """Runs the public API function of ``spec.op`` on ``args`` (as from ``make``)."""
    from kernels_pallas.embedding_bag import api
    if spec.op == "row_dot":
        return api.row_dot(args["table"], args["indices"], args["x"], **kw)
    return api.embedding_bag(args["values"], args["indices"], args["weights"],
                             groups=args.get("groups"), n_groups=spec.n_groups, **kw)
