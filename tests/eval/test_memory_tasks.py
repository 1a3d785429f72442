"""Memory-intensive synthetic tasks: generators, scoring, the ``task:`` data source, the Trainer
end to end with resume, the reproduce hook and the evaluation CLI. Each test's docstring states
the property it checks. The oracles below parse the *decoded text* only (no generator internals).
"""
import dataclasses
import json
import os
import re
import shutil
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.data import ByteTokenizer, build_lm_data
from seedjax.data import memory_tasks as mt
from seedjax.data.episodes import generate_episodes
from seedjax.data.synthetic import format_task_source, make_task, parse_task_source, task_streams
from seedjax.eval import task_scoring as ts

CFGS = {
    "mqar": mt.MQARConfig(n_pairs=8, n_queries=4),
    "multi_round": mt.MultiRoundConfig(n_rounds=5, facts_per_round=2, min_lag=2),
    "icl": mt.ICLConfig(n_symbols=8, n_demos=10, n_queries=4, n_unseen=3, n_unseen_queries=2),
}
TASK_IDS = list(CFGS)


# ------------------------------------------------------------------ rule-based text oracles
def _oracle(name: str, text: str, cfg) -> list:
    """[(start, end, predicted answer or None, is_control)] per query, in order, parsed from the
    decoded episode; ``None`` when the context does not determine the answer."""
    out = []
    if name in ("mqar", "icl"):
        head, sep, _ = text.partition(" |")
        assert sep, text
        pat = r"([a-z]+):(\S+)" if name == "mqar" else r"([A-Z])->([A-Z])"
        pairs = re.findall(pat, head)
        table = {}
        for k, v in pairs:  # ICL demos repeat; a mapping must be a function of its input
            assert table.setdefault(k, v) == v, f"inconsistent demo {k}: {text}"
        if name == "icl":
            assert len(set(table.values())) == len(table), f"demos not injective: {text}"
        q = r" ([a-z]+):(\S+)" if name == "mqar" else r" ([A-Z])->([A-Z])"
        base = len(head) + 2
        for m in re.finditer(q, text[base:]):
            s, e = m.span(2)
            out.append((base + s, base + e, table.get(m.group(1)), m.group(1) not in table))
        return out
    facts, pos = {}, 0
    for r, line in enumerate(text.split("\n")[:-1]):
        stated, _, question = line.partition(" ? ")
        if question:
            qname, val = question.split("=")
            assert r - facts[qname][1] >= cfg.min_lag, text  # asks a fact >= min_lag rounds back
            s = pos + len(stated) + 3 + len(qname) + 1
            out.append((s, s + len(val), facts[qname][0], False))
        for kv in stated.split(" "):
            k, v = kv.split("=")
            assert k not in facts, f"name {k} reused: {text}"
            facts[k] = (v, r)
        pos += len(line) + 1
    return out


@pytest.mark.parametrize("name", TASK_IDS)
def test_oracle_scores_100_uniform_guess_scores_chance_and_masks_are_exact(name):
    """A text-parsing oracle answers every scored query right (answers are recoverable from the
    context); answer_mask/control_mask mark exactly the answer characters of scored/control
    queries and query_id numbers the queries 0..Q-1; guessing uniformly over the answer
    alphabet scores ~chance."""
    cfg = CFGS[name]
    eps = generate_episodes(cfg, 120, seed=0)
    rng = np.random.default_rng(0)
    guess_hits, guess_n, n_scored = 0, 0, 0
    for i in range(len(eps["tokens"])):
        text = ByteTokenizer().decode(eps["tokens"][i])
        queries = _oracle(name, text, cfg)
        want_ans = np.zeros(len(text), bool)
        want_ctl = np.zeros(len(text), bool)
        for q, (s, e, pred, control) in enumerate(queries):
            (want_ctl if control else want_ans)[s:e] = True
            assert (eps["query_id"][i, s:e] == q).all()
            if not control:
                assert pred == text[s:e], (text, s, e)
                n_scored += 1
                guess = "".join(rng.choice(list(cfg.alphabet), size=e - s))
                guess_hits += sum(a == b for a, b in zip(guess, text[s:e]))
                guess_n += e - s
        np.testing.assert_array_equal(eps["answer_mask"][i], want_ans)
        np.testing.assert_array_equal(eps["control_mask"][i], want_ctl)
        assert (eps["query_id"][i][~(want_ans | want_ctl)] == -1).all()
    per_episode = cfg.n_rounds - cfg.min_lag if name == "multi_round" else cfg.n_queries
    assert n_scored == 120 * per_episode
    assert abs(guess_hits / guess_n - cfg.chance) < 0.05, (guess_hits / guess_n, cfg.chance)


