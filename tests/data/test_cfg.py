"""Synthetic CFGs (seedjax.data.cfg) and generation accuracy (seedjax.eval.cfg_accuracy).

What is checked: cfg3f has the published shape and reproduces the authors' own sampler
output; every sampled sentence is accepted; random strings and one-symbol edits are mostly
rejected. The recogniser equals brute-force derivation on two hand-written grammars (one
layered, one recursive with unit rules). The exact length distribution matches the sampler.
The ``task:cfg`` source builds batches of whole sentences. Generation accuracy is 1 on grammar
sentences and ~0 on random strings; the Wilson interval and the n-gram ids match hand-computed
values."""
import itertools
import random
import zlib

import numpy as np
import pytest

from seedjax.data import build_lm_data
from seedjax.data import cfg_recognise as cfgmod
from seedjax.data.cfg import (CFG, CFG3F, GRAMMARS, CfgTaskConfig, length_distribution,
                              length_stats, ngram_ids, ngram_targets, sample_sentences)
from seedjax.data.cfg_recognise import accepts, accepts_batch, derivable_strings
from seedjax.data.episodes import generate_episodes
from seedjax.data.synthetic import format_task_source, make_task, parse_task_source
from seedjax.eval.cfg_accuracy import generation_accuracy, split_sequence, wilson_interval

# layered, ambiguous, with unit rules (B -> D, C -> 3, ...); lengths 2..12
LAYERED = CFG("layered", 10, ((10,), (11, 12), (13, 14)), (
    (10, (11, 12)), (10, (12, 11)), (10, (11, 11, 12)),
    (11, (13, 14)), (11, (14, 13, 13)),
    (12, (14,)), (12, (13, 14, 14)),
    (13, (1, 2)), (13, (3,)), (13, (1,)),
    (14, (2,)), (14, (3, 1)), (14, (2, 2))), (1, 2, 3))

# recursive: nested 1..2 pairs, concatenation, a unit cycle X <-> Y and left recursion Y -> X 1
RECURSIVE = CFG("recursive", 10, ((10, 11, 12),), (
    (10, (1, 10, 2)), (10, (1, 2)), (10, (10, 10)), (10, (11,)),
    (11, (12,)), (11, (2, 1, 1)),
    (12, (11,)), (12, (11, 1)), (12, (2,))), (1, 2))


def _all_strings(n_terminals: int, max_len: int):
    for n in range(1, max_len + 1):
        yield from itertools.product(range(1, n_terminals + 1), repeat=n)


def _edit(s: np.ndarray, rng) -> np.ndarray:
    out = s.copy()
    i = rng.integers(len(out))
    out[i] = (out[i] + rng.integers(1, 3) - 1) % 3 + 1  # a different terminal
    return out


def test_cfg3f_has_the_published_structure():
    """Root 22, then 5 levels of 3 nonterminals (ids 7..22, as in the released file), 3-4 rules
    of 2-3 next-level symbols each, distinct within a level; sentences 64..729 long."""
    assert CFG3F.levels[0] == (22,) and [len(lv) for lv in CFG3F.levels] == [1, 3, 3, 3, 3, 3]
    assert sorted(CFG3F.nonterminals) == list(range(7, 23)) and CFG3F.is_layered
    assert not CFG3F.is_recursive
    for lv in CFG3F.levels[1:]:
        rhs = [r for x in lv for r in CFG3F.productions[x]]
        assert len(set(rhs)) == len(rhs)
    for x in CFG3F.nonterminals:
        assert 3 <= len(CFG3F.productions[x]) <= 4
        assert all(2 <= len(r) <= 3 for r in CFG3F.productions[x])
    assert (CFG3F.min_len, CFG3F.max_len) == (64, 729)
    assert (CFG3F.bos_id, CFG3F.eos_id, CFG3F.vocab_size) == (4, 0, 5)


def test_cfg3f_replays_the_official_sampler_output():
    """The released demo (PhysicsLM4 demo0_basic.py) prints the cfg3f sentence drawn by a
    depth-first sampler with random.Random(7711), one randint(0, #rules - 1) per nonterminal.
    Replaying that procedure on CFG3F gives the same 305 tokens (prefix and CRC checked), so
    the transcribed rules and their order are the file's; the recogniser accepts the sentence
    and rejects it with its first token changed (as the demo expects)."""
    rng = random.Random(7711)

    def expand(x):
        if x in CFG3F.terminals:
            return [x]
        rules = CFG3F.productions[x]
        return [t for s in rules[rng.randint(0, len(rules) - 1)] for t in expand(s)]

    seq = expand(CFG3F.start)
    assert len(seq) == 305 and zlib.crc32(bytes(seq)) == 3476223287
    assert seq[:20] == [3, 3, 3, 3, 1, 1, 2, 1, 3, 1, 2, 3, 2, 2, 1, 2, 3, 3, 1, 2]
    assert accepts(CFG3F, seq)
    assert not accepts(CFG3F, [seq[0] % 3 + 1] + seq[1:])


