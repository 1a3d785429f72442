"""Embedding bag (weighted gather-reduce of table rows) and row dot: XLA, Mosaic TPU, Triton."""
from kernels_pallas.embedding_bag.api import default_implementation, embedding_bag, row_dot

__all__ = ["default_implementation", "embedding_bag", "row_dot"]