def test_icl_mapping_is_a_bijection_and_unseen_queries_are_withheld():
    """Within an ICL episode the demos and all query answers form one injective function of the
    n_symbols letters (a bijection); control queries ask exactly the withheld symbols' images,
    which are distinct from every demonstrated output."""
    cfg = CFGS["icl"]
    eps = generate_episodes(cfg, 100, seed=3)
    for row in eps["tokens"]:
        text = ByteTokenizer().decode(row)
        pairs = re.findall(r"([A-Z])->([A-Z])", text)
        f = {}
        for x, y in pairs:
            assert f.setdefault(x, y) == y, text
        assert len(set(f.values())) == len(f) and set(f) | set(f.values()) <= set(cfg.alphabet)
        demos = dict(re.findall(r"([A-Z])->([A-Z])", text.partition(" |")[0]))
        assert len(demos) == cfg.n_symbols - cfg.n_unseen
        unseen = [x for x, _ in re.findall(r" ([A-Z])->([A-Z])", text.partition(" |")[2])
                  if x not in demos]
        assert len(unseen) == cfg.n_unseen_queries
        assert not {f[x] for x in unseen} & set(demos.values())


@pytest.mark.parametrize("name", TASK_IDS)
def test_generators_deterministic_per_seed_split_and_prefix(name):
    """Same (seed, split) -> identical episodes; another seed or split -> different ones; the
    first k of n episodes do not depend on n."""
    cfg = CFGS[name]
    a = generate_episodes(cfg, 6, seed=0)
    b = generate_episodes(cfg, 6, seed=0)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(generate_episodes(cfg, 3, seed=0)["tokens"], a["tokens"][:3])
    for other in (generate_episodes(cfg, 6, seed=1), generate_episodes(cfg, 6, 0, "val")):
        assert (other["tokens"] != a["tokens"]).any(axis=1).all()


@pytest.mark.parametrize("name", TASK_IDS)
def test_episode_length_fit_and_scaling(name):
    """Every episode is exactly cfg.length tokens of printable ASCII; check_fits raises a
    ValueError naming the size field when seq_len is one token short; scaled_to(L) returns the
    largest size field that fits L."""
    cfg = CFGS[name]
    toks = generate_episodes(cfg, 5, seed=0)["tokens"]
    assert toks.shape == (5, cfg.length) and toks.dtype == np.int32
    assert ((toks >= 32) & (toks < 127) | (toks == 10)).all()
    cfg.check_fits(cfg.length)
    msg = rf"seq_len={cfg.length - 1}; lower {name}\.{cfg.size_field}"
    with pytest.raises(ValueError, match=msg):
        cfg.check_fits(cfg.length - 1)
    big = cfg.scaled_to(200)
    bigger = dataclasses.replace(big, **{cfg.size_field: getattr(big, cfg.size_field) + 1})
    assert big.length <= 200 < bigger.length
    with pytest.raises(ValueError, match="seq_len=5"):
        cfg.scaled_to(5)


