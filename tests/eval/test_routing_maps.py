"""Routing diagnostics of a Race-DiT (seedjax.eval.routing_maps), ``load_run`` for diffusion
runs, and the experiments/diagnose_race.py CLI, on one 3-step smoke run of
configs/papers/race_dit.py (8x8 digits, expert_race row: 2-in-8 race with EMA threshold, PLR,
RSL; one block) trained once per module through the Trainer. Every analysis uses the same
shapes (16 val images, 4 levels, the run's batch of 16), so the jitted forwards compile once
and the CLI test reuses them."""
import os

import jax
import numpy as np
import pytest
from flax import nnx

from seedjax.eval import routing_maps as rm

N_IMAGES, N_LEVELS, N_SINGLE = 16, 4, 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(trainer after 3 steps, workdir, loaded run, val images, labels)."""
    from configs.papers import race_dit
    from experiments.diagnose_race import val_images
    from experiments.overrides import apply_overrides
    from seedjax.train.loop import Trainer
    from seedjax.train.restore import load_run
    rows = {r["name"]: r for r in race_dit.get_sweep("smoke")}
    cfg = apply_overrides(race_dit.get_config("smoke"),
                          rows[race_dit.SMOKE_TRAIN_ROW]["overrides"])
    cfg.model.n_layers = 1   # one MoE block: the train step compiles in half the time
    workdir = str(tmp_path_factory.mktemp("race") / "expert_race" / "s0")
    trainer = Trainer(cfg, workdir, progress=False)
    trainer.hooks = [h for h in trainer.hooks if h.name != "eval"]  # one compile fewer
    trainer.run()
    loaded = load_run(workdir)
    x, y = val_images(loaded.config, N_IMAGES)
    return trainer, workdir, loaded, x, y


@pytest.fixture(scope="module")
def maps(run):
    """(eval allocation, training-mode allocation, batch-1 results) of the loaded run."""
    _, _, loaded, x, y = run
    kw = dict(key=jax.random.key(0), batch_size=int(loaded.config.data.batch_size))
    lv = rm.time_levels(N_LEVELS)
    ev = rm.allocation(loaded.model, x, y, lv, train=False, **kw)
    tr = rm.allocation(loaded.model, x, y, lv, train=True, **kw)
    one = rm.batch_one(loaded.model, x[:N_SINGLE], y[:N_SINGLE], lv, key=kw["key"])
    return ev, tr, one


def test_load_run_round_trip_equals_trainer_state(run):
    from seedjax.train.restore import load_model
    from seedjax.train.restore import load_run as rm_load_run
    trainer, workdir, loaded, x, y = run
    assert (loaded.step, loaded.task, loaded.params_used, loaded.has_ema) == (
        3, "image_diffusion", "ema", True)
    on_one = lambda tree: jax.device_put(jax.device_get(tree), jax.local_devices()[0])
    ref = trainer.mdef.merge(on_one(trainer.eval_params()), on_one(trainer.state["model_state"]),
                             train=False)   # placed like load_run's arrays: one compile
    t = np.linspace(0.1, 0.9, len(x)).astype(np.float32)
    got, want = (rm.forward(m, x, t, y, train=False) for m in (loaded.model, ref))
    assert np.abs(want["output"]).max() > 0
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    np.testing.assert_array_equal(rm.thresholds(loaded.model), rm.thresholds(ref))
    raw, _, step = load_model(workdir)  # the LM entry point: raw params, training mode
    assert step == 3 and not raw.blocks[0].ffn.use_running_average
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(nnx.state(raw, nnx.Param))),
                    jax.tree.leaves(jax.device_get(trainer.state["params"]))):
        np.testing.assert_array_equal(np.asarray(a), b)
    with pytest.raises(ValueError, match="allowed: \\[3\\]"):
        rm_load_run(workdir, 7)


def test_training_race_allocates_exactly_k_per_token_and_keeps_the_threshold(run, maps):
    _, _, loaded, _, _ = run
    _, tr, _ = maps
    tau = rm.thresholds(loaded.model)
    assert tr.items == N_IMAGES * N_LEVELS and tr.batches == N_IMAGES * N_LEVELS // 16
    np.testing.assert_allclose(tr.per_layer, tr.k)           # every batch holds B L k pairs
    assert tr.valid.all() and tr.branch_norms is None
    # each mixed batch holds every level equally (image i at level (i + r) mod S)
    lvl = np.asarray(rm._items(N_IMAGES, N_LEVELS, True, 16))[..., 1]
    assert all(np.bincount(b, minlength=N_LEVELS).tolist() == [4] * N_LEVELS for b in lvl)
    np.testing.assert_array_equal(rm.thresholds(loaded.model), tau)  # state left untouched


def test_batch_one_race_is_exactly_k_and_threshold_matches_the_batched_eval(maps):
    ev, _, one = maps
    np.testing.assert_array_equal(one.race, one.k)
    st = one.stats()
    assert st["race"]["max_abs_dev"] == 0 and one.rule == "EMA threshold"
    # the threshold is per element: alone or in a batch, each image gets the same experts
    np.testing.assert_allclose(one.threshold, ev.maps[:, :, :N_SINGLE].mean(-1))
    assert st["threshold"]["mean_dev"] == pytest.approx(st["threshold"]["mean"] - one.k)


def test_maps_histograms_and_loads_are_consistent(maps):
    for a in maps[:2]:
        m, s = len(a.layers), N_LEVELS
        np.testing.assert_allclose(a.spatial.mean((-2, -1)), a.per_level)
        hist = a.histogram
        assert hist.shape == (m, s, a.n_experts + 1)
        np.testing.assert_array_equal(hist.sum(-1), N_IMAGES * 16)     # 16 tokens per image
        np.testing.assert_allclose((hist * np.arange(a.n_experts + 1)).sum(-1) / hist.sum(-1),
                                   a.per_level)
        n_stroke = a.stroke.sum()
        weighted = (a.content[..., 1] * n_stroke + a.content[..., 0] * (a.stroke.size - n_stroke)
                    ) / a.stroke.size
        np.testing.assert_allclose(weighted, a.per_level)
        np.testing.assert_allclose(a.expert_load.sum(-1), 1.0, rtol=1e-6)
        assert (a.max_violation >= 0).all() and ((a.combination_usage > 0)
                                                 & (a.combination_usage <= 1)).all()
        rows = rm.summary_rows(a)
        assert [r["block"] for r in rows] == a.layers and rows[0]["tau"] is not None
        np.testing.assert_allclose(sum(rows[0]["histogram"]), 1.0)
    ev = maps[0]
    assert ev.branch_norms.shape == (N_LEVELS, 1, 2) and (ev.branch_norms > 0).all()


def test_levels_stroke_mask_and_errors():
    np.testing.assert_allclose(rm.time_levels(4), [0.125, 0.375, 0.625, 0.875])
    img = -np.ones((1, 4, 4, 1), np.float32)
    img[0, :2, :2] = 1.0
    np.testing.assert_array_equal(rm.stroke_mask(img, 2), [[True, False, False, False]])
    from seedjax.models.dit import DiT, DiTConfig
    dense = nnx.eval_shape(lambda: DiT(DiTConfig(image_size=8, patch_size=2, d_model=16,
                                                 n_layers=1, n_heads=2, freq_dim=16),
                                       rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="no MoE layers"):
        rm.moe_layers(dense)
    with pytest.raises(ValueError, match="integer >= 1"):
        rm.time_levels(0)


def test_diagnose_race_cli_writes_page_and_plots(run, tmp_path):
    import json

    from experiments import diagnose_race
    _, workdir, _, _, _ = run
    results = tmp_path / "runs"   # the reproduction's run file of <row>/s<seed> = expert_race/s0
    results.mkdir()
    (results / "expert_race__s0.json").write_text(json.dumps({"provenance": {
        "commit": "abcdef0123456789", "dirty_files": [], "versions": {"jax": "0"},
        "machine": "m"}}))
    res = diagnose_race.run([workdir], None, str(tmp_path / "out"), levels=N_LEVELS,
                            images=N_IMAGES, single_images=N_SINGLE, progress=False,
                            results=str(results), argv=["diagnose_race", "--workdirs", workdir])
    r = res["runs"][0]
    assert r["name"] == "expert_race/s0" and r["params_used"] == "ema" and r["plr"]
    assert r["batch_one"]["race"]["max_abs_dev"] == 0
    text = (tmp_path / "out" / "diagnostics.md").read_text()
    assert "python -m experiments.diagnose_race --workdirs" in text and "Commit: " in text
    assert "## Batch size 1" in text and "| abcdef0123 |" in text
    for png in ("experts_vs_time", "spatial_maps", "block_norms", "load"):
        assert os.path.getsize(tmp_path / "out" / f"{png}.png") > 1000


def _fake_run(path, config) -> str:
    """A run directory whose only checkpoint (step 1) holds a tiny state and ``config``."""
    from seedjax.train.checkpoint import Checkpointer
    ckpt = Checkpointer(os.path.join(path, "checkpoints"))
    ckpt.save(1, {"step": np.zeros((), np.int32)}, {}, {"config": config.to_dict()}, wait=True)
    ckpt.close()
    return str(path)


def test_cli_one_line_errors_for_non_moe_and_non_diffusion_runs(tmp_path, capsys):
    from configs.dit import get_config as dit_config
    from configs.lm import get_config as lm_config
    from tests.experiments.test_cli_errors import call_cli, check_one_line
    dense = _fake_run(tmp_path / "dense", dit_config("smoke"))
    lm = _fake_run(tmp_path / "lm", lm_config("smoke"))
    for w, want in ((dense, ["not an MoE run", "model.ffn='mlp'"]),
                    (lm, ["not an image-diffusion run", "task='lm'"])):
        rc = call_cli("experiments.diagnose_race", ["--workdirs", w, "--out",
                                                    str(tmp_path / "o")])
        check_one_line(rc, capsys.readouterr().err, want)
