"""Generation accuracy on a synthetic context-free grammar (Over-Tokenized Transformer, arXiv
2501.16975, Sec. 3.1 / App. B.2: the fraction of generated sequences the grammar accepts).

The model stays outside this module. The caller passes ``sample_fn(k)``, which returns ``k``
generated token sequences: an int array [k, T] or a list of 1-D int arrays, e.g. the model
sampled from a ``[bos]`` prompt with raw next-token probabilities (the paper), cut at a length
limit. Each sequence is judged like this:

1. one leading ``bos`` (``cfg.bos_id``) is dropped, if present (the prompt may be included);
2. the sequence is cut at its first ``eos`` (id 0). A sequence without an eos counts as
   *truncated* (it hit the length limit) and is rejected, whatever its tokens;
3. the tokens before the eos are the sentence. It is accepted iff the grammar derives it
   (``seedjax.data.cfg_recognise.accepts_batch``, exact). An empty sentence, or one holding a bos or
   another non-terminal id, is rejected.

``generation_accuracy`` returns (JSON-serialisable): ``accuracy`` = accepted / n;
``ci95`` = the Wilson score 95% interval of that fraction; ``n``, ``n_accepted``;
``mean_length`` = mean sentence length in tokens (truncated sequences count their full length
after the bos); ``n_truncated``; ``n_distinct`` = distinct accepted sentences (the paper's
diversity concern, reported but not scored).

``ngram_ids`` / ``ngram_targets`` (from ``seedjax.data.cfg``) compute the inputs of the paper's
variant (ii) (n-gram encoding) and the targets of variant (iii) (n-gram decoding). NumPy only.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from seedjax.data.cfg import CFG, EOS_ID, get_grammar, ngram_ids, ngram_targets
from seedjax.data.cfg_recognise import accepts_batch
from seedjax.validation import check_int

__all__ = ["generation_accuracy", "judge_sequences", "split_sequence", "wilson_interval",
           "ngram_ids", "ngram_targets"]

_Z95 = 1.959963984540054  # two-sided 95% standard-normal quantile


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n`` (default: 95%)."""
    n, k = check_int("n", n, 1), check_int("k", k, 0)
    if k > n:
        raise ValueError(f"k={k} must be <= n={n}")
    p, z2 = k / n, z * z
    den = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return (0.0 if k == 0 else center - half), (1.0 if k == n else center + half)


def split_sequence(tokens, cfg: CFG) -> tuple[np.ndarray, bool]:
    """``(sentence, finished)``: steps 1-2 of the module docstring. ``finished`` is False when
    the sequence holds no eos (then ``sentence`` is all of it after the bos)."""
    t = np.asarray(tokens).reshape(-1)
    if t.size and t[0] == cfg.bos_id:
        t = t[1:]
    stop = np.flatnonzero(t == EOS_ID)
    if stop.size:
        return t[:stop[0]], True
    return t, False


def judge_sequences(cfg: CFG | str, sequences) -> dict:
    """Per-sequence verdicts: ``{"accepted": bool [N], "length": int [N], "finished": bool
    [N], "sentences": list}`` (module docstring)."""
    cfg = get_grammar(cfg) if isinstance(cfg, str) else cfg
    parts = [split_sequence(s, cfg) for s in sequences]
    finished = np.array([f for _, f in parts], bool)
    sentences = [s for s, _ in parts]
    accepted = accepts_batch(cfg, sentences) & finished
    return {"accepted": accepted, "length": np.array([len(s) for s in sentences], np.int64),
            "finished": finished, "sentences": sentences}


def generation_accuracy(sample_fn: Callable[[int], object], cfg: CFG | str, n: int, *,
                        batch_size: int = 64) -> dict:
    """Generation accuracy of ``n`` sequences from ``sample_fn`` (called with ``k <=
    batch_size`` until ``n`` sequences are in; it must return exactly ``k`` sequences) on the
    grammar ``cfg`` (a ``CFG`` or a preset name). Metrics: module docstring."""
    cfg = get_grammar(cfg) if isinstance(cfg, str) else cfg
    n, batch_size = check_int("n", n, 1), check_int("batch_size", batch_size, 1)
    seqs: list = []
    while len(seqs) < n:
        k = min(batch_size, n - len(seqs))
        got = sample_fn(k)
        got = list(got)
        if len(got) != k:
            raise ValueError(f"sample_fn({k}) returned {len(got)} sequences")
        seqs.extend(got)
    v = judge_sequences(cfg, seqs)
    n_acc = int(v["accepted"].sum())
    lo, hi = wilson_interval(n_acc, n)
    distinct = {np.asarray(s, np.int64).tobytes()
                for s, a in zip(v["sentences"], v["accepted"]) if a}
    return {"accuracy": n_acc / n, "ci95": [lo, hi], "n": n, "n_accepted": n_acc,
            "mean_length": float(v["length"].mean()),
            "n_truncated": int((~v["finished"]).sum()), "n_distinct": len(distinct)}
