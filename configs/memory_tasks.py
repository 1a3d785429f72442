"""Memory-intensive synthetic tasks, proxies for UltraMemV2 Table 2's long-context memorisation,
multi-round memorisation and in-context-learning suites: a small byte-level LM trained on a
mixture of MQAR, multi-round recall and in-context learning of a random bijection
(``seedjax.eval.memory_tasks``; ``data.source`` syntax in ``seedjax.data.synthetic``), then
scored by teacher-forced greedy accuracy on held-out episodes.

Variants: ``cpu`` (the configs/papers/common.py size: d=128, 6 layers, seq 128, batch 16; 1500
steps over 24,000 distinct train windows) and ``smoke`` (seconds: seq 64, tiny tasks).

  python -m experiments.train --config configs/memory_tasks.py:cpu --workdir runs/memory_tasks
  python -m experiments.memory_tasks --config configs/memory_tasks.py:cpu \
      --workdir runs/memory_tasks [--tasks mqar,icl]
  python -m experiments.reproduce --config configs/memory_tasks.py:cpu \
      --out results/memory_tasks --seeds 0,1,2
  python -m experiments.reproduce --config configs/memory_tasks.py:facts_cpu \
      --out results/memory_facts --seeds 0,1,2      # parametric fact recall (knowledge capacity)

One task only: ``--config.data.source=task:mqar`` (the default task sizes fit seq 128). The sweep
compares dense, MoE, UltraMem and UltraMemV2 with the shapes of configs/papers/ultramem_v2.py
(UltraMemV2 Table 2's direction), plus a product-key memory as the FFN (``model.ffn="pkm"``). ``task_eval`` sets the
held-out evaluation (``test``-split episodes) run by experiments.memory_tasks and, after each
sweep run, by experiments.reproduce (``tasks=""``: every task of ``data.source``).

Measured once (dense, seed 0; 600 steps, then resumed to 1500 with the longer schedule, on a
loaded 2-core CPU): all three tasks stay at chance (token accuracy mqar 0.102, multi_round 0.095,
icl 0.089 vs chance 0.100 / 0.100 / 0.083; val loss 1.343 nats/byte, i.e. the model learned the
format but not the recall). At this size the tasks need a longer budget than ``cpu`` gives
(raise ``train.steps``) before a dense-vs-memory comparison means anything. An easier MQAR
alone (``task:mqar(n_pairs=6,n_queries=6,key_len=1,value_len=1)``, 600 steps, dense, seed 0)
also stays at chance (0.105 vs 0.100; val loss 1.044): in-context recall does not emerge within
~20k episodes at this size, so the facts task (parametric recall) is the informative proxy here.
"""
from __future__ import annotations

import sys
from pathlib import Path

import ml_collections

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

from configs.papers.common import VARIANTS, base_config, row  # noqa: E402
from seedjax.data.synthetic import format_task_source  # noqa: E402

# Task sizes per variant (fields of seedjax.eval.memory_tasks.TASKS[name]; lengths in tokens).
TASK_SIZES = {
    "cpu": {  # 122, 112 and 117 tokens: each fits seq 128
        "mqar": dict(n_pairs=12, n_queries=8),
        "multi_round": dict(n_rounds=6, facts_per_round=2),
        "icl": dict(n_symbols=12, n_demos=16, n_queries=6, n_unseen=3),
    },
    "smoke": {  # 47, 41 and 52 tokens: each fits seq 64
        "mqar": dict(n_pairs=6, n_queries=3, value_len=1),
        "multi_round": dict(n_rounds=4, facts_per_round=1, value_len=1),
        "icl": dict(n_symbols=6, n_demos=6, n_queries=3, n_unseen=2),
    },
}
PKM = {"cpu": dict(n_keys=32, heads=4, k_dim=64, topk=8),
       "smoke": dict(n_keys=8, heads=2, k_dim=16, topk=4)}


FACTS = {"facts_cpu": dict(n_facts=2048, n_queries=18), "facts_smoke": dict(n_facts=64,
                                                                             n_queries=8)}


def get_config(variant=None):
    variant = variant or "cpu"
    if variant.startswith("facts_"):
        return _facts_config(variant)
    c = base_config(variant, "memory_tasks")
    if variant == "cpu":
        c.train.update(steps=1500, warmup_steps=100, eval_every=250, checkpoint_every=250)
        blocks = 24000
    else:
        c.data.seq_len = 64
        blocks = 512  # val: ceil(512 * 0.02) = 11 windows >= one batch of 8
    c.data.source = format_task_source(TASK_SIZES[variant], blocks=blocks)
    cpu = variant == "cpu"
    c.task_eval = ml_collections.ConfigDict(dict(
        tasks="", episodes=256 if cpu else 16, batch_size=32 if cpu else 8, seed=0))
    c.sample.update(prompt="ab:12 cd:34 ef:56 | cd:", length=16)
    return c


def _facts_config(variant):
    """Parametric fact recall only (``facts`` task): 2,048 fixed key=value facts, 18 asked per
    126-token episode, 1000 steps (~140 views per fact): how much knowledge each FFN/memory
    design stores at equal activated compute. (With 8,192 facts, ~35 views each, the dense
    model stayed at chance: token accuracy 0.110 vs 0.100.)"""
    size = variant.removeprefix("facts_")
    if size not in VARIANTS:
        raise ValueError(f"variant {variant!r} unknown; allowed: {VARIANTS} and "
                         f"{tuple('facts_' + v for v in VARIANTS)}")
    c = base_config(size, "memory_tasks_facts")
    if size == "cpu":
        c.train.update(steps=1000, warmup_steps=60, eval_every=250, checkpoint_every=250)
    else:
        c.data.seq_len = 64
    c.data.source = format_task_source({"facts": FACTS[variant]},
                                       blocks=24000 if size == "cpu" else 512)
    c.task_eval = ml_collections.ConfigDict(dict(
        tasks="", episodes=256 if size == "cpu" else 16, batch_size=32 if size == "cpu" else 8,
        seed=0))
    c.sample.update(prompt="abc=", length=16)
    return c


def get_sweep(variant=None):
    variant = variant or "cpu"
    variant = variant.removeprefix("facts_")
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} unknown; allowed: {VARIANTS}")
    # dense / MoE / UltraMem / UltraMemV2 exactly as in the V2 loss comparison (equal activated
    # compute; MoE and memory at equal total parameters), V2 with both inits (the released
    # code's is the one that trains well at this scale, results/ultramem_v2), plus PKM as the FFN
    from configs.papers import ultramem_v2
    main = {"dense", "moe", "ultramem", "ultramem_v2", "v2_official_init"}
    rows = [dict(r, group="V2 T2") for r in ultramem_v2.get_sweep(variant) if r["name"] in main]
    return rows + [row("pkm", "-", "ffn", model__ffn="pkm", model__ffn_kwargs=PKM[variant])]