@pytest.mark.parametrize("make,field", [
    (lambda: mt.MQARConfig(n_pairs=4, n_queries=5), "mqar.n_queries"),
    (lambda: mt.MQARConfig(n_pairs=True), "mqar.n_pairs"),
    (lambda: mt.MQARConfig(value_chars="hex"), "mqar.value_chars"),
    (lambda: mt.MultiRoundConfig(n_rounds=3, min_lag=3), "multi_round.min_lag"),
    (lambda: mt.MultiRoundConfig(facts_per_round=1), "multi_round.facts_per_round"),
    (lambda: mt.ICLConfig(n_symbols=8, n_unseen=2, n_demos=5), "icl.n_demos"),
    (lambda: mt.ICLConfig(n_unseen=2, n_unseen_queries=2), "icl.n_unseen_queries"),
    (lambda: make_task("mqar", pairs=3), "mqar field"),
    (lambda: make_task("copy"), "task"),
])
def test_invalid_config_raises_naming_the_field(make, field):
    """Out-of-range or unknown fields raise ValueError naming the field (and what is allowed)."""
    with pytest.raises(ValueError, match=re.escape(field) + r".*(must be|allowed)"):
        make()


def test_multi_round_questions_are_not_a_fixed_offset_copy():
    """With 1-character names and 2 facts per round (configs/memory_tasks.py:cpu), the asked
    fact's lag in rounds varies, and so does which of its round's facts is asked: no fixed
    positional offset answers the questions. (With one fact per round every question asked the
    fact exactly min_lag rounds back; a dense model then scored 1.000 by copying, so that size is
    now a ValueError.)"""
    cfg = mt.MultiRoundConfig(n_rounds=4, facts_per_round=2, name_len=1, value_len=1)
    lags, slots = set(), set()
    for ep in generate_episodes(cfg, 64, seed=0, split="test")["tokens"]:
        lines = ByteTokenizer().decode(ep).split("\n")[:-1]
        stated = [line.partition(" ? ")[0].split(" ") for line in lines]
        for r, line in enumerate(lines):
            if " ? " in line:
                name = line.partition(" ? ")[2].split("=")[0]
                (src, slot), = [(i, j) for i, facts in enumerate(stated)
                                for j, kv in enumerate(facts) if kv.split("=")[0] == name]
                lags.add(r - src)
                slots.add(slot)
    assert lags == {1, 2, 3} and slots == {0, 1}


# ------------------------------------------------------------------ scoring
class _OracleLM(nnx.Module):
    """Cheats: its logits at t are one-hot on the true token t + 1."""

    def __call__(self, tokens):
        return SimpleNamespace(logits=jax.nn.one_hot(jnp.roll(tokens, -1, axis=1), 256))


class _RandomLM(nnx.Module):
    """Random logits over the answer alphabet (-inf on every other byte)."""

    def __init__(self, alphabet: str):
        self.ids = tuple(ord(c) for c in alphabet)

    def __call__(self, tokens):
        key = jax.random.fold_in(jax.random.key(0), jnp.sum(tokens))
        allowed = jnp.zeros(256, bool).at[jnp.array(self.ids)].set(True)
        noise = jax.random.uniform(key, tokens.shape + (256,))
        return SimpleNamespace(logits=jnp.where(allowed, noise, -jnp.inf))


@pytest.mark.parametrize("name", TASK_IDS)
def test_scoring_oracle_logits_give_1_and_random_logits_give_chance(name):
    """Scoring a model whose logits are the true next token gives token accuracy and exact match
    1.0 (also with a ragged last batch); random logits over the answer alphabet give ~1/|alphabet|
    token accuracy and ~chance**answer_len exact match."""
    cfg = CFGS[name]
    m = ts.evaluate_task(_OracleLM(), cfg, n_episodes=10, batch_size=4)
    assert m["n_episodes"] == 10 and m["token_acc"] == 1.0 and m["exact_match"] == 1.0
    assert m["n_queries"] == 10 * (cfg.n_rounds - cfg.min_lag if name == "multi_round"
                                   else cfg.n_queries)
    if name == "icl":
        assert m["unseen_token_acc"] == 1.0 and m["n_unseen_queries"] == 20
    r = ts.evaluate_task(_RandomLM(cfg.alphabet), cfg, n_episodes=256, batch_size=64)
    ans_len = r["n_answer_tokens"] // r["n_queries"]
    assert abs(r["token_acc"] - cfg.chance) < 0.05, (r, cfg.chance)
    assert abs(r["exact_match"] - cfg.chance ** ans_len) < 0.05
    assert r["chance"] == cfg.chance


