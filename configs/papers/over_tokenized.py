"""Over-Tokenized Transformer (arXiv 2501.16975): over-encoding (hashed n-gram input tables) and
over-decoding (extra future-token heads) on the small-scale base LM with a BPE vocabulary.

Variants: ``cpu`` (configs/papers/common.py's d=128, 6-layer LM; a 4,096-token byte-level BPE
trained on the stdlib corpus' train split, so 2-grams are really hashed: V^2 = 16.8M > m),
``smoke`` (byte tokenizer, V = 256, for the tests).

Rows (3 seeds; the paper's OLMoE-1.3B numbers beside ours, train loss unless stated):
  main       baseline; "oe" = n = 3, k = 2, m = 16 V - 15 (the paper's OE layout: k(n-1) = 4
             slices of D/4, Table 1 / Table 2 C6)
  vocab      2-gram tables (n = 2, k = 1) of m ~ 4V..64V (primes), for the log-linear law
             L = a - b log10 m (paper: b = 0.0256 per decade; Fig. 5)
  collision  m = 16 V exactly (a multiple of V: the previous token enters mod 16) vs the prime
             16 V - 15 (Table 4)
  hierarchy  at m ~ 16 V: 2-gram only (no 1-gram input term), {1,2} k=1 / k=4, {1,3} k=4,
             {1,2,3} k=4 (Table 3)
  slicing    at equal table parameters: one m x D table, k = 2, k = 4, one 2m x D/2 table
             (Table 2 C2-C5)
  norm       the OE layout with the other two normalisations of spec A.13 (not a paper ablation)
  od         product-decomposition over-decoding (n = 2, lambda = 0.1; Table 10), DeepSeek-V3
             sequential MTP (one module, weight 0.1; Table 5 "+MTP-DS"), and OT = OE + MTP-DS

  python -m experiments.reproduce --config configs/papers/over_tokenized.py:cpu \
      --out results/over_tokenized --seeds 0,1,2

Small reproductions run at most one pass over their data: 600 steps x 16 x 128 = 1.2M tokens of
a ~9M-token train split.

Paper-scale variants (parameter counts and compile checks; ``PAPER_PARAMS``, checked within 1%
by tests/configs/test_paper_scale.py):
  paper_olmoe1.3b           OLMoE-1.3B, the paper's MoE baseline (V = 50,280, spec A.6)
  paper_olmoe1.3b_oe12.8m   + OE-12.8M (n = 3, k = 2: 4 slices of 256; Table 1)
OLMoE-1.3B's shape is not published ("260M active / 1.3B total", d 1024 [INFERRED] from the
51M embedding). Inferred here [I]: 16 layers, 16 heads, 64 experts x 384 (the expert width V2
infers for OLMoE-227M), top-8, QK-norm, untied: 2 x (body + head activated) = 0.5414 GFLOP per
token vs Table 8's 0.5409 (+0.09%), the one precise number the paper gives for this model.
Its stated 1.3B total does not fit that shape within 1% under any counting (all parameters
1.379B, without the input embedding 1.328B, without both 1.276B).
"""
import math

from configs.papers.common import base_config, row
from configs.papers.hyper_connections import check_paper_variant, olmoe_model, paper_lm_config

PAPER_SCALE = {"what": "OLMoE-1.3B (+OE-12.8M)", "params": 1.3e9, "tokens": 500e9}
SMOKE_TRAIN_ROW = "ot"      # OE + MTP-DS: the smoke run covers both families
BPE_VOCAB = 4096

# primes just below 4V .. 64V, per vocabulary size (2-gram table sizes of the vocab sweep)
TABLE_SIZES = {4096: (16381, 32749, 65521, 131071, 262139),
               256: (1021, 2039, 4093, 8191, 16381)}


OLMOE_VOCAB = 50_280
OE_12M8 = {"m": 12_800_000, "n": 3, "k": 2}
# inferred OLMoE-1.3B (see the module docstring): visible fields, all [I] but d_model
OLMOE_1P3B = {"d_model": 1024, "n_layers": 16, "n_heads": 16, "expert_dim": 384}
# total: the stated 1.3B (all parameters, as OLMoE-1B-7B's 6.92B) [+ Table 1's OE tables 13.1B
# minus the 51M 1-gram table it includes]; activated: Table 8 forward FLOPs/token / 2, which
# counts the body and the head (lookups are free) [I]; embed: Table 1's "# Emb. params"
PAPER_PARAMS = {
    "paper_olmoe1.3b": {"total": 1.3e9, "activated": 0.5409e9 / 2, "embed": 51e6,
                        "convention": ("all", "with_head"),
                        "source": "spec A.6 (1.3B total); Table 8 FLOPs / 2; Table 1"},
    "paper_olmoe1.3b_oe12.8m": {"total": 1.3e9 - 51e6 + 13.1e9, "activated": 0.5430e9 / 2,
                                "embed": 13.1e9, "convention": ("all", "with_head"),
                                "source": "1.3B + Table 1 emb. params [I]; Table 8 FLOPs / 2"},
}