@pytest.mark.parametrize("name,n", [("cfg3f", 40), ("cfg3f_d5", 200), ("cfg3f_d4", 300),
                                    ("cfg3f_d3", 300)])
def test_every_sampled_sentence_is_accepted(name, n):
    g = GRAMMARS[name]
    sents = sample_sentences(g, n, np.random.default_rng(hash(name) % 1000))
    assert all(s.dtype == np.int32 and g.min_len <= len(s) <= g.max_len for s in sents)
    assert accepts_batch(g, sents).all()


def test_random_strings_and_single_edits_are_mostly_rejected():
    """cfg3f_d5 and cfg3f: uniform random strings of sampled lengths are all rejected; a single
    changed symbol is rejected most of the time (measured: about 8% of edits stay in the
    language, from local ambiguity). Non-sentences are rejected, not errors."""
    rng = np.random.default_rng(0)
    for name, n in (("cfg3f_d5", 300), ("cfg3f", 40)):
        g = GRAMMARS[name]
        sents = sample_sentences(g, n, rng)
        rand = [rng.integers(1, 4, size=len(s)) for s in sents]
        assert not accepts_batch(g, rand).any()
        assert accepts_batch(g, [_edit(s, rng) for s in sents]).mean() < 0.2
    s = sample_sentences(CFG3F, 1, rng)[0]
    for bad in ([], np.r_[s, 0], np.r_[4, s], s[:-1] * 0 + 7, s.reshape(1, -1), [1.5, 2.0]):
        assert not accepts(CFG3F, bad)


@pytest.mark.parametrize("grammar,n_terms,max_len", [(LAYERED, 3, 7), (RECURSIVE, 2, 8)])
def test_recogniser_equals_brute_force_derivation(grammar, n_terms, max_len):
    """Every string over the terminals up to ``max_len`` symbols is accepted iff exhaustive
    leftmost derivation produces it. The layered grammar goes through the band CYK, the
    recursive one through the generic CYK."""
    language = derivable_strings(grammar, max_len)
    strings = list(_all_strings(n_terms, max_len))
    verdict = accepts_batch(grammar, [np.array(s) for s in strings])
    assert {s for s, ok in zip(strings, verdict) if ok} == language
    assert 0 < len(language) < len(strings)


@pytest.fixture
def expand_threshold(monkeypatch):
    """Sets the recogniser's top-down expansion threshold (clearing its plan cache)."""
    def set_to(value):
        monkeypatch.setattr(cfgmod, "_EXPAND_ABOVE", value)
        cfgmod._expanded.cache_clear()
    yield set_to
    cfgmod._expanded.cache_clear()


@pytest.mark.parametrize("threshold", [128, 1])
def test_band_cyk_agrees_with_generic_cyk(threshold, expand_threshold):
    """On cfg3f_d3 sentences, edits and random strings, and on every short string of the
    layered grammar, the band CYK equals the set-based CYK, both with the default plan (only
    the start symbol expanded top-down) and with every nonterminal expanded (threshold 1, the
    path cfg3f's two top levels take)."""
    expand_threshold(threshold)
    if threshold == 1:
        assert cfgmod._expanded(GRAMMARS["cfg3f_d3"]) == set(GRAMMARS["cfg3f_d3"].nonterminals)
    strings = [np.array(s) for s in _all_strings(3, 6)]
    np.testing.assert_array_equal(
        accepts_batch(LAYERED, strings),
        [cfgmod._accepts_generic(LAYERED, s.astype(np.int64)) for s in strings])
    rng = np.random.default_rng(1)
    g = GRAMMARS["cfg3f_d3"]
    sents = sample_sentences(g, 60, rng)
    cands = sents + [_edit(s, rng) for s in sents] + [rng.integers(1, 4, size=len(s))
                                                      for s in sents]
    fast = accepts_batch(g, cands)
    slow = np.array([cfgmod._accepts_generic(g, np.asarray(s, np.int64)) for s in cands])
    np.testing.assert_array_equal(fast, slow)
    assert fast[:60].all() and 0 < fast[60:].sum() < 60


