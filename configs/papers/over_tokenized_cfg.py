"""Over-Tokenized Transformer (arXiv 2501.16975), Sec. 3.1 / App. B.2: input vs output vocabulary
on a synthetic context-free grammar, scored by generation accuracy (spec over_tokenized.md A.2,
A.9 item 5).

The paper trains 12-layer GPT-2 models (hidden 768, "85M", and hidden 128, "2.4M") on 20M
sentences of Allen-Zhu & Li's cfg3f, samples 10,000 sequences with raw next-token probabilities
and reports the fraction the grammar accepts. Variant (ii), n-gram *encoding*, replaces the
input token at position i by the id of (x_{i-2}, x_{i-1}, x_i) in an exact 3^3 table; variant
(iii), n-gram *decoding*, predicts (x_{i+1}, x_{i+2}, x_{i+3}) with one joint softmax and keeps
the sampled 3-gram's first token at inference. Findings: 3-gram encoding helps both sizes;
3-gram decoding helps the large model and hurts the small one; a hierarchical input (sum of 1-,
2- and 3-gram tables, Fig. 7a) beats the flat 3-gram table at the small size.

Ours (``cpu``): the cfg3f sub-grammar ``cfg3f_d4`` (16..81 terminals, mean 40; a subtree of
cfg3f, ``seedjax.data.cfg``) as ``task:cfg`` episodes ``bos s_1 .. s_n`` packed into 256-token
windows with eos separators (4.7 sentences per window), batch 8, 500 steps (1M tokens, ~19,000
sentences), lr 3e-3 cosine; vocabulary 5 (0 eos, 1..3 terminals, 4 bos); 4-layer LMs of width
128 ("large") and 32 ("small"), same depth, as the paper keeps its depth. Rows per size:

  base     1-gram input, tied 1-gram output (5-way softmax)
  enc3     input = the exact 3-gram id only: over-encoding with orders=[3], unigram=False and
           m = 125 = 5^3 rows (no hashing), one full-width slice projected to D. The 1-gram
           table stays, but only as the tied output head (= an untied 5-way head; the input
           sees no 1-gram term), as the paper's output vocabulary stays 1-gram.
  enc123   hierarchical input (Fig. 7a): the 1-gram embedding plus exact 2-gram (modulus 125 >=
           5^2) and 3-gram (modulus 127 >= 5^3) tables, each full width, averaged (Alg. 1 mean)
  dec3     1-gram input; over-decoding ``ngram_joint`` n=3: one joint 125-way softmax over
           (x_{t+1..t+3}) (3-grams that cross an eos are not trained jointly: the next-token CE
           covers those positions); sampling keeps the 3-gram's first token (the head returns its
           marginal)

Every run is scored after training by ``task_eval`` (tasks "cfg_generation",
``seedjax.eval.task_scoring.cfg_generation``): 1,000 sequences sampled from ``[bos]`` at
temperature 1, top_p 1, for 82 steps (81 terminals + eos), judged by the exact recogniser; the
report's "Generation accuracy" table holds ``gen_acc`` per row and the paired differences of each
row against its size's base (enc123 also against enc3, the Fig. 7a comparison).

  python -m experiments.reproduce --config configs/papers/over_tokenized_cfg.py:cpu \
      --out results/over_tokenized_cfg --seeds 0,1,2

Cost, measured with 20-step runs (``STEP_S``) on the shared 2-core CPU while a reproduction
sweep and a benchmark also ran (load average 4-5; an idle machine should be faster, not
measured): with 256-token windows and batch 8 the large rows take 0.42-0.53 s per step, the
small ones ~0.14 s; generating and judging the 1,000 samples takes 15-19 s (large, compile
included) / ~5 s (small). So a large run is about 4-5 minutes (500 steps plus ~35 s of data,
compiles, validation and generation), a small one about 1.5 minutes, and the 8 rows x 3 seeds
about 70 minutes at that load.

Not calibrated: no full run was made before this config was committed. In a 250-step probe
(128-token windows, batch 16) the small base model reached val loss 0.60 with generation
accuracy 0/250; there the grammar's derivation entropy (29.4 nats per cfg3f_d4 sentence) bounds
the ideal val loss at 0.40 (0.54 with the 256-token windows used here), so the probe was ~15
nats per sentence short of a grammatical sampler. If the large base row also stays near 0
accuracy, the rows cannot be told apart by it (val loss still can): raise
``SIZES["cpu"]["steps"]`` (blocks follow) or move to an accelerator before drawing conclusions.

One pass over the data: ``blocks = steps * batch_size`` windows (d4's language has far more
sentences, up to e^29.4 derivations, than the ~19,000 that one pass holds, so repeats are
rare). ``smoke``: seconds (cfg3f_d3 in 32-token windows, 3 steps;
tests/eval/test_cfg_generation.py runs it, under the slow marker, through
experiments.reproduce.run_one).
"""
import ml_collections

from configs.papers.common import base_config, row

VARIANTS = ("cpu", "smoke")
PAPER_SCALE = {"what": "GPT-2 85M, 12 layers, on cfg3f (20M sentences of ~250 symbols, 10 "
                       "epochs [I: tokens = 20M x ~252 x 10])",
               "params": 85e6, "tokens": 5.0e10}
