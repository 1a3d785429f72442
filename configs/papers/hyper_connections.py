"""Hyper-Connections (arXiv 2409.19606) and the mHC peer (2512.24880): loss ordering over the
expansion rate and static/dynamic (HC Tables 1-2), and the component ablation (HC Table 3).

  python -m experiments.reproduce --config configs/papers/hyper_connections.py:cpu \
      --out results/hyper_connections --seeds 0,1,2

Paper column: OLMo-1B, 500B tokens, V2 eval loss (Tables 1-3). Ours: a 1.3M-parameter byte LM on
the stdlib corpus; only the ordering is comparable, and differences below the seed spread are
noise. Table 3's "frozen" parts use lr multiplier 0 on the connection_width / connection_depth
parameter groups.
"""
from configs.papers.common import base_config, row

# the paper's model and data, for the scale line of the report (HC Table 7 total parameters)
PAPER_SCALE = {"what": "OLMo-1B", "params": 1.17676442e9, "tokens": 500e9}


def get_config(variant=None):
    return base_config(variant, "hyper_connections")


def _hc(rate, dynamic=True, use_tanh=True):
    return {"rate": rate, "dynamic": dynamic, "use_tanh": use_tanh}


def get_sweep(variant=None):
    hc = lambda **kw: dict(model__connection="hyper", model__connection_kwargs=_hc(**kw))
    return [
        row("baseline", "2.811", "T1", model__connection="residual"),
        row("dhc_n1", "2.819", "T1", **hc(rate=1)),
        row("dhc_n2", "2.802", "T1", **hc(rate=2)),
        row("dhc_n4", "2.781", "T1", **hc(rate=4)),
        row("shc_n4", "2.791", "T2", **hc(rate=4, dynamic=False)),
        # the paper's "n = 8 adds little" (vs n = 4) and static vs dynamic at n = 2
        row("dhc_n8", "2.778 (vs 2.781 at n = 4)", "T1", vs=["dhc_n4", "baseline"], **hc(rate=8)),
        row("shc_n2", "2.799 (vs DHC x2 2.802)", "T2", vs=["dhc_n2", "baseline"],
            **hc(rate=2, dynamic=False)),
        row("dhc_n4_notanh", "2.779", "T3", **hc(rate=4, use_tanh=False)),
        row("dhc_n4_frozen_wc", "2.802", "T3", **hc(rate=4),
            train__lr_multipliers={"connection_width": 0.0}),
        row("dhc_n4_frozen_b", "2.783", "T3", **hc(rate=4),
            train__lr_multipliers={"connection_depth": 0.0}),
        row("mhc_n4", "- (mHC paper: 27B only)", "mHC", model__connection="mhc",
            model__connection_kwargs={"rate": 4}),
    ]
