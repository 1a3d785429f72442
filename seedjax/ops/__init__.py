"""Ops with an ``implementation=`` switch between pure-XLA references and ``kernels_pallas``.

Callers (``seedjax.nn``) use only these entry points, so a Pallas implementation is added here
without changing them. Currently available implementations: ``"xla"``.

* ``product_key_topk``: PKM's additive two-stage product-key top-k (``product_keys.py``).
* ``tucker_topk`` / ``tucker_rank1``: UltraMem's Tucker-decomposed retrieval with Multi-Core
  Scoring (``tucker_keys.py``).
* ``embedding_bag`` / ``weighted_value_sum`` / ``row_dot``: the value read (with MCS slices and
  IVE groups) and PEER pre-value coefficients (``embedding_bag.py``).
"""
from seedjax.ops.common import IMPLEMENTATIONS
from seedjax.ops.embedding_bag import embedding_bag, row_dot, weighted_value_sum
from seedjax.ops.product_keys import check_product_key_args, product_key_topk
from seedjax.ops.tucker_keys import check_tucker_args, tucker_rank1, tucker_topk

__all__ = ["IMPLEMENTATIONS", "check_product_key_args", "check_tucker_args", "embedding_bag",
           "product_key_topk", "row_dot", "tucker_rank1", "tucker_topk", "weighted_value_sum"]
