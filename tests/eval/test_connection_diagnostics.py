"""Connection diagnostics: known-value unfoldings (Pre-Norm triangle, HC section 1.7 sequential
and parallel matrices, fresh HC/FC models), composite gains (identity, a hand-made product,
mHC at init), branch-input cosines, and the CLI end to end on two tiny trained runs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.diagnose_connections import run
from seedjax.eval import connection_diagnostics as cd
from seedjax.models import LM, LMConfig
from tests.conftest import smoke_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 8)).astype(np.int32)


def _model(connection="residual", kwargs=None, n_layers=2, scan=False):
    cfg = LMConfig(d_model=32, n_layers=n_layers, n_heads=4, mlp_dim=64, max_seq_len=16,
                   scan_layers=scan, connection=connection, connection_kwargs=kwargs or {})
    return LM(cfg, rngs=nnx.Rngs(0))


def _prenorm(S, final=1.0):
    """Pre-Norm pattern: c_kj = 1 for every j < k (row 0 empty), final row = ``final``."""
    C = np.tril(np.ones((S + 2, S + 1)), -1)
    C[S + 1] = final
    return C


def _static(read, res, write, final):
    """Coefficients of static HC matrices given per sublayer: read [S, n], res [S, n, n]
    ([source, destination]), write [S, n]."""
    read, res, write = (np.asarray(a, np.float64)[:, None] for a in (read, res, write))
    S, n = res.shape[0], res.shape[-1]
    return cd.Coefficients("hyper", read[..., None], res, write, np.asarray(final, np.float64),
                           False, np.full((S, n), 1.0 / n))


@pytest.mark.parametrize("connection,kwargs,scan", [
    ("residual", {}, False), ("hyper", {"rate": 1, "dynamic": False}, True)])
def test_plain_prenorm_unfolds_to_full_lower_triangle(connection, kwargs, scan):
    c = cd.sublayer_coefficients(_model(connection, kwargs, scan=scan), TOKENS)
    assert c.res.shape == (4, 1, 1, 1) and not c.dynamic
    for avg in cd.AVERAGES:
        C0, per_stream = cd.unfold_connections(c, avg)
        np.testing.assert_array_equal(C0, _prenorm(4))   # incl. the final row of ones
        np.testing.assert_array_equal(per_stream[0], _prenorm(4))


def test_hc_sequential_and_parallel_duality_matrices():
    S, I2, J2 = 4, np.eye(2), np.ones((2, 2))
    # Eq. 17 (sequential, every sublayer): B = (1, 1), A_m = (1, 0)^T, A_r = I.
    seq = _static([[1, 0]] * S, [I2] * S, [[1, 1]] * S, [1, 1])
    C0, per_stream = cd.unfold_connections(seq)
    # Pre-Norm triangle; both streams carry the whole sum, so the summed output row is 2 = n.
    np.testing.assert_array_equal(C0, _prenorm(S, final=2.0))
    for P in per_stream:
        np.testing.assert_array_equal(P, _prenorm(S))
    # Eqs. 18/19 (parallel pairs; odd k: B = (1, 0), A_m = (1, 1)^T, A_r = 1 1^T;
    # even k: B = (0, 1), A_m = (0, 1)^T, A_r = I). Both sublayers of a pair read the same
    # input (sublayer 2 does not see T^1, sublayer 4 not T^3: the jagged PTB pattern); the
    # next pair reads 2h + T1 + T2 (Eq. 53), so the embedding weight doubles per pair.
    par = _static([[1, 1], [0, 1]] * 2, [J2, I2] * 2, [[1, 0], [0, 1]] * 2, [1, 1])
    expected = np.array([[0, 0, 0, 0, 0],
                         [2, 0, 0, 0, 0],    # A1 reads h1 + h2 = 2 emb
                         [2, 0, 0, 0, 0],    # F2 reads stream 2 = 2 emb (not T1)
                         [4, 1, 1, 0, 0],    # A3 reads 2 (2 emb) + T1 + T2
                         [4, 1, 1, 0, 0],    # F4: same input, not T3
                         [8, 2, 2, 1, 1]], float)
    for avg in cd.AVERAGES:
        C0, per_stream = cd.unfold_connections(par, avg)
        np.testing.assert_array_equal(C0, expected)
        np.testing.assert_array_equal(per_stream[0][-1], [4, 1, 1, 1, 0])
        np.testing.assert_array_equal(per_stream[1][-1], [4, 1, 1, 0, 1])
        np.testing.assert_array_equal(per_stream[0][1], [2, 0, 0, 0, 0])  # after A_r^1 mixing


def test_fresh_hc4_and_fc_models_unfold_to_prenorm():
    # HC n = 4, dynamic (W = 0), 3 blocks: A_m = e_(k mod 4) differs per sublayer, streams
    # stay identical, so every C^(i) is the Pre-Norm triangle and the summed output row is 4.
    hc = cd.sublayer_coefficients(_model("hyper", {"rate": 4}, n_layers=3, scan=True), TOKENS)
    assert hc.dynamic and hc.res.shape == (6, TOKENS.size, 4, 4) and hc.read.shape[-1] == 1
    np.testing.assert_array_equal(hc.read[:, 0, :, 0], np.eye(4)[[0, 1, 2, 3, 0, 1]])
    for avg in cd.AVERAGES:
        C0, per_stream = cd.unfold_connections(hc, avg)
        np.testing.assert_array_equal(C0, _prenorm(6, final=4.0))
        assert len(per_stream) == 4
        for P in per_stream:
            np.testing.assert_array_equal(P, _prenorm(6))
    np.testing.assert_allclose(hc.stream_share, 0.25, atol=1e-6)
    # FC m = 2 (loop stack): Y = A = I, beta = 1, fractions concatenated (final weights 1/m).
    fc = cd.sublayer_coefficients(_model("frac", {"rate": 2}), TOKENS)
    assert fc.read.shape == (4, TOKENS.size, 2, 2)
    C0, _ = cd.unfold_connections(fc, "products")
    np.testing.assert_array_equal(C0, _prenorm(4))


@pytest.mark.parametrize("connection,scan", [("hyper", True), ("mhc", False), ("frac", True)])
def test_coefficients_reproduce_the_recorded_branch_inputs(connection, scan):
    """With perturbed (non-trivial, token-dependent) connection weights, the read weights from
    ``sublayer_coefficients`` applied to the recorded streams give the recorded branch inputs."""
    model = _model(connection, {"rate": 2}, scan=scan)
    state = nnx.state(model, nnx.Param)
    rng = np.random.default_rng(1)
    noisy = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.5 * rng.normal(size=x.shape).astype(x.dtype)
        if "conn" in jax.tree_util.keystr(path) else x, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, noisy)
    nnx.update(model, state)
    c = cd.sublayer_coefficients(model, TOKENS, chunk=1)
    assert c.dynamic and c.read.std(axis=1).min() > 0          # token-dependent
    inter = model(TOKENS, return_intermediates=True).intermediates
    H = np.asarray(inter["streams"]).reshape(4, TOKENS.size, 2, -1)
    h = np.einsum("ktsr,ktsw->ktrw", c.read, H).reshape(4, TOKENS.size, -1)
    np.testing.assert_allclose(h, np.asarray(inter["branch_inputs"]).reshape(h.shape),
                               rtol=1e-5, atol=1e-5)


def test_composite_gain_identity_hand_made_and_mhc():
    g = cd.composite_gain(_static([[1, 0, 0, 0]] * 4, [np.eye(4)] * 4, [[1] * 4] * 4, [1] * 4))
    for key in ("forward", "backward", "single_forward", "single_backward"):
        assert np.all(g[key] == 1.0), (key, g[key])
    # Two tokens; A_r as [source, destination]. Sublayer 2 is shared: P2 = A_r^T = [[2,1],[0,1]].
    a = np.array([[[1, 1], [0, 1]], [[2, 0], [1, 1]]], float)   # token a: sublayers 1, 2
    b = np.array([[[1, 0], [1, 1]], [[2, 0], [1, 1]]], float)   # token b
    res = np.stack([a, b], axis=1)                               # [S=2, N=2, 2, 2]
    c = cd.Coefficients("hyper", np.ones((2, 2, 2, 1)), res, np.ones((2, 2, 2)), np.ones(2),
                        True, np.full((2, 2), 0.5))
    w = cd.composite_gain(c, "weights")
    # mean P1 = [[1, .5], [.5, 1]]; P2 P1 = [[2.5, 2], [.5, 1]]: row sums 4.5, 1.5; cols 3, 3.
    np.testing.assert_allclose(w["forward"], [4.5, 3.0])        # from l=2: P2 rows 3, 1
    np.testing.assert_allclose(w["backward"], [3.0, 2.0])       # P2 columns 2, 2
    np.testing.assert_allclose(w["single_forward"], [1.5, 3.0])
    p = cd.composite_gain(c, "products")
    # token a: P2 [[1,0],[1,1]] = [[3,1],[1,1]] (4, 4); token b: [[2,3],[0,1]] (5, 4).
    np.testing.assert_allclose(p["forward"], [4.5, 3.0])
    np.testing.assert_allclose(p["backward"], [4.0, 2.0])       # != 3.0 from averaged weights
    m = cd.sublayer_coefficients(_model("mhc", {"rate": 4}, n_layers=3), TOKENS)
    for avg in cd.AVERAGES:
        gm = cd.composite_gain(m, avg)
        for key in ("forward", "backward", "single_forward", "single_backward"):
            assert np.all(np.abs(gm[key] - 1.0) <= 1e-3), (avg, key, gm[key])


def test_branch_input_cosine_range_shape_and_identical_inputs():
    model = _model()
    cos = cd.branch_input_cosine(model, TOKENS)
    assert cos.shape == (3, TOKENS.size) and np.all(np.abs(cos) <= 1.0)
    assert not np.all(cos[0] == 1.0)
    model.layers.blocks[0].attn.wo[...] = jnp.zeros_like(model.layers.blocks[0].attn.wo[...])
    cos = cd.branch_input_cosine(model, TOKENS, chunk=1)  # zero attention output: h^2 = h^1
    assert cos.shape == (3, TOKENS.size) and np.all(cos[0] == 1.0) and np.all(cos[1:] < 1.0)
    s = cd.cosine_summary(cos)
    np.testing.assert_array_equal(s["sublayer"], [2, 3, 4])
    assert np.all(s["p5"] <= s["median"]) and np.all(s["median"] <= s["p95"])


@pytest.mark.slow  # 45 s (two trainings + the CLI); the CLI's argument errors are in the default
def test_cli_end_to_end_on_two_trained_runs(tmp_path, small_corpus):  # suite (test_cli_errors)
    from seedjax.train.loop import Trainer
    base = tmp_path / "baseline"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(  # trains while the HC run trains in-process
        [sys.executable, "-m", "experiments.train", "--config", "configs/lm.py:smoke",
         f"--config.data.source={small_corpus}", "--config.train.steps=3", "--workdir",
         str(base), "--nosample", "--noprogress"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cfg = smoke_config(small_corpus, steps=3)
    cfg.model.connection, cfg.model.connection_kwargs = "hyper", {"rate": 2}
    Trainer(cfg, str(tmp_path / "hc2"), progress=False).run()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    with pytest.raises(ValueError, match="names"):
        run([str(base), str(tmp_path / "hc2")], ["only_one"], str(tmp_path / "x"))
    with pytest.raises(ValueError, match="no checkpoints"):
        run([str(tmp_path)], None, str(tmp_path / "x"))
    out = tmp_path / "diag"
    res = subprocess.run(
        [sys.executable, "-m", "experiments.diagnose_connections", "--workdirs",
         f"{base},{tmp_path / 'hc2'}", "--names", "baseline,hc2", "--out", str(out),
         "--batches", "2"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "baseline:" in res.stdout and "hc2:" in res.stdout
    for png in ("cosine.png", "gain.png", "gain_products.png", "unfolded_baseline.png",
                "unfolded_hc2.png", "unfolded_hc2_products.png"):
        assert (out / png).stat().st_size > 1000, png
    d = json.load(open(out / "diagnostics.json"))
    hc, bl = d["runs"]["hc2"], d["runs"]["baseline"]
    assert hc["step"] == 3 and hc["n_streams"] == 2 and hc["dynamic"] and bl["n_streams"] == 1
    assert hc["n_tokens"] == 2 * 8 * 32 and len(hc["cosine"]["median"]) == 3
    assert np.array(hc["unfolded"]["weights"]["C0"]).shape == (6, 5)
    np.testing.assert_array_equal(bl["unfolded"]["weights"]["C0"], _prenorm(4))
    assert bl["gain"]["weights"]["forward"] == [1.0] * 4
    bad = subprocess.run(
        [sys.executable, "-m", "experiments.diagnose_connections", "--workdirs", str(tmp_path),
         "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "no checkpoints" in bad.stderr
