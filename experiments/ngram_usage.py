"""How each over-encoding row of a sweep uses its tables on the data one run reads.

  python -m experiments.ngram_usage --config configs/papers/over_tokenized.py:cpu \
      --tokenizer runs/reproduce/over_tokenized_cpu/baseline/s0/tokenizer.json \
      --out results/over_tokenized/ngram_usage.md

For every sweep row whose model uses ``embed="over_encoding"``: the per-slice statistics of
``seedjax.ops.ngram_usage.table_usage`` (distinct n-grams, rows hit, collision rates) on the
first ``train.steps x data.batch_size x (data.seq_len + 1)`` tokens of the train stream (what
one run reads, at most one pass). ``--tokenizer``: reuse a run's tokenizer.json (the BPE of
every run of a sweep is the same, trained on the same train split); without it a "bpe" config
trains one. Writes a markdown table (and prints it).
"""
from __future__ import annotations

import os
import time
import warnings

from absl import flags

from experiments import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("config", None, "Sweep config file[:variant] (get_config, get_sweep).")
    flags.DEFINE_string("tokenizer", None, "tokenizer.json to use instead of data.tokenizer.")
    flags.DEFINE_string("out", None, "Markdown output path (printed only if unset).")
    flags.DEFINE_list("rows", [], "Rows to report (default: every over-encoding row).")


def usage_table(base, rows: list, tokens) -> list[str]:
    """Markdown lines: one line per (row, slice) of the over-encoding rows."""
    from experiments.overrides import apply_overrides
    from seedjax.models import LMConfig
    from seedjax.models.over_encoding_factories import over_encoding_config
    from seedjax.ops.ngram_usage import table_usage
    lines = ["| row | slice | order | modulus | distinct n-grams | rows hit | n-grams sharing a "
             "row | positions reading a shared row |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cfg = apply_overrides(base, r.get("overrides", {}))
        mcfg = LMConfig.from_dict(cfg.model)
        if mcfg.embed != "over_encoding":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # a multiple-of-V row warns; it is the point
            oe = over_encoding_config(mcfg, **dict(mcfg.embed_kwargs))
        for u in table_usage(oe, tokens):
            lines.append(f"| {r['name']} | {u['slice']} | {u['order']} | {u['modulus']} | "
                         f"{u['ngrams']:,} | {u['rows_hit']:,} | {u['collision_rate']:.1%} | "
                         f"{u['token_collision_rate']:.1%} |")
    return lines


def main(argv) -> None:
    from experiments.reproduce import load_sweep
    with cli.expected_errors():
        if not FLAGS.config:
            raise ValueError("--config is required (a sweep config file[:variant])")
        sweep = load_sweep(FLAGS.config)
        names = {r["name"] for r in sweep["rows"]}
        unknown = sorted(set(FLAGS.rows) - names)
        if unknown:
            raise ValueError(f"--rows {unknown} are not in the sweep; rows: {sorted(names)}")
        if FLAGS.tokenizer and not os.path.isfile(FLAGS.tokenizer):
            raise ValueError(f"--tokenizer {FLAGS.tokenizer!r} does not exist")
    from seedjax.data import build_lm_data
    base = sweep["base"]
    t0 = time.time()
    data = build_lm_data(source=base.data.source, seq_len=int(base.data.seq_len),
                         batch_size=int(base.data.batch_size), seed=int(base.train.seed),
                         val_fraction=float(base.data.val_fraction),
                         tokenizer=FLAGS.tokenizer or base.data.get("tokenizer", "byte"),
                         vocab_size=int(base.data.get("vocab_size", 4096)),
                         model_vocab_size=int(base.model.vocab_size))
    n = min(len(data.train_stream),
            int(base.train.steps) * int(base.data.batch_size) * (int(base.data.seq_len) + 1))
    rows = [r for r in sweep["rows"] if not FLAGS.rows or r["name"] in FLAGS.rows]
    lines = [f"# n-gram table usage: `{FLAGS.config}`", "",
             f"Command: `python -m experiments.ngram_usage --config {FLAGS.config}"
             + (f" --tokenizer {FLAGS.tokenizer}" if FLAGS.tokenizer else "") + "`", "",
             f"Tokens: the first {n:,} of the train stream ({len(data.train_stream):,} in all; "
             f"what one run reads: train.steps x batch x (seq_len + 1)), vocabulary "
             f"{data.tokenizer.vocab_size}. A 2-gram or 3-gram includes pads at document starts "
             "(boundary rule of the model).", "", *usage_table(base, rows, data.train_stream[:n]),
             "", f"({time.time() - t0:.0f} s)"]
    text = "\n".join(lines) + "\n"
    if FLAGS.out:
        os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
        with open(FLAGS.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    cli.run(main, define_flags)
