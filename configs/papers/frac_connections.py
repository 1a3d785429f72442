"""Frac-Connections (arXiv 2503.14125): DFC m=2/4 and SFC m=4 against the pre-norm baseline
(FC Fig. 4; the paper gives curves only: DFC x4 training loss about -0.014 vs baseline on
OLMoE-1.3B, DFC x4 > SFC x4 > baseline), and the component ablation of §5.1 against DFC x2
(without the rescale s_alpha/s_beta, without tanh, without the coefficient norm).

  python -m experiments.reproduce --config configs/papers/frac_connections.py:cpu \
      --out results/frac_connections --seeds 0,1,2
"""
from configs.papers.common import base_config, row

# the paper's ablation model (FC §4: OLMoE-1.3B, 1.3B total / 260M active; ~500B tokens read
# off the figure axis [I]); params: total, as for our rows
PAPER_SCALE = {"what": "OLMoE-1.3B (total params; tokens [I] from Fig. 4's axis)",
               "params": 1.3e9, "tokens": 500e9}


def get_config(variant=None):
    return base_config(variant, "frac_connections")


def get_sweep(variant=None):
    fc = lambda rate, dynamic=True, **kw: dict(
        model__connection="frac", model__connection_kwargs={"rate": rate, "dynamic": dynamic,
                                                            **kw})
    return [
        row("baseline", "0 (reference)", "Fig4", model__connection="residual"),
        row("dfc_m2", "< baseline", "Fig4", **fc(2)),
        row("dfc_m4", "-0.014 (train)", "Fig4", **fc(4)),
        row("sfc_m4", "between", "Fig4", **fc(4, dynamic=False)),
        # the component ablation of FC §5.1 (curves only), each part removed from DFC x2:
        # removing the rescale hurts most, then tanh, then the norm (smallest)
        row("dfc_m2_no_rescale", "worst (hurts most)", "ablation", vs="dfc_m2",
            **fc(2, rescale=False)),
        row("dfc_m2_no_tanh", "second", "ablation", vs="dfc_m2", **fc(2, use_tanh=False)),
        row("dfc_m2_no_norm", "least hurt", "ablation", vs="dfc_m2", **fc(2, coeff_norm="none")),
    ]