SMOKE_TRAIN_ROW = "large_enc3"

# per variant: grammar, window, batch, steps, model depth/width of the two sizes
SIZES = {
    "cpu": dict(grammar="cfg3f_d4", seq_len=256, batch_size=8, steps=500, warmup=50,
                n_layers=4, large=dict(d_model=128, n_heads=4, mlp_dim=384),
                small=dict(d_model=32, n_heads=2, mlp_dim=96),
                episodes=1000, eval_batch=250),
    "smoke": dict(grammar="cfg3f_d3", seq_len=32, batch_size=8, steps=3, warmup=1,
                  n_layers=2, large=dict(d_model=32, n_heads=2, mlp_dim=64),
                  small=dict(d_model=16, n_heads=2, mlp_dim=32),
                  episodes=16, eval_batch=8),
}
VOCAB = 5  # eos, terminals 1..3, bos (seedjax.data.cfg)
EXACT_3GRAM = VOCAB ** 3  # 125 rows: every 3-gram id has its own row
# seconds per train step, 20-step runs, shared 2-core CPU at load 4-5 (module docstring)
# (the spread of repeated runs at that load is ~30%); chosen: seq 256 x batch 8, which packs
# 4.7 sentences into a window (77% non-padding) where 128-token windows hold 1.7 (57%)
STEP_S = {"seq256_b16": {"large_base": (1.20, 0.83, 1.21), "large_dec3": 0.86,
                         "small_base": 0.22},
          "seq128_b16": {"large_base": (0.39, 0.48), "large_enc123": 0.56, "small_base": 0.085},
          "seq256_b8": {"large_base": 0.47, "large_enc3": 0.53, "large_enc123": 0.42,
                        "large_dec3": 0.43, "small_base": 0.14}}


def _variant(variant) -> str:
    variant = variant or "cpu"
    if variant not in VARIANTS:
        raise ValueError(f"variant {variant!r} unknown; allowed: {VARIANTS}")
    return variant


def get_config(variant=None):
    variant = _variant(variant)
    s = SIZES[variant]
    c = base_config(variant, "over_tokenized_cfg")
    c.model.update(vocab_size=VOCAB, n_layers=s["n_layers"], max_seq_len=s["seq_len"],
                   **s["large"])
    blocks = s["steps"] * s["batch_size"] if variant == "cpu" else 512  # smoke: >= 1 val batch
    c.data.update(source=f"task:cfg(grammar={s['grammar']});blocks={blocks}",
                  seq_len=s["seq_len"], batch_size=s["batch_size"], tokenizer="byte",
                  max_val_batches=8 if variant == "cpu" else 2)
    c.train.update(steps=s["steps"], warmup_steps=s["warmup"])
    if variant == "cpu":
        c.train.update(lr=3e-3, eval_every=100, checkpoint_every=250, log_every=25)
    c.task_eval = ml_collections.ConfigDict(dict(
        tasks="cfg_generation", episodes=s["episodes"], batch_size=s["eval_batch"], seed=0))
    # experiments.train --sample: from bos (byte 4) at raw probabilities, room for a sentence
    c.sample.update(prompt="\x04", length=s["seq_len"] // 2 if variant == "smoke" else 82,
                    temperature=1.0, top_p=1.0)
    return c


def _oe(**kw) -> dict:
    return dict(model__embed="over_encoding", model__embed_kwargs=kw)


def get_sweep(variant=None):
    s = SIZES[_variant(variant)]
    rows = []
    for size, paper in (("large", "85M"), ("small", "2.4M")):
        dims = {f"model__{k}": v for k, v in s[size].items()} if size == "small" else {}
        d = s[size]["d_model"]
        group = f"{size} (d={d}; paper {paper})"
        base = f"{size}_base"
        finding = {"large": ("helps (Sec. 3.1: 3-gram encoding helps both sizes)",
                             "helps the 85M model (Sec. 3.1)",
                             "- (Fig. 7a is at 2.4M only)"),
                   "small": ("helps the 2.4M model too (Sec. 3.1)",
                             "hurts the 2.4M model (Sec. 3.1)",
                             "beats the flat 3-gram input at 2.4M (Fig. 7a)")}[size]
        rows += [
            row(base, f"baseline GPT-2 {paper}, 1-gram in/out", group, **dims),
            row(f"{size}_enc3", f"3-gram encoding {finding[0]}", group, vs=base, **dims,
                **_oe(m=EXACT_3GRAM, orders=[3], unigram=False)),
            row(f"{size}_enc123", f"1+2+3-gram input {finding[2]}", group,
                vs=[base, f"{size}_enc3"], **dims,
                **_oe(m=EXACT_3GRAM, orders=[2, 3], width=d)),
            row(f"{size}_dec3", f"3-gram decoding {finding[1]}", group, vs=base, **dims,
                model__head="over_decoding",
                model__head_kwargs=dict(mode="ngram_joint", n=3, eos_id=0)),
        ]
    return rows
