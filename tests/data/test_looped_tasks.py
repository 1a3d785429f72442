"""The Ouro section-6 manipulation tasks (seedjax.data.looped_tasks): Mano answers against an
independent recursive evaluator, lengths per the spec, multi-hop answers by following the graph
by hand, the held-out split, determinism, clear errors, and the ``task:`` stream's loss mask.
The oracles read the episode tokens only (no generator internals beyond the published graph)."""
import dataclasses
import re
from collections import Counter

import numpy as np
import pytest

from seedjax.data import ByteTokenizer, build_lm_data
from seedjax.data.episodes import SYMBOL_OFFSET, generate_episodes
from seedjax.data.looped_tasks import ManoConfig, MultiHopConfig
from seedjax.data.synthetic import parse_task_source, task_streams

MANO = ManoConfig(modulus=23, max_ops=6)
HOP = MultiHopConfig(n_layers=4, people_per_layer=6, n_relations=3, hops=3, train_fraction=0.5,
                     n_test=40)


def _prefix_value(symbols: list[str], p: int) -> int:
    """Evaluates a prefix expression over F_p recursively; it must use every symbol."""
    it = iter(symbols)

    def rec():
        s = next(it)
        if s in ("+", "-", "*"):
            a, b = rec(), rec()
            return (a + b if s == "+" else a - b if s == "-" else a * b) % p
        return int(s)

    value = rec()
    assert next(it, None) is None, symbols
    return value


def _mano_parts(cfg, row):
    syms = cfg.decode(row).split(" ")
    assert syms[0] == "<bos>" and syms[-2] == "<ans>", syms
    n_ops = int(syms[1].removeprefix("len_"))
    return n_ops, syms[2:-2], int(syms[-1])


@pytest.mark.parametrize("split", ["train", "test"])
def test_mano_answer_is_the_prefix_value_and_layout_matches_the_spec(split):
    """Every episode is <bos> len_l <prefix expression with l ops and l+1 numbers> <ans> answer
    (2l+5 tokens, right-padded with 0 to 2L+5); the answer equals an independent recursive
    evaluation mod 23; the answer mask marks exactly the answer token (query 0)."""
    eps = generate_episodes(MANO, 150, seed=0, split=split)
    assert eps["tokens"].shape == (150, MANO.length) and MANO.length == 2 * 6 + 5
    for row, ans, qid in zip(eps["tokens"], eps["answer_mask"], eps["query_id"]):
        n_ops, expr, answer = _mano_parts(MANO, row)
        assert sum(s in "+-*" for s in expr) == n_ops and len(expr) == 2 * n_ops + 1
        assert answer == _prefix_value(expr, 23)
        n = 2 * n_ops + 5
        assert (row[n:] == 0).all() and (row[:n] >= SYMBOL_OFFSET).all()
        assert np.flatnonzero(ans).tolist() == [n - 1] and qid[n - 1] == 0
        assert (qid[np.arange(len(qid)) != n - 1] == -1).all()


def test_mano_lengths_uniform_in_training_and_longest_at_test():
    """Train/val lengths l ~ U[1, L] (each of the L values within 30% of its expected count over
    1200 episodes); the test split uses l = L only; another modulus bounds the numbers."""
    counts = Counter(_mano_parts(MANO, r)[0]
                     for r in generate_episodes(MANO, 1200, seed=1, split="train")["tokens"])
    assert set(counts) == set(range(1, 7)) and all(abs(c - 200) < 60 for c in counts.values())
    test = generate_episodes(MANO, 50, seed=1, split="test")["tokens"]
    assert {_mano_parts(MANO, r)[0] for r in test} == {6}
    small = ManoConfig(modulus=5, max_ops=3)
    for row in generate_episodes(small, 100, seed=0, split="train")["tokens"]:
        _, expr, answer = _mano_parts(small, row)
        assert 0 <= answer < 5 and all(int(s) < 5 for s in expr if s not in "+-*")
    assert small.vocab_size == SYMBOL_OFFSET + 2 + 3 + 5 + 3 and small.chance == 1 / 5


def _hop_question(cfg, row):
    """(start, relations, answer) read from the token ids: ``name r.. <ans> name``."""
    base = SYMBOL_OFFSET + 1 + cfg.n_relations
    assert row[cfg.hops + 1] == SYMBOL_OFFSET  # <ans>
    rels = [int(t) - SYMBOL_OFFSET - 1 for t in row[1:cfg.hops + 1]]
    assert all(0 <= r < cfg.n_relations for r in rels)
    start, answer = int(row[0]) - base, int(row[-1]) - base
    assert 0 <= start < cfg.people_per_layer  # a layer-0 person
    return start, rels, answer


def test_multihop_answer_follows_the_graph_edges_by_hand():
    """The answer name is the layer-k person reached from the layer-0 start by applying the
    relations in order along the published edges; layout name r r r <ans> name, mask on the
    answer only."""
    edges, _, _ = HOP.world()
    assert edges.shape == (3, 6, 3)
    eps = generate_episodes(HOP, 200, seed=0, split="train")
    assert eps["tokens"].shape == (200, 6)
    for row, ans in zip(eps["tokens"], eps["answer_mask"]):
        start, rels, answer = _hop_question(HOP, row)
        person = start
        for layer, rel in enumerate(rels):
            person = edges[layer, person, rel]
        assert answer == 3 * HOP.people_per_layer + person
        assert ans.tolist() == [False] * 5 + [True]
    assert re.fullmatch(r"n\d+ r\d r\d r\d <ans> n\d+", HOP.decode(eps["tokens"][0]))


def _qid(cfg, row):
    start, rels, _ = _hop_question(cfg, row)
    return start * cfg.n_relations ** cfg.hops + sum(
        r * cfg.n_relations ** (cfg.hops - 1 - h) for h, r in enumerate(rels))