def test_length_distribution_is_exact_and_matches_the_sampler():
    """The DP's pmf sums to 1 on [min, max]; 4,000 cfg3f_d4 samples match its mean within 4
    standard errors and its pmf within a total-variation distance of 0.06. The docstring
    table's statistics of each preset are the DP's."""
    g = GRAMMARS["cfg3f_d4"]
    p = length_distribution(g)
    assert abs(p.sum() - 1) < 1e-12 and p[:g.min_len].sum() == 0 and p[g.min_len] > 0
    assert len(p) == g.max_len + 1 and p[-1] > 0
    lens = np.array([len(s) for s in sample_sentences(g, 4000, np.random.default_rng(2))])
    st = length_stats(g)
    assert abs(lens.mean() - st["mean"]) < 4 * st["std"] / np.sqrt(len(lens))
    emp = np.bincount(lens, minlength=len(p)) / len(lens)
    assert 0.5 * np.abs(emp - p).sum() < 0.06
    table = {"cfg3f": (22, 64, 729, 249.9, 69.4), "cfg3f_d5": (20, 32, 243, 97.0, 27.5),
             "cfg3f_d4": (16, 16, 81, 40.0, 9.8), "cfg3f_d3": (13, 8, 27, 17.7, 4.1)}
    for name, (root, lo, hi, mean, std) in table.items():
        st = length_stats(GRAMMARS[name])
        assert GRAMMARS[name].start == root and (st["min"], st["max"]) == (lo, hi)
        assert round(st["mean"], 1) == mean and round(st["std"], 1) == std


def test_sub_grammars_are_subtrees_of_cfg3f():
    """cfg3f_dK keeps cfg3f's rules below its root; an accepted cfg3f_d3 sentence is accepted
    by cfg3f's nonterminal 13 (the same language)."""
    for g in GRAMMARS.values():
        assert set(g.rules) <= set(CFG3F.rules) and g.is_layered
    d3 = GRAMMARS["cfg3f_d3"]
    assert d3.levels == ((13,), (10, 11, 12), (7, 8, 9))
    assert CFG3F.rooted_at(13, "cfg3f_d3") == d3


def test_invalid_grammars_are_clear_errors():
    ok = ((10, (1, 2)),)
    with pytest.raises(ValueError, match="no rules"):
        CFG("x", 10, ((10, 11),), ok)
    with pytest.raises(ValueError, match="duplicate rule"):
        CFG("x", 10, ((10,),), ok + ok)
    with pytest.raises(ValueError, match="known symbols"):
        CFG("x", 10, ((10,),), ((10, (1, 9)),))
    with pytest.raises(ValueError, match=r"> T \+ 1"):
        CFG("x", 4, ((4,),), ((4, (1, 2)),))
    with pytest.raises(ValueError, match="derive no terminal"):
        CFG("x", 10, ((10, 11),), ok + ((11, (11, 1)),))
    with pytest.raises(ValueError, match="recursive"):
        length_distribution(RECURSIVE)


def test_cfg_task_episodes_and_fields():
    """Episodes are bos + a grammar sentence; max_len redraws longer sentences; a max_len
    beyond the grammar or too unlikely is an error naming the field; the source string parses
    and round-trips."""
    task = make_task("cfg", grammar="cfg3f_d3", max_len=20)
    assert task.length == 21 and CfgTaskConfig().length == 244 and CfgTaskConfig().limit == 243
    eps = generate_episodes(task, 200, seed=0, split="train")
    rows = eps["tokens"]
    assert rows.shape == (200, 21) and (rows[:, 0] == 4).all()
    sents = [r[1:][r[1:] > 0] for r in rows]
    assert max(len(s) for s in sents) <= 20 and accepts_batch(task.cfg, sents).all()
    assert (eps["answer_mask"] == (rows > 0) & (np.arange(21) > 0)).all()
    for bad in (dict(max_len=28), dict(max_len=9), dict(grammar="cfg9")):
        with pytest.raises(ValueError, match="cfg.max_len|cfg.grammar"):
            make_task("cfg", **{"grammar": "cfg3f_d3", **bad})
    src = "task:cfg(grammar=cfg3f_d3,max_len=20)"
    assert parse_task_source(src).tasks["cfg"] == task
    assert format_task_source({"cfg": task}) == src
    assert CfgTaskConfig().scaled_to(128).max_len == 127
    with pytest.raises(ValueError, match="lower cfg.max_len"):
        CfgTaskConfig(grammar="cfg3f").check_fits(512)


