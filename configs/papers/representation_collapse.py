"""Representation collapse (HC Fig. 3, FC Fig. 2): a deeper, narrower LM (d=96, 12 layers) for
pre-norm vs DHC n=4 vs DFC m=4; the measurement is the adjacent-sublayer cosine similarity of the
branch inputs on held-out tokens, plotted by the diagnostics CLI after training:

  python -m experiments.reproduce --config configs/papers/representation_collapse.py:cpu \
      --out results/representation_collapse --seeds 0
  python -m experiments.diagnose_connections \
      --workdirs runs/reproduce/representation_collapse_cpu/{baseline,dhc_n4,dfc_m4}/s0 \
      --names baseline,dhc_n4,dfc_m4 --out results/representation_collapse/diagnostics

Paper: baseline similarity climbs toward 1 in deep sublayers; HC lower with a wider band; FC in
between (curves only, no numbers).
"""
from configs.papers.common import base_config, row

# HC Fig. 3's model (OLMo-1B, 500B tokens; FC Fig. 2 uses OLMoE-1.3B)
PAPER_SCALE = {"what": "OLMo-1B (HC Fig. 3)", "params": 1.17676442e9, "tokens": 500e9}


def get_config(variant=None):
    c = base_config(variant, "representation_collapse")
    if (variant or "cpu") == "cpu":
        c.model.update(d_model=96, n_layers=12, n_heads=4, mlp_dim=256)
    return c


def get_sweep(variant=None):
    return [
        row("baseline", "collapse toward 1", "Fig3", model__connection="residual"),
        row("dhc_n4", "lower, wider band", "Fig3", model__connection="hyper",
            model__connection_kwargs={"rate": 4}),
        row("dfc_m4", "between", "Fig3", model__connection="frac",
            model__connection_kwargs={"rate": 4}),
    ]
