"""Race-DiT / Expert Race (arXiv 2503.16057): routing rules for a class-conditional MoE DiT.

Variants:
  cpu     scikit-learn's 8x8 digits (1,527 train / 270 val images, 256 scored), patch 2
          (16 tokens), d 96, 4 blocks, rectified flow, batch 128, 1,200 steps (~2-3 min per
          run on 2 cores); MoE 2-in-8 with hidden split 2 (experts of hidden 2d; the paper's
          default ablation model is B/2 2-in-8, split 2). Why not MNIST (the data default): a
          probe of the same DiT on MNIST 28x28 (patch 4, 800 steps of 64) sampled blobs
          (FID-proxy 45, class accuracy 0.22) at 4x the cost per step; on 8x8 digits 1,500
          steps gave clean digits (FID-proxy 1.0, class accuracy 0.97 at CFG 1).
  smoke   sklearn 8x8 digits, d 32, 1 block, 3 steps (tests)
  paper_<size>_<dense|moe>   Table 4 at paper scale: <size> in b2, m2, l2, xl2; ImageNet-256
          SD-VAE latents (32x32x4, patch 2, 256 tokens, 1,000 classes), MoE-4in32 (split 4).
          ``data.source`` must point at a .npz of latents (not shipped); used for parameter
          counts and compile checks.

Rows (3 seeds; the paper's ImageNet FID beside ours; ours: FID-proxy on an in-repo MNIST
classifier's features, never comparable to ImageNet FID):
  main        dense vs token choice vs expert choice (per image, per batch) vs Expert Race at
              equal activated compute (k = split): Tables 4 / 6 pattern; every MoE row with
              identity gating, PLR and the router similarity loss, the race also with its
              EMA threshold (Table 6 "full recipe" [I])
  gating      token choice / expert choice / Expert Race x softmax / sigmoid / identity, no
              threshold, PLR or RSL (Table 1)
  cumulative  Expert Race: softmax -> identity -> + threshold -> + PLR -> + RSL (Table 3)
  balance     no constraint vs Switch balance loss (0.01) vs router similarity (Table 2)

Diffusion training draws each of the 1,527 train images about 100 times (1,200 x 128 / 1,527),
each time with fresh noise and time: the one-pass rule of small reproductions does not apply
to denoising. The val loss is on 256 held-out images with fixed noise; samples are scored
at CFG scale 1 (500 images, 16 Euler steps) against the train images' features.

  python -m experiments.reproduce --config configs/papers/race_dit.py:cpu \\
      --out results/race_dit --rows dense,token_choice,expert_choice_image,expert_choice_batch,expert_race \\
      --seeds 0,1,2
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, for configs.dit

from configs.dit import get_config as dit_config  # noqa: E402
from configs.dit import race_moe  # noqa: E402
from configs.papers.common import row  # noqa: E402

PAPER_SCALE = {"what": "RaceDiT-B/2 2-in-8 (ImageNet-256 latents)", "params": 0.297e9,
               "images": 1.7e6 * 1024}
SMOKE_TRAIN_ROW = "expert_race"

# Table 4 (total, activated parameters) and the backbone shapes (layers, d, heads)
PAPER_SIZES = {"b2": (12, 768, 12), "m2": (16, 960, 16), "l2": (24, 1024, 16),
               "xl2": (28, 1152, 16)}
PAPER_PARAMS = {
    "b2_dense": (0.127e9, 0.127e9), "m2_dense": (0.265e9, 0.265e9),
    "l2_dense": (0.453e9, 0.453e9), "xl2_dense": (0.669e9, 0.669e9),
    "b2_moe": (0.531e9, 0.135e9), "m2_moe": (1.106e9, 0.281e9),
    "l2_moe": (1.889e9, 0.479e9), "xl2_moe": (2.788e9, 0.707e9),
}
CPU_MOE = dict(n_experts=8, top_k=2, split=2)


def _paper_config(variant: str):
    size, kind = variant[len("paper_"):].rsplit("_", 1)
    if size not in PAPER_SIZES or kind not in ("dense", "moe"):
        raise ValueError(f"variant {variant!r} unknown; allowed: paper_<{'|'.join(PAPER_SIZES)}>"
                         "_<dense|moe>")
    layers, d, heads = PAPER_SIZES[size]
    c = dit_config("mnist")
    c.name = f"race_dit_{variant}"
    c.model.update(image_size=32, channels=4, patch_size=2, d_model=d, n_layers=layers,
                   n_heads=heads, num_classes=1000, freq_dim=256)
    if kind == "moe":
        c.model.update(ffn="moe", moe_kwargs=race_moe(n_experts=32, top_k=4, split=4))
    c.data.update(source="imagenet256_latents.npz", batch_size=256)
    c.train.update(steps=1_700_000, lr=1e-4, warmup_steps=0, ema_decay=0.9999)
    c.mesh.shape = dict(data=-1, fsdp=1, model=1, expert=1, mem=1)
    c.mesh.strict_sharding = True   # on a pod, a dimension the mesh cannot split is an error
    return c


def get_config(variant=None):
    variant = variant or "cpu"
    if variant.startswith("paper_"):
        return _paper_config(variant)
    if variant not in ("cpu", "smoke"):
        raise ValueError(f"variant {variant!r} unknown; allowed: cpu, smoke, "
                         "paper_<size>_<dense|moe>")
    c = dit_config("smoke")
    c.name = f"race_dit_{variant}"
    if variant == "cpu":
        c.model.update(d_model=96, n_layers=4, n_heads=4, freq_dim=256)
        c.data.update(batch_size=128, val_fraction=0.15, max_val_batches=2)
        c.train.update(steps=1200, warmup_steps=50, log_every=50, eval_every=300,
                       checkpoint_every=300, ema_decay=0.999)
        c.sample.update(per_class=8, steps=16, cfg_scale=1.0)
        c.image_eval = {"per_class": 50}
    else:
        c.model.update(d_model=32, n_layers=1, n_heads=2, freq_dim=32)
        c.data.update(batch_size=16)
        c.train.update(steps=3, warmup_steps=1, log_every=1, eval_every=3, checkpoint_every=3)
        c.sample.update(per_class=1, steps=2)
        c.image_eval = {"per_class": 2}
    return c


def moe(router: str, gating: str = "identity", *, threshold=False, plr=False, rsl=False,
        balance=0.0, **kw) -> dict:
    """Overrides selecting the Race-DiT MoE FFN with ``router`` and the recipe's parts."""
    kwargs = race_moe(**CPU_MOE, router=router, gating=gating, threshold=threshold, plr=plr,
                      similarity_coef=1e-4 if rsl else 0.0, balance_coef=balance, **kw)
    return dict(model__ffn="moe", model__moe_kwargs=kwargs,
                train__objective_kwargs=dict(t_sampling="uniform", class_dropout=0.1,
                                             plr_weight=0.01))


