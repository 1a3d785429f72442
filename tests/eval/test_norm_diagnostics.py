"""SeeDNorm diagnostics: the sites follow the forward order, the effective gain equals the
module's own output divided by x / RMS(x), saturation is detected, and non-SeeDNorm models are
refused with a clear error."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.eval import norm_diagnostics as nd
from seedjax.models import LM, LMConfig

CFG = LMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=24,
               norm="seednorm", norm_kwargs={"num_heads": 2})
TOKENS = np.asarray(jax.random.randint(jax.random.key(0), (2, 16), 0, 256), np.int32)


def _model(beta_scale: float, scan: bool = False):
    model = LM(CFG.replace(scan_layers=scan), rngs=nnx.Rngs(0))
    for i, (_, norm) in enumerate(nd.norm_sites(model)):
        if not scan:
            norm.beta[...] = beta_scale * jax.random.normal(jax.random.key(i), (32,))
            norm.alpha[...] = 1.0 + 0.1 * jax.random.normal(jax.random.key(100 + i), (32,))
    return model


def test_sites_in_forward_order_and_inputs_match_shapes():
    model = _model(0.0)
    names = [n for n, _ in nd.norm_sites(model)]
    assert names == ["L0.attn", "L0.ffn", "L1.attn", "L1.ffn", "final"]
    inputs = nd.norm_inputs(model, TOKENS)
    assert len(inputs) == 5 and all(x.shape == (2, 16, 32) for x in inputs)


def test_gain_equals_module_output_over_normalised_input():
    """gain_mean == mean over tokens and channels of SeeDNorm(x) / (x / RMS(x))."""
    model = _model(0.3)
    rows = nd.seednorm_summary(model, [TOKENS])
    for (name, norm), x, r in zip(nd.norm_sites(model), nd.norm_inputs(model, TOKENS), rows):
        assert r["site"] == name
        xf = np.asarray(x, np.float64)
        xhat = xf / np.sqrt(np.mean(xf ** 2, -1, keepdims=True) + norm.eps)
        gain = np.asarray(norm(x), np.float64) / xhat
        np.testing.assert_allclose(r["gain_mean"], gain.mean(), rtol=1e-4)
        np.testing.assert_allclose(r["gain_std"], gain.mean(-1).std(), rtol=1e-3, atol=1e-6)
        assert r["act_p5"] <= r["act_mean"] <= r["act_p95"]
    assert "| L0.attn |" in nd.markdown_table(rows)


def test_at_init_gain_is_one_and_nothing_saturates():
    rows = nd.seednorm_summary(LM(CFG, rngs=nnx.Rngs(0)), [TOKENS])
    for r in rows:
        assert r["act_mean"] == 0.0 and r["saturated"] == 0.0 and r["beta_norm"] == 0.0
        np.testing.assert_allclose([r["gain_mean"], r["gain_p5"], r["gain_p95"]], 1.0)


def test_large_beta_saturates_tanh():
    rows = nd.seednorm_summary(_model(1e4), [TOKENS])
    assert min(r["saturated"] for r in rows) > 0.95


def test_scanned_model_and_plot(tmp_path):
    rows = nd.seednorm_summary(LM(CFG.replace(scan_layers=True), rngs=nnx.Rngs(0)), [TOKENS])
    assert len(rows) == 5
    path = nd.plot_gains({"a": rows, "b": rows}, str(tmp_path / "g.png"))
    assert (tmp_path / "g.png").stat().st_size > 1000 and path.endswith("g.png")


def test_rejects_models_without_seednorm():
    with pytest.raises(ValueError, match="no SeeDNorm"):
        nd.seednorm_summary(LM(CFG.replace(norm="rmsnorm", norm_kwargs={}),
                               rngs=nnx.Rngs(0)), [TOKENS])


def test_cli_run_on_a_trained_seednorm_run(tmp_path, small_corpus):
    """experiments.diagnose_norms.run loads a trained run and writes the PNG, table and JSON;
    runs without SeeDNorm or checkpoints are refused."""
    import json

    from experiments.diagnose_norms import run
    from seedjax.train.loop import Trainer
    from tests.conftest import smoke_config
    cfg = smoke_config(small_corpus, steps=3)
    cfg.model.norm, cfg.model.norm_kwargs = "seednorm", {"num_heads": 2}
    Trainer(cfg, str(tmp_path / "seed"), progress=False).run()
    res = run([str(tmp_path / "seed")], ["sn"], str(tmp_path / "out"), batches=1)
    sites = res["runs"]["sn"]["sites"]
    assert res["runs"]["sn"]["step"] == 3 and len(sites) == 2 * cfg.model.n_layers + 1
    assert any(s["beta_norm"] > 0 for s in sites)         # 3 Adam steps moved beta
    assert (tmp_path / "out" / "gains.png").stat().st_size > 1000
    assert "## sn" in (tmp_path / "out" / "norms.md").read_text()
    assert json.load(open(tmp_path / "out" / "diagnostics.json"))["runs"]["sn"]["sites"]
    with pytest.raises(ValueError, match="no checkpoints"):
        run([str(tmp_path)], None, str(tmp_path / "x"))