def test_real_lm_hits_are_argmax_of_the_forward_and_padding_does_not_change_them():
    """For a seedjax LM, hits[:, t] == (argmax logits[:, t-1] == tokens[:, t]) from a plain
    forward, and zero-padding the input (pad_to, ragged batches) leaves them unchanged."""
    from seedjax.models import LM, LMConfig
    from seedjax.train.state import abstract_model, init_params, model_def
    model_fn = lambda: LM(LMConfig(d_model=32, n_layers=1, n_heads=2, mlp_dim=64,
                                   max_seq_len=96), rngs=nnx.Rngs(0))
    model = model_def(abstract_model(model_fn)).merge(init_params(model_fn))  # jitted init
    toks = generate_episodes(CFGS["mqar"], 5, seed=0)["tokens"]
    logits = jax.jit(lambda t: model(t).logits)(jnp.asarray(toks))
    ref = np.argmax(np.asarray(logits), -1)[:, :-1] == toks[:, 1:]
    hits = ts.greedy_hits(model, toks, batch_size=2, pad_to=90)  # 3 batches, last ragged
    assert not hits[:, 0].any() and ref.any()
    np.testing.assert_array_equal(hits[:, 1:], ref)
    with pytest.raises(ValueError, match="max_seq_len=96"):
        ts.greedy_hits(model, toks, pad_to=97)


def test_exact_match_requires_every_answer_token():
    """One wrong token in a 2-token answer costs one token of accuracy and that whole query."""
    mask = np.zeros((2, 6), bool)
    mask[:, [1, 2, 4, 5]] = True
    qid = np.where(mask, [[-1, 0, 0, -1, 1, 1]] * 2, -1)
    hits = mask.copy()
    hits[1, 5] = False
    s = ts._summary(hits, mask, qid)  # pylint: disable=protected-access
    assert s == {"token_acc": 7 / 8, "exact_match": 3 / 4, "n_queries": 4, "n_answer_tokens": 8}


