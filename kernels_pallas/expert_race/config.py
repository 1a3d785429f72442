"""Tile configurations of the expert-race kernel, per chip, and its VMEM budget.

Layout (see tpu.py): scores [..., E] are padded on E to ``E_pad`` (the next power of two when
E <= 128, else the next multiple of 128) and laid out row-major as [rows, W] with
W = max(128, E_pad), so lane l of every row holds expert ``l % E_pad`` (E_pad <= 128) or
``l`` (E_pad >= 128); rows are padded to a multiple of ``chunk_rows``. The kernel keeps the
whole problem resident in VMEM as int32 keys and makes its ~(bits + log2 N) counting passes
over that copy, ``chunk_rows`` rows at a time.

VMEM per call (P = rows x W padded positions):

    keys      P x 4 bytes             int32 scratch, resident for all passes
    mask      P x 1 byte              int8 output block
    inputs    2 x chunk_rows x W x itemsize   double-buffered DMA landing buffer
    stats     2 x W x 4 bytes         lane counts + threshold

so about 5 bytes per score: 4M scores (Race-DiT B/2..XL/2 at 128 images x 256 tokens x E=128,
or 256 x 256 x 64) take 20 MiB, 8M take 40 MiB. ``max_scores`` below keeps the kernel inside
``vmem_limit_bytes`` with room for Mosaic's internal scratch; larger problems raise in api.py
(use implementation="xla", or shard the tokens). VMEM per TensorCore
(``pltpu.get_tpu_info_for_chip``): 128 MiB on v5e/v6e, 64 MiB on v5p. The values were chosen
from this arithmetic and checked to compile with libtpu for v5e, v5p and v6e at the
production specs (results/kernels/expert_race_tpu_compile.md); they are not tuned on hardware.

``chunk_rows`` (a multiple of 32: int8 mask tiles are (32, 128), bf16 input tiles (16, 128))
trades the per-chunk loop overhead against vreg pressure of one pass's body: 256 rows x 128
lanes = 32 int32 vregs per operand.
"""
from __future__ import annotations

import dataclasses

from kernels_pallas.pk_retrieval.config import chip_name  # device_kind -> a TPU_TILES key

MiB = 1 << 20
BYTES_PER_SCORE = 5          # int32 key + int8 mask (see the module docstring)


@dataclasses.dataclass(frozen=True)
class TpuTiles:
    """chunk_rows: rows of W lanes per pass step (multiple of 32); vmem_limit_bytes: scoped
    VMEM limit passed to Mosaic (None: Mosaic's default); max_scores: the largest padded
    problem (positions) accepted, from the VMEM budget."""
    chunk_rows: int = 256
    vmem_limit_bytes: int | None = 48 * MiB
    max_scores: int = 8 * MiB

    def __post_init__(self):
        if isinstance(self.chunk_rows, bool) or not isinstance(self.chunk_rows, int) or (
                self.chunk_rows < 32 or self.chunk_rows % 32):
            raise ValueError(f"TpuTiles.chunk_rows={self.chunk_rows!r} must be a positive "
                             "multiple of 32 (int8 mask tiles are (32, 128))")
        if isinstance(self.max_scores, bool) or not isinstance(self.max_scores, int) or (
                self.max_scores < 1):
            raise ValueError(f"TpuTiles.max_scores={self.max_scores!r} must be a positive "
                             "integer")


# v5p: 64 MiB VMEM -> 8M scores (40 MiB) under a 56 MiB limit; v5e / v6e: 128 MiB VMEM ->
# 16M scores (80 MiB) under a 100 MiB limit.
TPU_TILES = {
    "v5e": TpuTiles(chunk_rows=256, vmem_limit_bytes=100 * MiB, max_scores=16 * MiB),
    "v5p": TpuTiles(chunk_rows=256, vmem_limit_bytes=56 * MiB, max_scores=8 * MiB),
    "v6e": TpuTiles(chunk_rows=256, vmem_limit_bytes=100 * MiB, max_scores=16 * MiB),
}

# Interpret mode (CPU tests): small chunks so that several chunks and the double-buffered DMA
# are exercised on tiny problems; no VMEM limit.
INTERPRET_TILES = TpuTiles(chunk_rows=32, vmem_limit_bytes=None, max_scores=1 << 30)


def tpu_tiles(device_kind: str | None = None) -> TpuTiles:
    """Tiles for a TPU ``device_kind`` (default: the first local device's)."""
    if device_kind is None:
        import jax
        device_kind = jax.devices()[0].device_kind
    return TPU_TILES[chip_name(device_kind)]
