"""Tile configurations of the product-key retrieval kernels, per chip.

TPU layout (see tpu.py): tokens sit on the 128 lanes and sub-keys / candidates on sublanes, so
``token_tile`` must be a multiple of 128; ``chunk_rows`` bounds the rows one extraction pass
loads at a time (a multiple of 16). The values below were chosen from the VMEM arithmetic and
checked to compile with libtpu for v5e, v5p and v6e (results/kernels/pk_retrieval_tpu_compile.md);
they are not tuned on hardware.

VMEM per TensorCore (``pltpu.get_tpu_info_for_chip``): 128 MiB on v5e/v6e, 64 MiB on v5p. The
largest scratch is the TDQKR candidate grid, topk_side * ceil8(topk_side) * token_tile * 4
bytes (8 MiB at topk_side = 128, token_tile = 128), plus the double-buffered sub-keys.
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TpuTiles:
    """token_tile: tokens per grid step (lanes, multiple of 128); chunk_rows: rows per
    extraction pass (multiple of 16); vmem_limit_bytes: scoped VMEM limit passed to Mosaic."""
    token_tile: int = 128
    chunk_rows: int = 512
    vmem_limit_bytes: int | None = 48 * 2**20

    def __post_init__(self):
        if self.token_tile < 128 or self.token_tile % 128:
            raise ValueError(f"TpuTiles.token_tile={self.token_tile} must be a positive multiple "
                             "of 128 (tokens are on lanes)")
        if self.chunk_rows < 16 or self.chunk_rows % 16:
            raise ValueError(f"TpuTiles.chunk_rows={self.chunk_rows} must be a positive multiple "
                             "of 16")


@dataclasses.dataclass(frozen=True)
class GpuTiles:
    """token_block: tokens per Triton program (power of two >= 16, the dot's M);
    num_warps / num_stages: Triton launch parameters."""
    token_block: int = 16
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        b = self.token_block
        if b < 16 or b & (b - 1):
            raise ValueError(f"GpuTiles.token_block={b} must be a power of two >= 16")


TPU_TILES = {
    "v5e": TpuTiles(token_tile=128, chunk_rows=512, vmem_limit_bytes=64 * 2**20),
    "v5p": TpuTiles(token_tile=128, chunk_rows=512, vmem_limit_bytes=48 * 2**20),
    "v6e": TpuTiles(token_tile=128, chunk_rows=512, vmem_limit_bytes=64 * 2**20),
}
GPU_TILES = {"default": GpuTiles(token_block=16, num_warps=4, num_stages=1)}

# Interpret mode (CPU tests): one token tile, no VMEM limit.
INTERPRET_TILES = TpuTiles(token_tile=128, chunk_rows=64, vmem_limit_bytes=None)


def chip_name(device_kind: str) -> str:
    """Maps ``jax.Device.device_kind`` ("TPU v5 lite", "TPU v5p", "TPU v6 lite", ...) to a key of
    TPU_TILES; unknown TPUs fall back to "v5p" (the smallest VMEM of the three)."""
    kind = device_kind.lower()
    if "v5 lite" in kind or "v5e" in kind or "v5litepod" in kind:
        return "v5e"
    if "v6" in kind:
        return "v6e"
    return "v5p"


def tpu_tiles(device_kind: str | None = None) -> TpuTiles:
    """Tiles for a TPU ``device_kind`` (default: the first local device's)."""
    if device_kind is None:
        import jax
        device_kind = jax.devices()[0].device_kind
    return TPU_TILES[chip_name(device_kind)]
