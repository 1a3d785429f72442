"""Decoder LM on the default corpus (the Python standard library's source, byte-level).

A BPE vocabulary instead of bytes: ``--config.data.tokenizer=bpe --config.data.vocab_size=4096
--config.model.vocab_size=4096``; English text: ``--config.data.source=gcide`` or ``fortunes``.

Variants (``--config configs/lm.py:<variant>``):
  smoke  seconds on a laptop CPU (tests use it)
  tiny   the demo: a few minutes on 2 CPU cores
  small  d=512, 8 layers, seq 512 (benchmarks; hours on CPU)

  python -m experiments.train --config configs/lm.py:tiny --workdir runs/tiny --config.train.steps=600
"""
from __future__ import annotations

import ml_collections

VARIANTS = ("smoke", "tiny", "small")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "tiny"
    if variant not in VARIANTS:
        raise ValueError(f"configs/lm.py variant {variant!r} unknown; allowed: {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.name = f"lm_{variant}"

    c.model = dict(vocab_size=256, d_model=256, n_layers=4, n_heads=4, n_kv_heads=None,
                   head_dim=None, mlp_dim=768, max_seq_len=256, rope_theta=10000.0,
                   qk_norm=False, norm_eps=1e-6, init_std=0.02, dtype="float32",
                   scan_layers=False, remat=False,
                   embed="token", embed_kwargs={}, norm="rmsnorm", norm_kwargs={},
                   mixer="attention", mixer_kwargs={}, ffn="swiglu", ffn_kwargs={},
                   connection="residual", connection_kwargs={}, head="tied", head_kwargs={},
                   memory="none", memory_kwargs={}, memory_layers="")
    c.model = ml_collections.ConfigDict(c.model)

    c.data = ml_collections.ConfigDict(dict(
        source="stdlib", seq_len=128, batch_size=16, val_fraction=0.02, max_val_batches=8,
        # "byte", "bpe" (trained on the train split, <workdir>/tokenizer.json) or a
        # tokenizer.json path; vocab_size is the BPE's size (= model.vocab_size for "bpe")
        tokenizer="byte", vocab_size=4096))

    c.train = ml_collections.ConfigDict(dict(
        seed=0, steps=600, lr=3e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1,
        b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0, accum_steps=1,
        lr_multipliers={}, log_every=25, eval_every=200, checkpoint_every=200,
        keep_checkpoints=2,
        objective="lm", objective_kwargs={},  # seedjax/train/objectives.py
        trainable_groups=None,  # e.g. "exit_gate": only these parameter groups learn
        init_from=None, init_from_step=None,  # start from another run's parameters
        eval_seen=None,  # also evaluate the first train batches (None: when data repeats)
        debug_kill_at_step=-1))  # fault injection (tests): SIGKILL self after this step

    c.mesh = ml_collections.ConfigDict(dict(
        shape=dict(data=-1, fsdp=1, model=1, expert=1, mem=1), rules="fsdp_tp",
        # True: a parameter dimension its mesh axes do not divide is a ValueError (default:
        # that dimension is replicated, so tiny models run on any mesh)
        strict_sharding=False))

    c.sample = ml_collections.ConfigDict(dict(
        prompt="def ", length=200, temperature=0.8, top_p=0.95, seed=0))

    if variant == "smoke":
        c.model.update(d_model=64, n_layers=2, n_heads=4, mlp_dim=128, max_seq_len=64)
        c.data.update(seq_len=32, batch_size=8, max_val_batches=2)
        c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10, checkpoint_every=10)
        c.sample.length = 32
    elif variant == "small":
        # query blocks of 128 at T = 512 (5/8 of the score matrix, against 3/4 with 256): the
        # attention core fwd+bwd 163 -> 133 ms per layer alone, 1.33 -> 1.07 s in `bench lm`
        c.model.update(d_model=512, n_layers=8, n_heads=8, mlp_dim=1536, max_seq_len=512,
                       mixer_kwargs={"causal_chunk": 128})
        c.data.update(seq_len=512, batch_size=8)
        c.train.update(steps=5000, lr=1e-3, warmup_steps=200, log_every=20, eval_every=500,
                       checkpoint_every=500)
    return c