def olmoe_1p3b_model(**kw) -> dict:
    """The inferred OLMoE-1.3B (module docstring); ``kw`` replaces model fields."""
    return dict(olmoe_model(vocab=OLMOE_VOCAB, **OLMOE_1P3B), **kw)


def paper_model(variant: str) -> dict:
    check_paper_variant(variant, tuple(PAPER_PARAMS), "configs/papers/over_tokenized.py")
    if variant.endswith("_oe12.8m"):
        return olmoe_1p3b_model(embed="over_encoding", embed_kwargs=dict(OE_12M8))
    return olmoe_1p3b_model()


def get_config(variant=None):
    if variant and variant.startswith("paper_"):
        return paper_lm_config(f"over_tokenized_{variant}", paper_model(variant), lr=4e-4)
    c = base_config(variant, "over_tokenized")
    if (variant or "cpu") == "cpu":
        c.data.tokenizer = "bpe"
        c.data.vocab_size = BPE_VOCAB
        c.model.vocab_size = BPE_VOCAB
    return c


def _sizes(variant):
    return TABLE_SIZES[get_config(variant).model.vocab_size]


def oe(m: int, n: int = 2, k: int = 1, **kw) -> dict:
    """Overrides selecting the over-encoding embed."""
    return dict(model__embed="over_encoding", model__embed_kwargs=dict(m=m, n=n, k=k, **kw))


def mtp_ds(**kw) -> dict:
    return dict(model__head="over_decoding",
                model__head_kwargs=dict(mode="mtp_ds", weights=[0.1], **kw))


def get_sweep(variant=None):
    sizes = _sizes(variant)
    v = get_config(variant).model.vocab_size
    mid = sizes[2]                      # ~16 V
    law = "log-linear: -0.0256 per decade (Fig. 5)"
    return [
        row("baseline", "2.554", "main"),
        row("oe", "2.472 (OE-12.8M, n=3, k=2)", "main", **oe(mid, n=3, k=2)),
        *[row(f"oe2_m{m}", law, "vocab", **oe(m)) for m in sizes],
        row(f"oe2_m{16 * v}_multiple_of_V", "2.702 (m = 64 V) vs 2.678", "collision",
            vs=f"oe2_m{mid}", **oe(16 * v, allow_collisions=True)),
        row("oe2_no_1gram", "2.785 (no 1-gram, worse than the baseline 2.714)", "hierarchy",
            **oe(mid, unigram=False)),
        row("oe2_k4", "2.670 ({1,2} k=4) vs 2.678 (k=1)", "hierarchy", vs=f"oe2_m{mid}",
            **oe(mid, k=4)),
        row("oe3_only_k4", "2.684 ({1,3} k=4)", "hierarchy", vs="oe2_k4",
            **oe(mid, orders=[3], k=4)),
        row("oe23_k4", "2.667 ({1,2,3} k=4)", "hierarchy", vs="oe2_k4", **oe(mid, n=3, k=4)),
        row("oe2_k2", "2.503 (C4, k=2) vs 2.511 (C2, k=1)", "slicing", vs=f"oe2_m{mid}",
            **oe(mid, k=2)),
        row("oe2_2m_half_width", "2.507 (C3: 2m x D/2) vs 2.511 (C2)", "slicing",
            vs=f"oe2_m{mid}", **oe(sizes[3], width=get_config(variant).model.d_model // 2)),
        # [I] not a paper ablation: the three normalisations of spec A.13 on the OE layout (Alg. 1
        # divides the 1-gram embedding by 1 + k(n-1) = 5 too; LongCat-Lite divides the n-gram sum
        # only; a LongCat flag divides by the square root)
        row("oe_norm_ngram_mean", "- (LongCat-Lite: x + sum / (1 + S))", "norm", vs="oe",
            **oe(mid, n=3, k=2, norm="ngram_mean")),
        row("oe_norm_sqrt", "- (LongCat flag: / sqrt(1 + S))", "norm", vs="oe",
            **oe(mid, n=3, k=2, norm="sqrt")),
        row("od_product", "2.549 (lambda 0.1; Table 10)", "od",
            model__head="over_decoding",
            model__head_kwargs=dict(mode="product", n=2, weights=[0.1])),
        row("mtp_ds", "2.555 (+MTP-DS; Table 5)", "od", **mtp_ds()),
        row("ot", "2.481 (OT-12.8M) vs 2.472 (OE)", "od", vs="oe",
            **oe(mid, n=3, k=2), **mtp_ds()),
    ]


def get_series(variant=None):
    return [{
        "name": "table_size",
        "title": "loss vs 2-gram table size m (Over-Tokenized Fig. 5)",
        "xlabel": "m (rows of the 2-gram table)", "logx": True,
        "points": [(f"oe2_m{m}", m) for m in _sizes(variant)],
        "fit": "log10", "paper_slope": -0.0256,
        "paper": {"label": "Fig. 5 law, OLMoE-1.3B train loss: 2.6754 - 0.0256 log10 m",
                  "points": [(m, 2.6754 - 0.0256 * math.log10(m))
                             for m in (2e4, 1e5, 4e5, 1.6e6, 3.2e6, 12.8e6)]},
    }]
