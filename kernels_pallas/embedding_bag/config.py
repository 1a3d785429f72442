"""Tile sizes of the embedding-bag kernels per chip, with a lookup by ``device_kind``.

TPU (``tpu.py``): a grid step handles ``tokens_per_tile`` tokens, i.e. ``tokens_per_tile * K``
gathered rows; each row is one DMA. ``rows_per_tile`` is the target for that product (enough
DMAs in flight to hide HBM latency, small enough that the double-buffered row buffer fits the
scoped VMEM). The MXU contraction is done per "chunk" of ``chunk_tokens`` tokens
(``chunk_tokens * K`` ~ ``rows_per_dot``). ``num_cores`` splits the tiles over the TensorCores of
a megacore chip (v5p, v4) through a leading "parallel" grid axis.

GPU (``gpu.py``): one Triton program per ``block_tokens`` tokens x ``block_dim`` value columns.
"""
from __future__ import annotations

import dataclasses

MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class TpuTiles:
    """Tiles of the Mosaic TPU gather kernels (see the module docstring)."""
    rows_per_tile: int = 2048
    rows_per_dot: int = 256
    num_cores: int = 1
    vmem_limit_bytes: int = 64 * MiB
    dma_unroll: int = 8          # unroll of the per-row DMA issue loop

    def __post_init__(self):
        for f in ("rows_per_tile", "rows_per_dot", "num_cores", "vmem_limit_bytes", "dma_unroll"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TpuTiles.{f}={v!r} must be a positive integer")


@dataclasses.dataclass(frozen=True)
class GpuTiles:
    """Tiles of the Triton (Pallas) forward kernel."""
    block_tokens: int = 1
    block_dim: int = 256
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        for f in ("block_tokens", "block_dim", "num_warps", "num_stages"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"GpuTiles.{f}={v!r} must be a positive integer")
        if self.block_dim & (self.block_dim - 1):
            raise ValueError(f"GpuTiles.block_dim={self.block_dim} must be a power of two "
                             "(Triton block shapes)")


# VMEM per TensorCore: 128 MiB on v5e/v6e, 64 MiB on v5p (pltpu.get_tpu_info_for_chip); the
# limit leaves room for Mosaic's internal scratch. v6e's 256-wide MXU gets a wider contraction.
TPU_TILES: dict[str, TpuTiles] = {
    "v5e": TpuTiles(rows_per_tile=2048, rows_per_dot=256, num_cores=1, vmem_limit_bytes=96 * MiB),
    "v5p": TpuTiles(rows_per_tile=2048, rows_per_dot=256, num_cores=2, vmem_limit_bytes=48 * MiB),
    "v6e": TpuTiles(rows_per_tile=4096, rows_per_dot=512, num_cores=1, vmem_limit_bytes=96 * MiB),
    # Interpret mode on CPU: small tiles keep the simulated grid and DMA loops short.
    "interpret": TpuTiles(rows_per_tile=64, rows_per_dot=32, num_cores=1, vmem_limit_bytes=16 * MiB,
                          dma_unroll=1),
}
GPU_TILES: dict[str, GpuTiles] = {
    "gpu": GpuTiles(block_tokens=1, block_dim=256, num_warps=4, num_stages=2),
    "h100": GpuTiles(block_tokens=1, block_dim=256, num_warps=4, num_stages=3),
}

# device_kind strings as reported by jax (also by libtpu topology devices on a CPU host).
_KIND_TO_CHIP = (
    ("v5 lite", "v5e"), ("v5e", "v5e"), ("v6 lite", "v6e"), ("v6e", "v6e"),
    ("v5p", "v5p"), ("tpu v5", "v5p"), ("tpu v4", "v5p"),
)


def chip_of_device_kind(device_kind: str) -> str | None:
    """'TPU v5 lite' -> 'v5e', 'TPU v5' -> 'v5p', 'TPU v6 lite' -> 'v6e'; None if not a known TPU.
    v4 maps to v5p's tiles (both are megacore chips)."""
    kind = device_kind.lower()
    for key, chip in _KIND_TO_CHIP:
        if key in kind:
            return chip
    return None


def tpu_tiles(device_kind: str | None = None) -> TpuTiles:
    """Tiles for a TPU ``device_kind`` (default: jax.devices()[0]); unknown kinds get v5e's."""
    if device_kind is None:
        import jax
        device_kind = jax.devices()[0].device_kind
    chip = chip_of_device_kind(device_kind)
    return TPU_TILES[chip] if chip else TPU_TILES["v5e"]


def gpu_tiles(device_kind: str | None = None) -> GpuTiles:
    """Tiles for a GPU ``device_kind`` ('NVIDIA H100 80GB HBM3' -> h100; anything else: gpu)."""
    if device_kind is not None and "h100" in device_kind.lower():
        return GPU_TILES["h100"]
    return GPU_TILES["gpu"]
