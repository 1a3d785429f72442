"""Fused product-key retrieval (PKM additive scores; UltraMem TDQKR with Multi-Core Scoring):
sub-key scoring, per-side top-k, candidate grid and final top-k in one Pallas kernel."""
from kernels_pallas.pk_retrieval.api import (IMPLEMENTATIONS, product_key_topk,
                                             resolve_implementation, tucker_topk)
from kernels_pallas.pk_retrieval.reference import tucker_rank1

__all__ = ["IMPLEMENTATIONS", "product_key_topk", "resolve_implementation", "tucker_rank1",
           "tucker_topk"]
