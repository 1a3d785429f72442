"""Ouro / LoopLM (arXiv 2510.25741) Sec. 6: knowledge manipulation vs knowledge capacity of looped
and non-looped models (spec ouro_looped_lm.md B.8, B.10 item 4).

Paper: on Mano (modular-arithmetic expression trees, App. B.2) a k-layer block looped 12/k times
beats the same block run once (iso-parameter) and comes close to, or beats, 12 distinct layers
(iso-FLOP): e.g. L = 10: Base 2x1 21.5, Loop 2x6 98.1, Base 12x1 93.6 (% exact match). On Capo
(synthetic biographies, App. B.1) looped and non-looped models store the same ~2 bits per
parameter: looping adds manipulation, not knowledge capacity (Fig. 6 left).

Ours (``cpu``): the Ouro CPU block (d 128, 4 heads, SwiGLU 384, sandwich RMSNorms, final norm
after every loop, untied head, byte ids) in three shapes per task, as in the main Ouro sweep:

  <task>_loop        2 shared layers x 4 loops (2x4)
  <task>_iso_params  the 2 layers once (2x1): equal parameters
  <task>_iso_flops   8 distinct layers once (8x1): equal FLOPs per token

Training: the plain LM loss on the last loop's logits (``train.objective = "lm"``) with the exit
gate off, so each row is a looped transformer as in Sec. 6 ([I]: the paper's synthetic-task
models are trained on the final output; its exit gate belongs to the Ouro LM recipe; set
``LOOP_GATE`` to train the Stage I objective instead). One pass over the data (online episodes).

* ``mano``: F_``mano_modulus`` with ``ops ~ U[1, mano_ops]`` in training, scored on 1,024 held-out
  expressions with exactly ``mano_ops`` operations (the paper's test), exact match of the answer
  token; only the answer token is trained (the paper's loss). The paper uses F_23 with L = 10-24
  at 80K-200K steps of batch 128 on d 1024. Ours is F_7 with L = 3 at 1,000 steps of 32 windows
  of 64 tokens (about 160 answers per step), chosen from two seed-0 probes of the 2x4 / 2x1
  pair, each 1,000 steps: with F_23 and L = 4 the loop's val loss stayed at ln 23 (chance)
  through step 600; with F_7 and L = 4 both rows learned little (val 1.914 loop / 1.785 2x1
  against ln 7 = 1.946; exact match at 4 operations 0.188 / 0.183, chance 0.143), so the test
  length came down to 3 operations.
* ``capo``: ``capo_people`` people (seedjax.data.capo; N0 = 50 x 50 names, log2 S0 = 36.8 bits
  per person of attributes), trained on every token, one biography per 256-token window; the
  probe ``capo_capacity`` (seedjax.eval.capacity) measures p1, p2 and R(F) = bits / parameters
  on one biography per person. 100 people, 8,000 biographies: 80 exposures per person (the
  paper: 1,000) and 3.7 kbit of attribute knowledge against ~1M bits at 2 bits per parameter,
  so the models are far from capacity: what is measured is how much each shape has memorised
  after 80 exposures, and the ratio of the looped row to its iso-parameter row
  (paper at capacity: 1), not the absolute 2 bits per parameter. A first seed-0 sizing with 500
  people (16 exposures) memorised nothing: p1 = 25-30 and p2 = 26-43 nats per person against
  ln N0 = 7.8 and ln S0 = 25.5 (byte-level names and values cost their spelling until they are
  memorised), so R(F) was negative for every row (-0.027 2x1, -0.059 2x4) and the rows could
  not be compared by it.

  python -m experiments.reproduce --config configs/papers/ouro_tasks.py:cpu \
      --out results/ouro_tasks --seeds 0,1,2

``smoke``: the same rows at seconds-scale (the test suite runs them).
"""
from __future__ import annotations

import ml_collections

from configs.papers.common import base_config, row
from configs.papers.ouro import NON_LOOPED, looped_model

VARIANTS = ("cpu", "smoke")
PAPER_SCALE = {"what": "Mano: d 1024, 80K steps x batch 128 x 1024 tokens (L = 10)",
               "params": 150e6, "tokens": 1.0e10}
