"""Generation accuracy as a ``task_eval`` task (``cfg_generation``, seedjax.eval.task_scoring) and
the Over-Tokenized CFG sweep (configs/papers/over_tokenized_cfg.py): metrics of untrained tiny
models of every embed/head kind, a stub sampler that emits grammar sentences scores 1, every
sweep row builds, the report shows the generation table, and one smoke row runs through
experiments.reproduce.run_one into a JSON run file with the metrics."""
import importlib
import json

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.overrides import apply_overrides
from experiments.paired_diffs import validate_references
from experiments.reproduce import report_text, run_one
from experiments.task_plot import task_kind, task_metric
from seedjax.data.cfg import EOS_ID, GRAMMARS, sample_sentences
from seedjax.eval import sampling
from seedjax.eval import task_scoring as ts
from seedjax.eval.cfg_accuracy import generation_accuracy
from seedjax.models import LM, LMConfig
from seedjax.train.optim import make_optimizer
from seedjax.train.state import abstract_model, param_labels

PAPER = importlib.import_module("configs.papers.over_tokenized_cfg")
KEYS = {"gen_acc", "gen_ci95", "n_episodes", "n_accepted", "mean_length", "n_truncated",
        "n_distinct", "ref_mean_length", "grammar", "max_len", "temperature", "top_p",
        "sample_s"}


