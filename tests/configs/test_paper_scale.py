"""Paper-scale variants of the LM paper configs (``get_config("paper_<...>")``): our total and
activated parameter counts (abstract models, ``seedjax.models.param_count``) match the paper's
(``PAPER_PARAMS``) within 1% under the counting convention the paper uses; counts that cannot
be matched are strict xfails stating the gap. Ouro and Race-DiT have their own tests
(test_ouro_config.py, test_race_dit_config.py)."""
import functools
import importlib

import pytest

from experiments.paper_params import LM_PAPERS, lm_rows
from seedjax.models import LMConfig
from seedjax.models.param_count import count, param_counts

TOLERANCE = 0.01


def _olmoe_1p3b(ours: str) -> str:
    return (f"ours {ours} (all parameters) vs the stated 1.3B: +6.1%. OLMoE-1.3B's shape is "
            "not published; inferred from Over-Tokenized Table 8's 0.5409 GFLOP/token (the "
            "activated count matches within 0.1%); the stated 1.3B / 260M are rounded and fit "
            "no counting of that shape within 1% (non-embedding 1.276B, -1.8%; without the "
            "input embedding 1.328B, +2.1%)")


KNOWN_GAPS = {
    ("ultramem_v2", "paper_1b_v2", "total"):
        "ours 6,215,014,528 vs Table 10's 6.70B: -7.2%. The printed shape's value tables are "
        "16 x 528^2 x (768 + 384) = 5.139B, but Table 10's total minus activated is 5.621B "
        "(knum 552 would give 5.616B); the row is inconsistent, and the activated count "
        "(matched within 0.02%) fixes the unpublished FFN width",
    ("over_tokenized", "paper_olmoe1.3b", "total"): _olmoe_1p3b("1,379,126,272"),
    ("seednorm", "paper_olmoe1.3b", "total"): _olmoe_1p3b("1,379,193,856 (SeeDNorm)"),
}


def _module(paper):
    return importlib.import_module(f"configs.papers.{paper}")


@functools.cache
def _rows(paper) -> dict:
    return {r["variant"]: r for r in lm_rows(paper)}


def _cases():
    for paper in LM_PAPERS:
        for variant, entry in _module(paper).PAPER_PARAMS.items():
            for kind in ("total", "activated", *(("embed",) if "embed" in entry else ())):
                gap = KNOWN_GAPS.get((paper, variant, kind))
                marks = [pytest.mark.xfail(strict=True, reason=gap)] if gap else []
                yield pytest.param(paper, variant, kind, marks=marks,
                                   id=f"{paper}-{variant}-{kind}")


@pytest.mark.parametrize("paper,variant,kind", list(_cases()))
def test_counts_match_paper(paper, variant, kind):
    row = _rows(paper)[variant]
    ours, theirs = row["embed"] if kind == "embed" else (row[f"ours_{kind}"],
                                                         row[f"paper_{kind}"])
    assert abs(ours / theirs - 1) <= TOLERANCE, (
        f"{paper} {variant} {kind} ({row['convention']}): ours {ours:,} vs paper "
        f"{theirs:,.0f} ({ours / theirs - 1:+.2%})")


@pytest.mark.parametrize("paper", LM_PAPERS)
def test_bad_paper_variant_lists_allowed(paper):
    mod = _module(paper)
    with pytest.raises(ValueError, match="allowed") as err:
        mod.get_config("paper_bad")
    for variant in mod.PAPER_PARAMS:
        assert variant in str(err.value)


def test_known_gaps_name_real_cases():
    cases = {(p, v, k) for p in LM_PAPERS for v, e in _module(p).PAPER_PARAMS.items()
             for k in ("total", "activated", "embed") if k in e}
    assert set(KNOWN_GAPS) <= cases


def test_activated_counts_touched_experts_and_rows():
    """The helper's rules on a small model: experts count top_k / n_experts, a memory table
    heads * topk rows per unit (a shared table: per unit), n-gram tables one row per slice."""
    base = dict(vocab_size=64, d_model=32, n_layers=2, n_heads=2, mlp_dim=64)
    moe = param_counts(dict(base, ffn="moe", ffn_kwargs=dict(n_experts=8, top_k=2,
                                                              expert_dim=16)))
    experts = 2 * 8 * 3 * 32 * 16
    assert moe["body_total"] - moe["body_activated"] == experts * 6 // 8
    mem = dict(n_keys=8, k_dim=8, topk=4, v_dim=8, p_dim=8)
    for sharing in ("none", "ring"):
        kw = dict(mem, sharing=sharing, share_group=2) if sharing == "ring" else mem
        c = param_counts(dict(base, memory="ultramem_v2", memory_layers="every",
                              memory_kwargs=kw))
        rows = 2 * 64                       # 2 units x 8^2 rows, values + pre-values (8 + 8)
        assert c["body_total"] - c["body_activated"] == (rows - 2 * 4) * 16
    oe = param_counts(dict(base, embed="over_encoding",
                           embed_kwargs=dict(m=1000, n=3, k=2)))
    assert oe["embed_activated"] == 64 * 32 + 32      # the 1-gram table + 4 rows of 8
    model = LMConfig.from_dict(base)
    assert count(param_counts(model), "all") == count(param_counts(model), "with_head")