SMOKE_TRAIN_ROW = "mano_loop"
LOOP_GATE = False          # True: exit gate + Stage I objective (beta 0.1) on the looped rows
LAYERS, LOOPS = 2, 4
SIZES = {
    "cpu": dict(mano_modulus=7, mano_ops=3, mano_seq=64, mano_batch=32, mano_steps=1000,
                capo_people=100, capo_batch=8, capo_steps=1000, episodes=1024,
                eval_batch=128),
    "smoke": dict(mano_modulus=7, mano_ops=2, mano_seq=32, mano_batch=8, mano_steps=3,
                  capo_people=20, capo_batch=8, capo_steps=3, episodes=16, eval_batch=8),
}
MIN_BLOCKS = 512
CAPO_SEQ = 256  # a biography is up to 222 bytes (CapoConfig.length)


def _variant(variant) -> str:
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"configs/papers/ouro_tasks.py variant {variant!r} unknown; allowed: "
                         f"{VARIANTS}")
    return variant


def _blocks(s: dict, task: str) -> int:
    """Train windows of a task's stream: one pass (steps x batch windows, each its own block of
    episodes); at least ``MIN_BLOCKS`` so that the val split (5%) holds a batch at smoke size."""
    return max(s[f"{task}_steps"] * s[f"{task}_batch"], MIN_BLOCKS)


def _mano_source(s: dict) -> str:
    return (f"task:mano(modulus={s['mano_modulus']},max_ops={s['mano_ops']});"
            f"blocks={_blocks(s, 'mano')}")


def get_config(variant=None):
    variant = _variant(variant)
    s = SIZES[variant]
    c = base_config(variant, "ouro_tasks")
    c.model.update(looped_model())
    c.model.update(n_layers=LAYERS, max_seq_len=max(CAPO_SEQ, s["mano_seq"]))
    c.model.stack_kwargs.update(loops=LOOPS, exit_gate=LOOP_GATE)
    c.train.update(objective="looped" if LOOP_GATE else "lm",
                   objective_kwargs={"beta": 0.1} if LOOP_GATE else {})
    c.data.update(source=_mano_source(s), seq_len=s["mano_seq"], batch_size=s["mano_batch"],
                  tokenizer="byte", max_val_batches=8 if variant == "cpu" else 2)
    c.train.update(steps=s["mano_steps"])
    if variant == "cpu":
        c.train.update(lr=3e-3, warmup_steps=100, eval_every=250, checkpoint_every=250,
                       log_every=50)
    c.task_eval = ml_collections.ConfigDict(dict(
        tasks="", episodes=s["episodes"], batch_size=s["eval_batch"], seed=0))
    c.sample.length = 16   # the tasks are symbolic: samples are for a glance only
    return c


def _shapes(task: str, paper: dict, **task_overrides) -> list:
    """The three model shapes of one task (module docstring), paired with the looped row."""
    loop = f"{task}_loop"
    return [
        row(loop, paper["loop"], task, vs=[], **task_overrides),  # no cross-task pairing
        row(f"{task}_iso_params", paper["iso_params"], task, vs=loop, **NON_LOOPED,
            **task_overrides),
        row(f"{task}_iso_flops", paper["iso_flops"], task, vs=loop, **NON_LOOPED,
            model__n_layers=LAYERS * LOOPS, **task_overrides),
    ]


def get_sweep(variant=None):
    """Rows: Mano (manipulation) and Capo (capacity), each as 2x4 looped, 2x1 and 8x1."""
    s = SIZES[_variant(variant)]
    capo = dict(data__source=f"task:capo(n_people={s['capo_people']});"
                             f"blocks={_blocks(s, 'capo')}",
                data__seq_len=CAPO_SEQ, data__batch_size=s["capo_batch"],
                train__steps=s["capo_steps"], task_eval__tasks="capo,capo_capacity")
    return [
        *_shapes("mano", {"loop": "Loop 2x6: 98.1 (L=10 exact match, %)",
                          "iso_params": "Base 2x1: 21.5 (worse than the loop)",
                          "iso_flops": "Base 12x1: 93.6 (close to the loop)"}),
        *_shapes("capo", {"loop": "~2 bits/param, as non-looped (Fig. 6 left)",
                          "iso_params": "~2 bits/param (equal to the loop)",
                          "iso_flops": "~2 bits/param (4x the parameters, 4x the bits)"},
                 **capo),
    ]