def _smoke(row_name, **task_eval):
    """The smoke config with one sweep row's overrides and the LM built from it."""
    rows = {r["name"]: r for r in PAPER.get_sweep("smoke")}
    cfg = apply_overrides(PAPER.get_config("smoke"), rows[row_name]["overrides"])
    cfg.task_eval.update(task_eval)
    return cfg, LM(LMConfig.from_dict(cfg.model), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("row_name", ["small_base", "small_enc123", "small_dec3"])
def test_untrained_model_metrics(row_name):
    """Plain, over-encoding (decode history in the cache) and joint-3-gram-head models: JSON
    metrics, accuracy in [0, 1], n == episodes (a ragged last batch is cut), lengths bounded."""
    cfg, model = _smoke(row_name, episodes=11, batch_size=4)
    out = ts.evaluate_config(model, cfg)
    assert list(out) == ["cfg_generation"]
    m = out["cfg_generation"]
    assert KEYS <= set(m) and json.loads(json.dumps(m)) == m
    assert 0.0 <= m["gen_acc"] <= 1.0 and m["n_episodes"] == 11
    assert m["gen_ci95"][0] <= m["gen_acc"] <= m["gen_ci95"][1]
    assert m["grammar"] == "cfg3f_d3" and m["max_len"] == 27 and m["temperature"] == 1.0
    assert 0.0 <= m["mean_length"] <= 28 and 0 <= m["n_truncated"] <= 11
    assert 15 < m["ref_mean_length"] < 20          # cfg3f_d3: mean 17.7


def test_teacher_forced_and_generation_tasks_together():
    """``tasks="cfg,cfg_generation"``: teacher-forced next-symbol scores and generation accuracy,
    in the order named."""
    cfg, model = _smoke("small_base", tasks="cfg,cfg_generation", episodes=4, batch_size=4)
    out = ts.evaluate_config(model, cfg)
    assert list(out) == ["cfg", "cfg_generation"]
    assert "token_acc" in out["cfg"] and "gen_acc" in out["cfg_generation"]
    table = ts.markdown_table(out)
    assert "| cfg | " in table and "| cfg_generation | " in table


def _grammar_sequences(n, steps, seed):
    """[n, 1 + steps]: bos, a cfg3f_d3 sentence, eos, then eos padding (what a perfect model
    samples)."""
    g = GRAMMARS["cfg3f_d3"]
    out = np.full((n, 1 + steps), EOS_ID, np.int32)
    out[:, 0] = g.bos_id
    for i, s in enumerate(sample_sentences(g, n, np.random.default_rng(seed))):
        out[i, 1:1 + len(s)] = s
    return out


def test_stub_sampler_of_grammar_sentences_scores_one(monkeypatch):
    """generation_accuracy on exact sentences is 1; so is cfg_generation when the model's
    sampler emits them (each call gets a fresh seed and exactly batch_size rows)."""
    g = GRAMMARS["cfg3f_d3"]
    r = generation_accuracy(lambda k: _grammar_sequences(k, 28, k), g, 20, batch_size=8)
    assert r["accuracy"] == 1.0 and r["n"] == 20 and r["n_truncated"] == 0
    seeds = []

    def stub(model, prompt, steps, *, temperature, top_p, seed):
        assert prompt.shape == (8, 1) and (prompt == g.bos_id).all() and steps == 28
        assert temperature == 1.0 and top_p == 1.0
        seeds.append(seed)
        return _grammar_sequences(len(prompt), steps, seed)

    monkeypatch.setattr(sampling, "generate", stub)
    cfg, model = _smoke("small_base", episodes=20, batch_size=8)
    m = ts.evaluate_config(model, cfg)["cfg_generation"]
    assert m["gen_acc"] == 1.0 and m["n_accepted"] == 20 and m["n_episodes"] == 20
    assert len(seeds) == 3 and len(set(seeds)) == 3 and m["n_distinct"] > 1
    # a broken sampler (every sentence with one symbol dropped) scores below 1
    monkeypatch.setattr(sampling, "generate", lambda m_, p, s, **kw: np.concatenate(
        [_grammar_sequences(len(p), s, kw["seed"])[:, :1],
         _grammar_sequences(len(p), s, kw["seed"])[:, 2:], np.zeros((len(p), 1), np.int32)],
        axis=1))
    assert ts.evaluate_config(model, cfg)["cfg_generation"]["gen_acc"] < 1.0


def test_cfg_generation_needs_a_cfg_source():
    cfg, model = _smoke("small_base")
    cfg.data.source = "task:mqar"
    with pytest.raises(ValueError, match="task:cfg"):
        ts.evaluate_config(model, cfg)
    cfg, model = _smoke("small_base")
    cfg.data.source = "task:cfg(grammar=cfg3f_d4)"   # bos + 82 tokens > max_seq_len 32
    with pytest.raises(ValueError, match="max_seq_len"):
        ts.evaluate_config(model, cfg)


@pytest.mark.parametrize("variant", ["smoke", "cpu"])
def test_sweep_rows_build(variant):
    """Every row's overrides give a valid model and optimizer (abstract: no compile); vs names
    rows of the sweep; each size's rows share its width; the n-gram tables are exact."""
    rows = PAPER.get_sweep(variant)
    validate_references(rows)
    assert [r["name"] for r in rows] == [f"{s}_{k}" for s in ("large", "small")
                                         for k in ("base", "enc3", "enc123", "dec3")]
    base = PAPER.get_config(variant)
    assert base.model.vocab_size == 5 and base.task_eval.tasks == "cfg_generation"
    widths = {}
    for r in rows:
        cfg = apply_overrides(base, r["overrides"])
        mcfg = LMConfig.from_dict(cfg.model)
        widths.setdefault(r["name"].split("_")[0], set()).add(mcfg.d_model)
        abstract = abstract_model(lambda: LM(mcfg, rngs=nnx.Rngs(0)))
        tx, _ = make_optimizer(cfg.train, *param_labels(abstract))
        shapes = nnx.to_pure_dict(nnx.state(abstract, nnx.Param))
        assert jax.tree.leaves(jax.eval_shape(tx.init, shapes))
        if mcfg.embed == "over_encoding":
            oe = abstract.embed.config
            assert all(m >= 5 ** o for m, o in zip(oe.moduli, oe.slice_orders))  # no hashing
        ts.source_task(cfg, "cfg", "cfg_generation").check_fits(cfg.data.seq_len)
    assert all(len(w) == 1 for w in widths.values()) and widths["large"] != widths["small"]


@pytest.mark.slow
@pytest.mark.parametrize("row_name", [r["name"] for r in PAPER.get_sweep("smoke")])
def test_sweep_row_takes_a_finite_step(row_name):
    """One jitted train step of each smoke row on cfg3f_d3 windows: finite loss and gradient."""
    import jax.numpy as jnp
    from seedjax.data.pipeline import build_lm_data
    from seedjax.train.state import init_params, model_def
    from seedjax.train.step import make_train_step
    cfg, _ = _smoke(row_name)
    mcfg = LMConfig.from_dict(cfg.model)
    model_fn = lambda: LM(mcfg, rngs=nnx.Rngs(0))
    abstract = abstract_model(model_fn)
    tx, sched = make_optimizer(cfg.train, *param_labels(abstract))
    params = init_params(model_fn)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params),
             "rng": jax.random.key_data(jax.random.key(0))}
    data = build_lm_data(source=cfg.data.source, seq_len=cfg.data.seq_len, batch_size=2, seed=0)
    batch = {k: jnp.asarray(v) for k, v in next(data.train_iter).items()}
    state, m = jax.jit(make_train_step(model_def(abstract), tx, sched))(state, batch)
    assert np.isfinite(float(m["loss"])) and np.isfinite(float(m["grad_norm"]))


