"""Ouro / LoopLM (arXiv 2510.25741): the looped LM in the released checkpoints' layout.

Variants:
  smoke, cpu   the small-scale base (configs/papers/common.py) as a looped LM: 4 loops of 2
               shared blocks (cpu; the spec's B.10 size, d 128), sandwich RMSNorms, final norm
               after every loop, exit gate, untied head, trained with the Stage I objective
               (beta 0.1, the paper's stage 1a)
  1.4b, 2.6b   the released Ouro-1.4B / Ouro-2.6B model configs (published config.json values:
               d 2048, 16 heads x 128 (no GQA), SwiGLU 5632, vocab 49152, RoPE theta 1e6,
               eps 1e-6, untied, total_ut_steps 4, early_exit_threshold 1.0; 24 / 48 layers).
               Parameter counts equal the checkpoints' exactly: 1,434,652,673 and
               2,667,974,657 (tests/configs/test_ouro_config.py, abstract init).

Released weights load with ``seedjax.convert.ouro.load_hf``, which reads config.json itself;
these configs are for training or sizing a model of the same shape. The training settings of the
paper variants (bf16 compute, scanned + rematerialised layers, seq 4096, Table 1 stage-1a
LR 3e-4, AdamW 0.9/0.95, wd 0.1, clip 1.0, Stage I with beta 0.1) are given for completeness.

Reproduction (3 seeds; rows paired with ``looped``):

  python -m experiments.reproduce --config configs/papers/ouro.py:cpu --out results/ouro \
      --seeds 0,1,2 --rows looped,looped_beta0,dense_iso_params,dense_iso_flops
  python -m experiments.looped_depth --out results/ouro/depth \
      --workdirs runs/reproduce/ouro_cpu/looped/s{0,1,2}
"""
from __future__ import annotations

from configs.papers.common import base_config, row
from configs.lm import get_config as lm_config

VARIANTS = ("smoke", "cpu", "1.4b", "2.6b")
PAPER_LAYERS = {"1.4b": 24, "2.6b": 48}
# released parameter counts ([I] from the tensor list, spec B.14)
PAPER_PARAMS = {"1.4b": 1_434_652_673, "2.6b": 2_667_974_657}
# the comparison scale: Ouro-1.4B, 7.7T tokens over all stages (Table 1)
PAPER_SCALE = {"what": "Ouro-1.4B (T = 4)", "params": 1_434_652_673, "tokens": 7.7e12}
SMOKE_TRAIN_ROW = "looped"
STAGE_ONE = {"objective": "looped", "objective_kwargs": {"beta": 0.1}}
CPU_LAYERS = 2
# sweep-row overrides that make a looped row a plain (non-looped) LM with the LM loss
NON_LOOPED = dict(model__stack="plain", model__stack_kwargs={}, train__objective="lm",
                  train__objective_kwargs={})


def looped_model(loops: int = 4, exit_threshold: float = 1.0) -> dict:
    """The model fields that make an LM config Ouro-shaped."""
    return dict(sandwich_norm=True, head="untied", norm="rmsnorm", connection="residual",
                stack="looped", stack_kwargs={"loops": loops, "exit_gate": True,
                                              "exit_rule": "threshold",
                                              "exit_threshold": exit_threshold})


def paper_model(size: str) -> dict:
    """The model block of Ouro-1.4B ("1.4b") or Ouro-2.6B ("2.6b")."""
    if size not in PAPER_LAYERS:
        raise ValueError(f"Ouro size {size!r} unknown; allowed: {sorted(PAPER_LAYERS)}")
    return dict(vocab_size=49152, d_model=2048, n_layers=PAPER_LAYERS[size], n_heads=16,
                n_kv_heads=16, head_dim=None, mlp_dim=5632, max_seq_len=65536,
                rope_theta=1_000_000.0, qk_norm=False, norm_eps=1e-6, init_std=0.02,
                dtype="bfloat16", scan_layers=True, remat=True, **looped_model())


def get_config(variant: str | None = None):
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"configs/papers/ouro.py variant {variant!r} unknown; allowed: "
                         f"{VARIANTS}")
    if variant in ("smoke", "cpu"):
        c = base_config(variant, "ouro")
        c.model.update(looped_model())
        if variant == "cpu":
            c.model.n_layers = CPU_LAYERS
        c.train.update(STAGE_ONE)
        return c
    c = lm_config("tiny")
    c.name = f"ouro_{variant}"
    c.model.update(paper_model(variant))
    c.data.update(seq_len=4096, batch_size=8)
    c.train.update(lr=3e-4, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0, **STAGE_ONE)
    c.mesh.strict_sharding = True   # on a pod, a dimension the mesh cannot split is an error
    return c


def get_sweep(variant=None):
    """Rows of the small-scale reproduction: the Stage I looped model (L shared blocks x 4
    loops), beta = 0 (the paper: the exit distribution collapses onto the last loop without the
    entropy term), 0.01 and 0.05 (the beta sweep of spec B.10), and non-looped models of equal
    parameters (the L blocks once) and equal FLOPs (4L distinct blocks)."""
    layers = get_config(variant).model.n_layers
    return [
        row("looped", "L(1) > L(2) > L(3) >= L(4) (B.10: 4.134, 3.962, 3.941, 3.946)",
            "main"),
        row("looped_beta0", "exit mass collapses onto the last loop (sec. 3.3)",
            "beta", train__objective_kwargs={"beta": 0.0}),
        *[row(f"looped_beta{b.replace('.', '')}", f"beta {b}: entropy between beta 0 and 0.1 "
              "(the released schedule: 0.1, then 0.05; Table 1)", "beta",
              train__objective_kwargs={"beta": float(b)}) for b in ("0.01", "0.05")],
        row("dense_iso_params", "worse (iso-parameter; Ouro-1.4B ~ 4B dense, sec. 5)", "dense",
            **NON_LOOPED),
        row("dense_iso_flops", "about equal (iso-FLOP; Ouro-1.4B ~ 4B dense, sec. 5)",
            "dense", model__n_layers=4 * layers, **NON_LOOPED),
    ]