def _gating_vs(router: str, gating: str):
    """Table 1 pairs: each router against token choice at the same gating; token choice's
    sigmoid / identity against its softmax (and the race's against its softmax, Table 3)."""
    if router == "token_choice":
        return "dense" if gating == "softmax" else "tc_softmax"
    if router == "expert_race" and gating != "softmax":
        return [f"tc_{gating}", "race_softmax"]
    return f"tc_{gating}"


def get_sweep(variant=None):
    full = dict(plr=True, rsl=True)
    gatings = ("softmax", "sigmoid", "identity")
    t1 = {("token_choice", "softmax"): "17.28", ("token_choice", "sigmoid"): "15.25",
          ("token_choice", "identity"): "15.98", ("expert_choice_image", "softmax"): "16.71",
          ("expert_choice_image", "sigmoid"): "15.73",
          ("expert_choice_image", "identity"): "15.70", ("expert_race", "softmax"): "16.47",
          ("expert_race", "sigmoid"): "13.85", ("expert_race", "identity"): "13.66"}
    short = {"token_choice": "tc", "expert_choice_image": "ec", "expert_race": "race"}
    return [
        row("dense", "18.03 (B/2-Dense, Table 4)", "main"),
        row("token_choice", "9.50 (Table 6)", "main", vs="expert_race",
            **moe("token_choice", **full)),
        row("expert_choice_image", "10.13 (Table 6, expert choice)", "main", vs="expert_race",
            **moe("expert_choice_image", **full)),
        row("expert_choice_batch", "9.08 (Table 6, BL choice)", "main", vs="expert_race",
            **moe("expert_choice_batch", **full)),
        row("expert_race", "8.03 (Table 6 / Table 3 last row)", "main",
            vs=["dense", "race_identity_threshold_plr"],
            **moe("expert_race", threshold=True, **full)),
        *[row(f"{short[r]}_{g}", f"{t1[(r, g)]} (Table 1)", "gating", vs=_gating_vs(r, g),
              **moe(r, g)) for r in short for g in gatings],
        row("race_identity_threshold", "11.56 (Table 3, + learnable threshold)", "cumulative",
            vs="race_identity", **moe("expert_race", threshold=True)),
        row("race_identity_threshold_plr", "8.95 (Table 3, + per-layer reg.); Table 2 "
            "no constraint 11.38", "cumulative", vs="race_identity_threshold",
            **moe("expert_race", threshold=True, plr=True)),
        row("race_balance_loss", "Table 2: FID 11.67, MaxVio 2.052, Comb 72.36%", "balance",
            vs="race_identity_threshold_plr",
            **moe("expert_race", threshold=True, plr=True, balance=0.01)),
    ]
