"""Expert Race selection (Race-DiT, arXiv 2503.16057, Sec. 4): the global top-K of a
[B, L, E] token-expert score tensor, K = B L k, as a Mosaic TPU kernel.

    from kernels_pallas.expert_race import expert_race_select
    mask, info = expert_race_select(scores, k_per_token=2)          # info: RaceInfo

The semantics are ``seedjax.nn.moe.racing.race_select`` (the "xla" implementation): ties
"index" (exactly K, lower row-major index first) or "ge" (score >= the K-th, excess reported);
NaN ranks below -inf, -0.0 == +0.0; kth as float32 (+inf when K = 0); per-expert counts of the
selection. Every implementation returns the same mask, kth, excess and counts.

Files (the layout of every kernel folder here):
  api.py        ``expert_race_select`` and the ``implementation=`` switch ("xla",
                "pallas_tpu", "interpret"); argument checks
  tpu.py        the kernel: keys resident in VMEM, bitwise threshold search (32 passes for
                float32, 16 for bfloat16) + index tie-break search, mask and counts
  config.py     chunk sizes and the VMEM budget per chip (about 5 bytes per score)
  reference.py  a thin view of ``seedjax.nn.moe.racing`` (the only seedjax import here)
  arg_specs.py  tiny CPU shapes and the Race-DiT production shapes
  bench.py      CPU timing of the XLA alternatives (top_k, sort, approx_max_k, the threshold
                method) and the libtpu compile report

Evidence (tests/kernels/test_expert_race.py): tier 1, interpret mode == reference bit for bit,
fixed cases and Hypothesis fuzzing (shapes, f32/bf16/f16, duplicates, all-equal, +-inf, NaN,
K = 0, K = N, crowded ties); tier 2, ``jax.export`` for TPU at every production shape; tier 3,
libtpu AOT compile for v5e/v5p (results/kernels/expert_race_tpu_compile.md). Tier 4 (a real
TPU) has not run: nothing here says how fast the kernel is.

No GPU kernel: a Triton version of the counting passes would re-read the scores from HBM (or
L2) on every pass, as XLA's threshold method already does, and it could only be judged against
XLA's top_k / sort on a GPU, which this project has not had. A problem larger than
``config.TpuTiles.max_scores`` raises (no streaming variant), and the passes use one
TensorCore of a megacore chip.
"""
from kernels_pallas.expert_race.api import (IMPLEMENTATIONS, expert_race_select,
                                            resolve_implementation)
from kernels_pallas.expert_race.reference import RaceInfo

__all__ = ["IMPLEMENTATIONS", "RaceInfo", "expert_race_select", "resolve_implementation"]
