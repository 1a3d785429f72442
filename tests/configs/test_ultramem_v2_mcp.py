"""The MCP sweep rows of configs/papers/ultramem_v2.py (V2 Table 4): forward FLOPs per token equal
the V2 row's within 0.5% (Dk moves compute between the retrieval and the FFN, nothing else), and
each row's memory computational proportion (memory-layer FLOPs / all forward FLOPs, spec 6.3) is
the percentage in its name, spanning the paper's 12-27.5% around the V2 row's."""
import re

from configs.papers.ultramem_v2 import get_config, get_sweep
from experiments.overrides import apply_overrides
from seedjax.models import LMConfig
from seedjax.train.flops import lm_forward_flops_per_token


def _flops(base, overrides):
    cfg = apply_overrides(base, overrides)
    parts = lm_forward_flops_per_token(LMConfig.from_dict(cfg.model), int(cfg.data.seq_len))
    total = sum(parts.values())
    return total, sum(v for k, v in parts.items() if k.startswith("mem_")) / total


def test_mcp_rows_hold_flops_and_move_the_proportion():
    base, rows = get_config("cpu"), {r["name"]: r for r in get_sweep("cpu")}
    ref, ref_mcp = _flops(base, rows["v2_official_init"]["overrides"])
    mcps = [ref_mcp]
    for name, r in rows.items():
        if not name.startswith("v2_official_mcp"):
            continue
        total, mcp = _flops(base, r["overrides"])
        assert abs(total / ref - 1) < 0.005, (name, total, ref)
        assert abs(100 * mcp - int(re.search(r"mcp(\d+)", name).group(1))) < 1, (name, mcp)
        assert r["vs"] == "v2_official_init"
        mcps.append(mcp)
    assert len(mcps) == 4 and min(mcps) < 0.12 and max(mcps) > 0.25
