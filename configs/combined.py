"""Everything at once: one LM with every seedjax part that composes.

    python -m experiments.train --config configs/combined.py:smoke --workdir runs/combined

The model is an Ouro-style looped stack (T loops of shared blocks, sandwich norms, exit gate,
Stage I objective) whose blocks use SeeDNorm for every norm, hyper-connections (rate 2,
dynamic, tanh) around every sublayer, an UltraMemV2 memory layer beside every FFN, and an
over-encoding input (n = 3, k = 2 slices per order, Alg. 1 layout) on the byte vocabulary.

What does not combine: the DiT is another task (``configs/dit.py``, ``task="image_diffusion"``)
and takes none of the LM parts; the LM's MoE FFN routes by token choice only (Expert Race lives
in the DiT's MoE); over-decoding heads need a plain stack (``model.head="over_decoding"`` with
a looped stack is a ValueError: the looped stack reads every loop out through one head), so
this config keeps Ouro's untied head.

Its whole train step also compiles for a TPU slice: ``python -m experiments.compile_step --config
configs/combined.py:smoke --topology v5e-4 --mesh data=-1`` (17.4 MiB per chip; the planner's
estimate is far below, -87%: it does not model the loops' and memory layers' activations).

Variants: ``smoke`` (d 64, 2 layers, 2 loops: the test suite trains and decodes it) and ``cpu``
(d 256, 4 layers, 2 loops, 600 steps on the stdlib corpus: a few minutes on 2 cores).
"""
from __future__ import annotations

from configs.lm import get_config as lm_config
from configs.papers.ouro import STAGE_ONE, looped_model
from configs.papers.ultramem_v2 import V2_SMOKE

VARIANTS = ("smoke", "cpu")
V2_CPU = {"n_keys": 32, "k_dim": 32, "topk": 16, "v_dim": 64, "p_dim": 32}


def combined_model(loops: int, memory_kwargs: dict, oe_rows: int) -> dict:
    """The model fields that switch every part on (on top of an LM config's model block)."""
    return dict(looped_model(loops=loops),
                norm="seednorm", norm_kwargs={},
                connection="hyper", connection_kwargs={"rate": 2, "dynamic": True,
                                                       "use_tanh": True},
                memory="ultramem_v2", memory_layers="every",
                memory_kwargs=dict(memory_kwargs, heads=1, rank=2, cores=2),
                embed="over_encoding", embed_kwargs={"m": oe_rows, "n": 3, "k": 2})


def get_config(variant: str | None = None):
    variant = variant or "smoke"
    if variant not in VARIANTS:
        raise ValueError(f"configs/combined.py variant {variant!r} unknown; allowed: {VARIANTS}")
    smoke = variant == "smoke"
    c = lm_config("smoke" if smoke else "tiny")
    c.name = f"combined_{variant}"
    c.model.update(combined_model(loops=2, memory_kwargs=V2_SMOKE if smoke else V2_CPU,
                                  oe_rows=1021 if smoke else 16381))
    c.train.update(objective=STAGE_ONE["objective"],
                   objective_kwargs=dict(STAGE_ONE["objective_kwargs"]))
    return c