def test_multihop_held_out_questions_are_disjoint_and_fraction_is_respected():
    """All people * |R|^k = 162 questions split once: 40 held out, round(0.5 * 122) = 61 for
    training; the sets are disjoint; train/val episodes ask only training questions, test
    episodes only held-out ones; the split depends on world_seed only."""
    _, train_q, test_q = HOP.world()
    assert HOP.n_pairs == 162 and len(test_q) == 40 and len(train_q) == 61 == HOP.n_train
    assert not set(train_q) & set(test_q)
    for split, pool in (("train", train_q), ("val", train_q), ("test", test_q)):
        asked = {_qid(HOP, r) for r in generate_episodes(HOP, 300, 3, split)["tokens"]}
        assert asked <= set(pool.tolist()) and len(asked) > 20
    full = MultiHopConfig(n_layers=4, people_per_layer=6, n_relations=3, train_fraction=1.0,
                          n_test=40)
    assert len(full.world()[1]) == 122
    other = dataclasses.replace(HOP, world_seed=1).world()
    assert not np.array_equal(other[0], HOP.world()[0])


@pytest.mark.parametrize("cfg", [MANO, HOP], ids=["mano", "multihop"])
def test_generation_is_deterministic_per_seed_and_split(cfg):
    """Same (seed, split) -> identical episodes, first k of n independent of n; another seed
    gives different episodes."""
    a = generate_episodes(cfg, 30, seed=4, split="train")
    b = generate_episodes(cfg, 30, seed=4, split="train")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(generate_episodes(cfg, 7, 4, "train")["tokens"],
                                  a["tokens"][:7])
    assert (generate_episodes(cfg, 30, seed=5, split="train")["tokens"] != a["tokens"]).any()


@pytest.mark.parametrize("make,msg", [
    (lambda: ManoConfig(modulus=1), "mano.modulus=1 must be an integer in [2, 1024]"),
    (lambda: ManoConfig(max_ops=0), "mano.max_ops=0 must be an integer in [1, 64]"),
    (lambda: ManoConfig(modulus=2.5), "mano.modulus=2.5 must be an integer in [2, 1024]"),
    (lambda: MultiHopConfig(train_fraction=0.0), "multihop.train_fraction=0.0 must be a number "
                                                 "in (0, 1]"),
    (lambda: MultiHopConfig(train_fraction=1.5), "multihop.train_fraction=1.5 must be"),
    (lambda: MultiHopConfig(train_fraction=True), "multihop.train_fraction=True must be"),
    (lambda: MultiHopConfig(n_layers=3, hops=3), "multihop.hops=3 must be an integer in [1, 2]"),
    (lambda: MultiHopConfig(people_per_layer=2, n_relations=2, n_test=16),
     "multihop.n_test=16 must be an integer in [1, 15]"),
])
def test_bad_arguments_raise_one_line_naming_field_and_allowed_values(make, msg):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value).startswith(msg) and "\n" not in str(e.value)


def test_task_source_streams_a_loss_mask_on_answers_only():
    """task:mano+mqar: the mask stream is 1 exactly on the answer tokens of mano episodes and
    on every token of mqar episodes, never on separators; build_lm_data adds "mask" = the mask
    of the targets; a source without answer-only tasks has no mask; decimal fields parse; two
    symbolic tasks in one source, or a vocabulary beyond the byte tokenizer, are clear errors."""
    src = "task:mano(max_ops=4)+mqar(n_pairs=4,n_queries=2)"
    spec = parse_task_source("task:multihop(train_fraction=0.25,n_test=100)")
    assert spec.tasks["multihop"] == MultiHopConfig(train_fraction=0.25, n_test=100)
    with pytest.raises(ValueError, match=r"tasks \['mano', 'multihop'\] each number"):
        parse_task_source("task:mano+multihop")
    streams = task_streams(src + ";blocks=16", seq_len=64, seed=0, val_fraction=0.25,
                           tokenizer=ByteTokenizer())
    tok, mask = streams.train, streams.train_mask
    assert mask.shape == tok.shape and streams.corpus.description["loss_mask"] == "answers"
    after_ans = np.zeros(len(tok), bool)
    after_ans[1:] = tok[:-1] == MANO.token("<ans>")
    ascii_tok = (tok > 0) & (tok < 128)
    np.testing.assert_array_equal(mask.astype(bool), after_ans | ascii_tok)
    assert after_ans.sum() > 16 and ascii_tok.sum() > 16 and not mask[tok == 0].any()
    data = build_lm_data(source=src + ";blocks=16", seq_len=64, batch_size=4, seed=0,
                         val_fraction=0.25)
    batch = next(data.train_iter)
    assert batch["mask"].dtype == np.float32 and batch["mask"].shape == (4, 64)
    for row_t, row_m in zip(batch["targets"], batch["mask"]):
        start = next(i for i in range(0, len(tok) - 64, 64) if (tok[i + 1:i + 65] == row_t).all())
        np.testing.assert_array_equal(row_m, mask[start + 1:start + 65])
    assert "mask" in data.val_batches()[0]
    plain = task_streams("task:mqar(n_pairs=4,n_queries=2);blocks=4", seq_len=64, seed=0,
                         val_fraction=0.25, tokenizer=ByteTokenizer())
    assert plain.train_mask is None and "loss_mask" not in plain.corpus.description
    with pytest.raises(ValueError, match=r"task 'multihop' .* uses token ids up to 648"):
        task_streams("task:multihop(n_layers=5,people_per_layer=100,n_relations=20,n_test=3000)",
                     seq_len=64, seed=0, val_fraction=0.25, tokenizer=ByteTokenizer())