def test_task_cfg_source_builds_batches_of_whole_sentences():
    """build_lm_data(source="task:cfg(...)") gives int32 [4, 64] batches; every window starts
    with a bos, and each bos starts a whole sentence the grammar accepts, followed by eos
    separators/padding. The window's 65th token is the next block's bos, which also follows
    a sentence that fills its block exactly. Targets are the inputs shifted by one."""
    data = build_lm_data(source="task:cfg(grammar=cfg3f_d3);blocks=256", seq_len=64,
                         batch_size=4, seed=0)
    batch = next(data.train_iter)
    x, y = batch["inputs"], batch["targets"]
    assert x.shape == y.shape == (4, 64) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    g = GRAMMARS["cfg3f_d3"]
    n_sent = 0
    for row in np.concatenate([x, y[:, -1:]], axis=1):
        assert row[0] == g.bos_id and set(np.unique(row)) <= {0, 1, 2, 3, 4}
        starts = np.flatnonzero(row[:-1] == g.bos_id)
        for s, e in zip(starts, np.r_[starts[1:], len(row) - 1]):
            piece = row[s + 1:e + 1]
            sent = piece[:np.argmax(piece == 0)] if (piece == 0).any() else piece[:-1]
            assert accepts(g, sent) and (piece[len(sent):-1] == 0).all()
            n_sent += 1
    assert n_sent >= 8


def test_generation_accuracy_on_grammar_and_random_samplers():
    """A sampler returning bos + grammar sentence + eos + junk scores 1.0 with the sentences'
    mean length; random strings score ~0; sequences without eos are truncated and rejected;
    sample_fn is called in batches of at most batch_size."""
    g = GRAMMARS["cfg3f_d5"]
    rng = np.random.default_rng(3)
    calls, lengths = [], []

    def grammar_sampler(k):
        calls.append(k)
        out = np.full((k, 260), 0, np.int64)
        for i, s in enumerate(sample_sentences(g, k, rng)):
            out[i, 0], out[i, 1:len(s) + 1] = g.bos_id, s
            out[i, len(s) + 2:] = rng.integers(1, 5, size=260 - len(s) - 2)  # after the eos
            lengths.append(len(s))
        return out

    res = generation_accuracy(grammar_sampler, g, 100, batch_size=32)
    assert calls == [32, 32, 32, 4] and res["accuracy"] == 1.0 and res["n_accepted"] == 100
    assert res["n_truncated"] == 0 and res["mean_length"] == pytest.approx(np.mean(lengths))
    assert res["ci95"][1] == 1.0 and res["n_distinct"] == 100

    def random_sampler(k):
        return [np.r_[rng.integers(1, 4, size=rng.integers(40, 160)), 0] for _ in range(k)]

    res = generation_accuracy(random_sampler, "cfg3f_d5", 200)
    assert res["accuracy"] < 0.02 and res["ci95"][0] == 0.0

    assert [a.tolist() if hasattr(a, "tolist") else a
            for a in split_sequence([4, 1, 2, 0, 4, 3], g)] == [[1, 2], True]
    assert split_sequence(np.array([1, 2, 4]), g)[1] is False
    res = generation_accuracy(lambda k: np.ones((k, 50), np.int32), g, 10)
    assert res["n_truncated"] == 10 and res["accuracy"] == 0 and res["mean_length"] == 50
    with pytest.raises(ValueError, match="returned 1 sequences"):
        generation_accuracy(lambda k: [np.zeros(3)], g, 5)


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)


def test_ngram_ids_follow_the_pad_zero_rule():
    """id_i = sum_j x_{i-j} V^j with x_{<0} = 0 (hand values); n = 1 is the identity; distinct
    windows get distinct ids; targets are the ids of the next n tokens, whose first token is
    id // V^(n-1)."""
    assert ngram_ids([1, 2, 3], 2, 5).tolist() == [1, 2 + 5, 3 + 10]
    assert ngram_ids([1, 2, 3], 3, 5).tolist() == [1, 7, 3 + 10 + 25]
    assert ngram_ids([[4, 1], [2, 3]], 2, 5).tolist() == [[4, 1 + 20], [2, 3 + 10]]
    x = np.random.default_rng(4).integers(0, 5, size=400)
    np.testing.assert_array_equal(ngram_ids(x, 1, 5), x)
    ids = ngram_ids(x, 3, 5)
    windows = {tuple(np.r_[0, 0, x][i:i + 3]) for i in range(400)}
    assert len(set(ids.tolist())) == len(windows) and ids.max() < 125
    tgt = ngram_targets([1, 2, 3], 2, 5)
    assert tgt.tolist() == [3 + 10, 0 + 15, 0] and (tgt // 5).tolist() == [2, 3, 0]
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        ngram_ids([5], 2, 5)
