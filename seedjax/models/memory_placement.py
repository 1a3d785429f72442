"""Where memory layers sit in the LM (``model.memory_layers``).

* ``"every"``: one memory unit per block, parallel to the block's FFN (UltraMemV2): unit l reads
  block l's normalised FFN input and its output is added to the FFN output before the FFN
  connection writes it, so it works with any residual connection (incl. Hyper-Connections).
* ``"k1:v1/k2:v2/..."`` (0-indexed blocks, UltraMem's ``mem_insert_way``): unit i reads the
  normalised FFN input of block k_i and its output is added to the residual stream right after
  block v_i (v_i >= k_i). Pairs with k == v are parallel to that block's FFN (as "every");
  pairs with v > k (skip-layer) need the plain residual connection and ``scan_layers=False``.
  UltraMem's 227M/1.2B run uses "2:5/6:9/10:13/14:17" on 20 layers.
"""
from __future__ import annotations


def parse_memory_layers(spec: str, n_layers: int) -> tuple[tuple[int, int], ...]:
    """``spec`` -> ((k, v), ...) validated against ``n_layers`` (ValueError names the field)."""
    field = "model.memory_layers"
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"{field}={spec!r}: give 'every' or 'k:v' pairs separated by '/' "
                         "(e.g. '2:5/6:9')")
    if spec.strip() == "every":
        return tuple((i, i) for i in range(n_layers))
    pairs = []
    for part in spec.split("/"):
        try:
            k, v = (int(x) for x in part.split(":"))
        except ValueError:
            raise ValueError(f"{field}={spec!r}: {part!r} is not a 'k:v' pair of block indices"
                             ) from None
        if not (0 <= k < n_layers and 0 <= v < n_layers):
            raise ValueError(f"{field}={spec!r}: pair {part!r} is out of range; blocks are "
                             f"0..{n_layers - 1}")
        if v < k:
            raise ValueError(f"{field}={spec!r}: pair {part!r} has v < k (the output must be "
                             "added at or after the block it reads)")
        pairs.append((k, v))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"{field}={spec!r} repeats a pair")
    return tuple(pairs)
