"""Public entry point: ``expert_race_select``, the Expert Race selection (Race-DiT, C.4) with an
``implementation=`` switch between ``seedjax.nn.moe.racing`` and the Mosaic kernel.

implementation:
  None          by ``jax.default_backend()``: "tpu" -> "pallas_tpu"; "gpu" and "cpu" -> "xla"
                (there is no GPU kernel: on GPU the race is XLA's top_k / sort, see __init__)
  "xla"         ``racing.race_select(method="top_k")`` (reference.py)
  "pallas_tpu"  tpu.py (Mosaic), the "threshold" counting passes on VMEM-resident keys
  "interpret"   tpu.py under ``interpret=True`` (any backend; tests). Not a timing of the
                kernel: the interpreter copies whole buffers per step.

The result is the same for every implementation, bit for bit: mask, kth, excess and counts
(tested; the order, the tie modes and the NaN / signed-zero policy are racing.py's).
Forward only: the selection has no gradient (the mask is boolean, and kth carries none, as in
racing.py, whose keys are integers); the kernel is called on ``lax.stop_gradient(scores)``, so
differentiating a loss that uses the mask or kth never reaches the ``pallas_call``.

Under a device mesh, call it inside ``jax.shard_map`` (Mosaic kernels are not auto-partitioned);
the kernel then races each device's own tokens. A global race over data-parallel shards needs
an all-reduce per counting pass: use ``racing.race_select(method="threshold",
axis_name=...)``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from kernels_pallas.expert_race import config as _config
from kernels_pallas.expert_race import reference
from kernels_pallas.expert_race.reference import RaceInfo

IMPLEMENTATIONS = ("xla", "pallas_tpu", "interpret")
_FN = "expert_race_select"


def _allowed(name: str, value, allowed: tuple):
    if value not in allowed:
        raise ValueError(f"{_FN}: {name}={value!r} is not allowed; allowed: {allowed}")
    return value


def resolve_implementation(implementation: str | None) -> str:
    """The implementation a call runs (None -> "pallas_tpu" on a TPU backend, else "xla")."""
    by_backend = "pallas_tpu" if jax.default_backend() == "tpu" else "xla"
    return _allowed("implementation", implementation, (None, *IMPLEMENTATIONS)) or by_backend


def check_arguments(scores, k_per_token, ties: str) -> int:
    """Validates the call; returns K = tokens x k_per_token. Every error names the argument."""
    shape = getattr(scores, "shape", None)
    if shape is None or len(shape) < 2:
        raise ValueError(f"{_FN}: scores shape {shape} must be [..., E] with >= 2 dims (e.g. "
                         "[B, L, E]; E, the experts, is the last axis)")
    _allowed("scores dtype", jnp.dtype(scores.dtype).name, reference.SCORE_DTYPES)
    _allowed("ties", ties, reference.TIES)
    try:
        return reference.race_budget(shape, k_per_token)
    except ValueError as e:
        raise ValueError(f"{_FN}: {e}") from None


def expert_race_select(scores: jax.Array, k_per_token: int, *, ties: str = "index",
                       implementation: str | None = None,
                       tiles: _config.TpuTiles | None = None) -> tuple[jax.Array, RaceInfo]:
    """Expert Race: the global top-K of scores [..., E] (float32 | bfloat16 | float16; all
    leading axes are tokens, e.g. [B, L, E]), K = tokens x ``k_per_token`` (0 <= k <= E).

    ties "index": exactly K pairs, the lower row-major index first among equal scores;
    "ge": every pair with score >= the K-th (``RaceInfo.excess`` = the extra pairs).
    Returns (mask bool like scores, RaceInfo(kth [] float32 (+inf when K = 0),
    excess [] int32, counts [E] int32 = selected pairs per expert)).
    ``tiles``: a config.TpuTiles override for the kernel paths (default: per chip).
    """
    impl = resolve_implementation(implementation)
    count = check_arguments(scores, k_per_token, ties)
    if tiles is not None and not isinstance(tiles, _config.TpuTiles):
        raise ValueError(f"{_FN}: tiles={tiles!r} must be a config.TpuTiles")
    if impl == "xla" or count == 0:
        return reference.expert_race_reference(scores, k_per_token, ties=ties)
    from kernels_pallas.expert_race import tpu
    interpret = impl == "interpret"
    if tiles is None:
        tiles = _config.INTERPRET_TILES if interpret else _config.tpu_tiles()
    lay = tpu.layout(scores.shape, tiles.chunk_rows)
    if lay.positions > tiles.max_scores:
        raise ValueError(f"{_FN}: scores {scores.shape} take {lay.positions} padded positions, "
                         f"more than tiles.max_scores={tiles.max_scores} (the kernel keeps "
                         "them resident in VMEM); use implementation='xla' or shard the tokens")
    mask, kth, excess, counts = tpu.expert_race_tpu(lax.stop_gradient(scores), count, ties=ties,
                                                    tiles=tiles, interpret=interpret)
    return mask, RaceInfo(kth, excess, counts)
