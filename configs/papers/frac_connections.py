"""Frac-Connections (arXiv 2503.14125): DFC m=2/4 and SFC m=4 against the pre-norm baseline
(FC Fig. 4; the paper gives curves only: DFC x4 training loss about -0.014 vs baseline on
OLMoE-1.3B, DFC x4 > SFC x4 > baseline), and the component ablation of §5.1 against DFC x2
(without the rescale s_alpha/s_beta, without tanh, without the coefficient norm).

  python -m experiments.reproduce --config configs/papers/frac_connections.py:cpu \
      --out results/frac_connections --seeds 0,1,2

Paper-scale variants (parameter counts and compile checks; ``PAPER_PARAMS``, checked within 1%
by tests/configs/test_paper_scale.py): ``paper_olmo1b_<dfc4|sfc4>`` (OLMo-1B, FC Table 1's
dense model) and ``paper_olmoe1b7b_dfc4`` (OLMoE-1B-7B), the shapes of hyper_connections.py.
Paper counts [I]: FC Table 1's "Total Params" column is copied from HC Table 7 (spec §2.6), so
the paper's total = HC Table 7's base model + FC's own extra parameters (DFC x4: 165,056 =
(512 + 512 x 9 + 36 + 2) x 32; SFC x4: 1,152 = 36 x 32); OLMoE activated = FC Table 2 forward
FLOPs/token / 2 (body + head; 2.3629 G, which again equals HC's DHC x4 number: the base
model's 2.3580 G / 2 + 165,056 is used instead).
"""
from configs.papers.common import base_config, row
from configs.papers.hyper_connections import (check_paper_variant, olmo_model, olmoe_model,
                                              paper_lm_config)

# the paper's ablation model (FC §4: OLMoE-1.3B, 1.3B total / 260M active; ~500B tokens read
# off the figure axis [I]); params: total, as for our rows
PAPER_SCALE = {"what": "OLMoE-1.3B (total params; tokens [I] from Fig. 4's axis)",
               "params": 1.3e9, "tokens": 500e9}


FC_EXTRA = {"dfc4": 165_056, "sfc4": 1_152}
PAPER_VARIANTS = {"paper_olmo1b_dfc4": ("olmo1b", "dfc4"), "paper_olmo1b_sfc4": ("olmo1b", "sfc4"),
                  "paper_olmoe1b7b_dfc4": ("olmoe1b7b", "dfc4")}
_BASE = {"olmo1b": (1.17676442e9, 1.17676442e9, "all"),
         "olmoe1b7b": (6.91909427e9, 2.3580e9 / 2, ("all", "with_head"))}
PAPER_PARAMS = {
    v: {"total": _BASE[m][0] + FC_EXTRA[fc], "activated": _BASE[m][1] + FC_EXTRA[fc],
        "convention": _BASE[m][2], "source": "HC Table 7 base + FC §4.4 extra params [I]"}
    for v, (m, fc) in PAPER_VARIANTS.items()}


def paper_model(variant: str) -> dict:
    check_paper_variant(variant, tuple(PAPER_VARIANTS), "configs/papers/frac_connections.py")
    size, fc = PAPER_VARIANTS[variant]
    conn = {"rate": 4, "dynamic": fc == "dfc4"}
    base = olmo_model() if size == "olmo1b" else olmoe_model()
    return dict(base, connection="frac", connection_kwargs=conn)


def get_config(variant=None):
    if variant and variant.startswith("paper_"):
        model = paper_model(variant)
        return paper_lm_config(f"frac_connections_{variant}", model, lr=4e-4,
                               seq_len=model["max_seq_len"])
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