def _fake_run(row, seed, acc):
    return {"row": row, "seed": seed, "status": "completed", "step": 3, "params": 1000,
            "val_loss": 1.0 - acc / 10, "val_bpb": 1.0, "train_loss": 1.0, "step_time_s": 0.1,
            "tokens_per_s": 1.0, "wall_s": 1.0, "val_curve": [], "train_curve": [],
            "tasks": {"cfg_generation": {"gen_acc": acc, "n_episodes": 10}}}


def test_report_shows_generation_accuracy(tmp_path):
    rows = PAPER.get_sweep("smoke")
    results = [_fake_run(r["name"], s, 0.1 * i + 0.01 * s)
               for i, r in enumerate(rows) for s in (0, 1)]
    assert task_metric(results[2], "cfg_generation") == pytest.approx(0.1)
    assert task_kind(results, "cfg_generation") == "generation"
    text = report_text(str(tmp_path), "configs/papers/over_tokenized_cfg.py:smoke", rows,
                       results, plots=False)
    assert "Generation accuracy" in text and "memory-task token accuracy" not in text
    assert "Paired cfg_generation generation-accuracy differences" in text
    assert "| large_enc3 | 0.105 ± 0.007 (2) |" in text


def test_reproduce_hook_writes_generation_metrics(tmp_path, monkeypatch):
    """run_one's task_eval hook on a completed run (the Trainer replaced by an untrained model,
    so no training compile): the result holds JSON cfg_generation metrics."""
    import seedjax.train.loop as loop
    cfg, model = _smoke("small_enc3", episodes=6, batch_size=6)

    class FakeTrainer:
        def __init__(self, config, workdir, **kw):
            assert config.task_eval.tasks == "cfg_generation"
            self.state = {"params": nnx.state(model)}
            self.mdef = type("Def", (), {"merge": staticmethod(lambda params: model)})

        def run(self):
            return {"status": "completed", "step": 3, "n_params": 1, "train": {},
                    "val": {"loss": 1.0, "bits_per_byte": 1.0}}

    monkeypatch.setattr(loop, "Trainer", FakeTrainer)
    row = {"name": "small_enc3", "overrides": {}}
    res = json.loads(json.dumps(run_one(cfg, row, 0, str(tmp_path))))
    m = res["tasks"]["cfg_generation"]
    assert KEYS <= set(m) and m["n_episodes"] == 6 and 0.0 <= m["gen_acc"] <= 1.0


@pytest.mark.slow
def test_smoke_row_runs_through_reproduce(tmp_path):
    """3 training steps of the smoke variant's main row, then the task_eval hook: the run file
    holds the cfg_generation metrics (~25 s: the Trainer's compiles)."""
    rows = {r["name"]: r for r in PAPER.get_sweep("smoke")}
    res = run_one(PAPER.get_config("smoke"), rows[PAPER.SMOKE_TRAIN_ROW], 0,
                  str(tmp_path / "run"))
    assert res["status"] == "completed" and res["step"] == 3 and np.isfinite(res["val_loss"])
    path = tmp_path / "run.json"
    path.write_text(json.dumps(res))
    m = json.loads(path.read_text())["tasks"]["cfg_generation"]
    assert KEYS <= set(m) and m["n_episodes"] == PAPER.get_config("smoke").task_eval.episodes
    assert 0.0 <= m["gen_acc"] <= 1.0
