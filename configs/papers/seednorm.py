"""SeeDNorm (arXiv 2510.22777): SeeDNorm vs RMSNorm vs DyT, multi-head, alpha-init and activation
sensitivity (SeeDNorm Table, OLMoE-1.3B c4 loss; the activation ablation has no numbers).

  python -m experiments.reproduce --config configs/papers/seednorm.py:cpu \
      --out results/seednorm --seeds 0,1,2 --rows rmsnorm,seednorm,dyt
  python -m experiments.reproduce --config configs/papers/seednorm.py:cpu \
      --out results/seednorm --seeds 0      # sensitivity rows: one seed
  python -m experiments.reproduce --config configs/papers/seednorm.py:cpu \
      --out results/seednorm --seeds 1,2 --rows seednorm_sigmoid,rmsnorm_gain1.5,\
seednorm_4heads,seednorm_alpha0.1,seednorm_hardtanh
  python -m experiments.diagnose_norms --out results/seednorm/diagnostics \
      --workdirs runs/reproduce/seednorm_cpu/{seednorm,seednorm_lr1e-3,seednorm_alpha0.1,seednorm_dot_dim}/s0 \
      --names seednorm,lr1e-3,alpha0.1,dot_dim

Paper-scale variants: the LM sizes of the SeeDNorm table with SeeDNorm in place of every
RMSNorm (the 2L + 1 block and final norms; whether the QK-norm is replaced is not stated [GAP],
ours keeps it): ``paper_olmoe1.3b`` (over_tokenized.py's inferred OLMoE-1.3B [I]),
``paper_olmoe7b`` (OLMoE-1B-7B, hyper_connections.py) and ``paper_olmo2_1b`` (OLMo2-1B [I]:
OLMo-1B's shape with OLMo2's 100,278-token vocabulary padded to 100,352, untied, QK-norm, RoPE
theta 5e5; OLMo2's norm-after-sublayer order is not built, pre-norm has the same parameters).
The SeeDNorm paper gives no parameter counts (its text is secondary-only); ``PAPER_PARAMS``
holds the same models' counts from the other specs (SeeDNorm adds 2D per norm, <= 0.01%):
OLMoE-1.3B as over_tokenized.py, OLMoE-7B as HC Table 7 / Table 8, OLMo2-1B from FC Table 2's
forward FLOPs 2.5587 G / 2 (body + head) [I].
"""
from configs.papers.common import base_config, row
from configs.papers.hyper_connections import (PAPER_PARAMS as HC_PARAMS, check_paper_variant,
                                              olmo_model, olmoe_model, paper_lm_config)
from configs.papers.over_tokenized import PAPER_PARAMS as OT_PARAMS
from configs.papers.over_tokenized import olmoe_1p3b_model

# SeeDNorm's LM table row used for our comparison (OLMoE-1.3B, 500B tokens, total params)
PAPER_SCALE = {"what": "OLMoE-1.3B", "params": 1.3e9, "tokens": 500e9}


OLMO2_VOCAB = 100_352
PAPER_PARAMS = {
    "paper_olmoe1.3b": dict(OT_PARAMS["paper_olmoe1.3b"], source="as over_tokenized.py"),
    "paper_olmoe7b": dict(HC_PARAMS["paper_olmoe1b7b_baseline"]),
    "paper_olmo2_1b": {"total": 2.5587e9 / 2, "activated": 2.5587e9 / 2,
                       "convention": "with_head", "source": "FC Table 2 FLOPs / 2 [I]"},
}


def paper_model(variant: str) -> dict:
    check_paper_variant(variant, tuple(PAPER_PARAMS), "configs/papers/seednorm.py")
    seed = dict(norm="seednorm", norm_kwargs={})
    if variant == "paper_olmoe1.3b":
        return olmoe_1p3b_model(**seed)
    if variant == "paper_olmoe7b":
        return olmoe_model(**seed)
    return dict(olmo_model(vocab=OLMO2_VOCAB, tied=False, qk_norm=True, rope_theta=500_000.0,
                           **seed), max_seq_len=4096)


def get_config(variant=None):
    if variant and variant.startswith("paper_"):
        model = paper_model(variant)
        return paper_lm_config(f"seednorm_{variant}", model, lr=4e-4,
                               seq_len=model["max_seq_len"])
    return base_config(variant, "seednorm")


def get_sweep(variant=None):
    seed = lambda **kw: dict(model__norm="seednorm", model__norm_kwargs=kw)
    d_model = get_config(variant).model.d_model
    return [
        row("rmsnorm", "2.922", "main", model__norm="rmsnorm"),
        row("seednorm", "2.900", "main", **seed()),
        row("dyt", "2.968", "main", model__norm="dyt"),
        # both norms at a third of the LR (the OLMoE recipe's 4e-4 is far below our 3e-3)
        row("rmsnorm_lr1e-3", "-", "lr", model__norm="rmsnorm", train__lr=1e-3),
        row("seednorm_lr1e-3", "-", "lr", train__lr=1e-3, **seed()),
        row("dyt_lr1e-3", "-", "lr", model__norm="dyt", train__lr=1e-3),
        row("seednorm_alpha0.1", "2.912", "alpha", **seed(alpha_init=0.1)),
        row("seednorm_alpha10", "3.154", "alpha", **seed(alpha_init=10.0)),
        row("seednorm_sigmoid", "- (qualitative)", "act", **seed(activation="sigmoid")),
        row("seednorm_hardtanh", "- (qualitative)", "act", **seed(activation="hardtanh")),
        # control for sigmoid's init gain of 1 + 0.5 alpha = 1.5: a plain RMSNorm started there
        row("rmsnorm_gain1.5", "-", "act", model__norm="rmsnorm",
            model__norm_kwargs={"scale_init": 1.5}),
        row("seednorm_4heads", "- (ViT: 16 heads best)", "heads", **seed(num_heads=4)),
        # [I] not a paper ablation: s = x.beta divided by sqrt(d) or d slows the per-step change
        # of s under Adam (the vision models divide alpha.beta by the dimension).
        row("seednorm_dot_sqrt_dim", "-", "dot", **seed(dot_scale="sqrt_dim")),
        row("seednorm_dot_dim", "-", "dot", **seed(dot_scale="dim")),
        row("seednorm_scalar_alpha", "2.909", "ablation", **seed(scalar_alpha=True)),
        row("seednorm_elementwise", "2.909", "ablation", **seed(num_heads=d_model)),
        # the paper's untested claims, each against default SeeDNorm: unbounded activations
        # diverge; without alpha / beta / gamma (held at init by a zero LR multiplier on its own
        # group; "without beta" [I]: beta fixed at 1/sqrt(d), since beta held at 0 is RMSNorm);
        # no weight decay on alpha and beta (the paper decays them; qualitative)
        row("seednorm_gelu", "diverges", "act", vs="seednorm", **seed(activation="gelu")),
        row("seednorm_swish", "diverges", "act", vs="seednorm", **seed(activation="swish")),
        row("seednorm_no_alpha", "2.907", "ablation", vs="seednorm",
            train__lr_multipliers={"seednorm_alpha": 0.0}, **seed()),
        row("seednorm_no_beta", "2.911", "ablation", vs="seednorm",
            train__lr_multipliers={"seednorm_beta": 0.0}, **seed(beta_init=d_model ** -0.5)),
        row("seednorm_no_gamma", "2.913", "ablation", vs="seednorm",
            train__lr_multipliers={"seednorm_gamma": 0.0}, **seed()),
        row("seednorm_no_decay", "worse (qualitative)", "wd", vs="seednorm",
            **seed(decay_alpha_beta=False)),
    ]