# ------------------------------------------------------------------ data source
def test_task_source_parse_format_and_errors():
    """format_task_source round-trips through parse_task_source; bad sources raise ValueErrors
    naming the problem."""
    src = format_task_source({"mqar": {"n_pairs": 6, "n_queries": 2}, "icl": CFGS["icl"]},
                             blocks=64, seed=5)
    spec = parse_task_source(src)
    assert spec.tasks == {"mqar": mt.MQARConfig(n_pairs=6, n_queries=2), "icl": CFGS["icl"]}
    assert (spec.blocks, spec.seed) == (64, 5)
    for bad, msg in [("task:nope", "task='nope'"), ("task:mqar(n_pairs=0)", "mqar.n_pairs"),
                     ("task:mqar;epochs=2", "option 'epochs=2'"), ("task:mqar(x)", "field=value")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            parse_task_source(bad)
    with pytest.raises(ValueError, match=r"seq_len=32; lower mqar\.n_pairs"):
        task_streams("task:mqar", seq_len=32, seed=0, val_fraction=0.1, tokenizer=ByteTokenizer())


def test_task_stream_blocks_are_whole_valid_episodes_and_splits_are_disjoint():
    """Each seq_len block starts with an episode and holds whole eos-separated episodes that the
    oracle solves; the stream is deterministic per seed, another seed differs, and train and
    val share no episode."""
    src = format_task_source(CFGS, blocks=40)
    kw = dict(seq_len=160, val_fraction=0.25, tokenizer=ByteTokenizer())
    corpus, train, val, train_mask, _ = task_streams(src, seed=0, **kw)
    assert len(train) == 40 * 160 + 1 and len(val) == 10 * 160 + 1
    assert corpus.description["split_rule"] == "task" and train_mask is None
    train2 = task_streams(src, seed=0, **kw).train
    train3 = task_streams(src, seed=1, **kw).train
    np.testing.assert_array_equal(train, train2)
    assert (train != train3).any()
    by_len = {c.length: (n, c) for n, c in CFGS.items()}
    episodes = {}
    for split, stream in (("train", train), ("val", val)):
        blocks = stream[:-1].reshape(-1, 160)
        assert (blocks[:, 0] != 0).all()
        for block in blocks:
            for ep in ByteTokenizer().decode(block).split("\0"):
                if ep:
                    name, cfg = by_len[len(ep)]
                    assert all(p == ep[s:e] for s, e, p, c in _oracle(name, ep, cfg) if not c)
                    episodes.setdefault(split, set()).add(ep)
    assert len(episodes["train"]) >= 40 and not episodes["train"] & episodes["val"]


def test_build_lm_data_task_source_windows_are_blocks_and_state_restores():
    """With a task: source the pipeline's windows are exactly the blocks (inputs start with an
    episode) and get_state/set_state resumes the same batches."""
    args = dict(source="task:mqar(n_pairs=4,n_queries=2);blocks=64", seq_len=48, batch_size=8,
                seed=0, val_fraction=0.125)
    data = build_lm_data(**args)
    assert data.train_windows == 64 and data.val_windows == 8
    next(data.train_iter)
    state = data.get_state()
    want = [next(data.train_iter) for _ in range(2)]
    again = build_lm_data(**args)
    again.set_state(state)
    for w in want:
        got = next(again.train_iter)
        np.testing.assert_array_equal(got["inputs"], w["inputs"])
    assert (want[0]["inputs"][:, :3] != 0).all()
    assert re.fullmatch(r"[a-z]{2}:\d\d", ByteTokenizer().decode(want[0]["inputs"][0, :5]))


# ------------------------------------------------------------------ training end to end
@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """configs/memory_tasks.py:smoke: 4 steps straight through experiments.reproduce.run_one
    (Trainer + task-accuracy hook; checkpoints at 2 and 4); then a copy of that run without its
    step-4 checkpoint resumes from step 2 to 4 with the plain Trainer (as after a crash)."""
    import configs.memory_tasks as cfg_mod
    from experiments.reproduce import run_one
    from seedjax.train.loop import Trainer

    root = tmp_path_factory.mktemp("memtask_runs")
    base = cfg_mod.get_config("smoke")
    base.train.update(steps=4, checkpoint_every=2, eval_every=4, log_every=2)
    straight = run_one(base, {"name": "dense", "overrides": {}}, 0, str(root / "straight"))
    shutil.copytree(root / "straight", root / "resumed")
    assert sorted(os.listdir(root / "resumed" / "checkpoints")) == ["2", "4"]
    shutil.rmtree(root / "resumed" / "checkpoints" / "4")
    resumed = Trainer(base, str(root / "resumed"), progress=False).run()
    return SimpleNamespace(root=root, straight=straight, resumed=resumed)

def test_task_source_trains_resumes_bitwise_and_reports_task_accuracy(smoke_runs):
    """Training on data.source="task:..." runs through the Trainer; resuming from the step-2
    checkpoint to step 4 equals 4 straight steps bitwise (the data-iterator state is restored);
    reproduce.run_one attaches held-out task metrics for all three tasks."""
    from seedjax.train.restore import load_model
    r = smoke_runs
    assert r.straight["status"] == r.resumed["status"] == "completed"
    assert r.straight["step"] == r.resumed["step"] == 4 and np.isfinite(r.straight["val_loss"])
    model_a, _, step_a = load_model(str(r.root / "straight"))
    model_b, _, step_b = load_model(str(r.root / "resumed"))
    assert step_a == step_b == 4
    pa = nnx.to_pure_dict(nnx.state(model_a, nnx.Param))
    pb = nnx.to_pure_dict(nnx.state(model_b, nnx.Param))
    for a, b in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(a, b)
    tasks = r.straight["tasks"]
    assert set(tasks) == {"mqar", "multi_round", "icl"}
    for m in tasks.values():
        assert 0.0 <= m["token_acc"] <= 1.0 and m["n_episodes"] == 16
    assert "unseen_token_acc" in tasks["icl"]


def test_reproduce_table_gets_a_task_accuracy_section(smoke_runs, tmp_path):
    """write_report adds a per-row task accuracy table when results carry task metrics, and
    leaves other sweeps' tables unchanged (no section without task metrics)."""
    from experiments.reproduce import write_report
    res = smoke_runs.straight
    write_report(str(tmp_path), "cfg.py", [{"name": "dense"}], [res])
    table = open(tmp_path / "table.md").read()
    assert "| row | icl | mqar | multi_round |" in table
    assert f"| dense | {res['tasks']['icl']['token_acc']:.3f} (1) |" in table
    assert (tmp_path / "tasks.png").exists()
    # a second row paired with the first on the same seed: accuracy difference per task
    better = {**res, "row": "wide", "tasks": {t: {**m, "token_acc": m["token_acc"] + 0.25}
                                              for t, m in res["tasks"].items()}}
    write_report(str(tmp_path), "cfg.py", [{"name": "dense"}, {"name": "wide"}], [res, better])
    table = open(tmp_path / "table.md").read()
    assert "Paired mqar token-accuracy differences" in table
    assert "| wide | dense | 0 | +0.250 | +0.250 (1) |  | 0/1 | one seed |" in table
    plain = {k: v for k, v in res.items() if k != "tasks"}
    os.remove(tmp_path / "tasks.png")
    write_report(str(tmp_path), "cfg.py", [{"name": "dense"}], [plain])
    assert "memory-task" not in open(tmp_path / "table.md").read()
    assert not (tmp_path / "tasks.png").exists()


def test_memory_tasks_cli_writes_json_and_table(smoke_runs, tmp_path):
    """experiments.memory_tasks.run loads the workdir's model, evaluates the requested tasks at
    the sizes of the run's data.source and writes JSON + markdown; unknown tasks raise."""
    from experiments.memory_tasks import run
    out = tmp_path / "res.json"
    res = run(str(smoke_runs.root / "straight"), tasks="icl,mqar", episodes=8, out=str(out),
              progress=False)
    saved = json.load(open(out))
    assert list(saved["tasks"]) == ["icl", "mqar"] and saved["step"] == 4
    assert saved["tasks"]["mqar"]["config"]["n_pairs"] == 6  # the smoke source's size
    assert saved["tasks"]["icl"]["metrics"]["n_episodes"] == 8
    assert "| mqar |" in open(tmp_path / "res.md").read() and "| icl |" in res["table"]
    with pytest.raises(ValueError, match="task='copy'"):
        run(str(smoke_runs.root / "straight"), tasks="copy", out=str(out), progress=False)
    assert os.path.exists(out)


# ------------------------------------------------------------------ parametric facts
def test_facts_world_is_fixed_across_splits_and_answers_follow_it():
    """facts: every episode's key=value pairs come from one world (same for train/val/test and
    every seed, different for another world_seed); the answer mask marks exactly the values;
    episodes have exactly cfg.length tokens; a world-lookup oracle is right on every answer
    while the context alone (keys never repeat within the world) cannot determine them."""
    cfg = mt.FactsConfig(n_facts=300, n_queries=6)
    world = cfg.world()
    assert len(world) == 300
    for split, seed in (("train", 0), ("test", 5), ("val", 1)):
        eps = generate_episodes(cfg, 20, seed=seed, split=split)
        assert eps["tokens"].shape == (20, cfg.length)
        for row, mask in zip(eps["tokens"], eps["answer_mask"]):
            text = ByteTokenizer().decode(row)
            pairs = re.findall(r"([a-z]{3})=(\d\d)", text)
            assert len(pairs) == 6 and all(world[k] == v for k, v in pairs)
            want = np.zeros(len(text), bool)
            for m in re.finditer(r"=(\d\d)", text):
                want[m.start(1):m.end(1)] = True
            np.testing.assert_array_equal(mask, want)
    other = dataclasses.replace(cfg, world_seed=1).world()
    assert other != world
    with pytest.raises(ValueError, match="facts.n_facts"):
        mt.FactsConfig(n_facts=27, key_len=1)
