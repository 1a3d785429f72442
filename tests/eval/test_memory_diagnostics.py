"""Memory diagnostics: usage / KL known values; on small LMs with every memory kind and
placement (PKM FFN, PKM and UltraMem parallel and skip units, UltraMemV2 with a shared ring
table, looped and scanned) the counts sum to tokens * heads * topk per unit and usage is in
(0, 1]; V2 window positions map back to the retrieved global rows and loop == scan; a skip
unit's collected input is block k's tap, its output std is that of memory(tap) and pooled stds
are exact; Tucker SV ratios (>= 1, a known diagonal core); errors; the CLI end to end on a tiny
trained V2 run."""
import functools
import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.diagnose_memory import run
from seedjax.eval import memory_diagnostics as md
from seedjax.models import LM, LMConfig
from tests.conftest import smoke_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = dict(d_model=16, n_layers=4, n_heads=2, mlp_dim=32, max_seq_len=12)
PKM = {"n_keys": 4, "heads": 2, "k_dim": 8, "topk": 3}
UM = {"n_keys": 4, "k_dim": 8, "topk": 4, "v_dim": 8}          # official init (fast)
V2 = {**UM, "p_dim": 4, "init": "official"}
BATCHES = [np.random.default_rng(i).integers(0, 256, (2, 12)).astype(np.int32)
           for i in range(2)]
N_TOK = sum(b.size for b in BATCHES)
V2_RING = dict(memory="ultramem_v2", memory_layers="every",
               memory_kwargs={**V2, "sharing": "ring", "share_group": 2})
CASES = {   # LM kwargs, expected units
    "pkm_ffn+ultramem": (dict(ffn="pkm", ffn_kwargs=PKM, memory="ultramem",
                              memory_layers="0:0/1:3", memory_kwargs=UM),
                         ["block0.ffn", "block0.memory", "block1.ffn", "block2.ffn",
                          "block3.ffn", "skip0:1->3"]),
    "pkm_units": (dict(memory="pkm", memory_layers="1:1/0:2", memory_kwargs=PKM),
                  ["block1.memory", "skip0:0->2"]),
    "v2_ring": (V2_RING, [f"block{i}.memory" for i in range(4)]),
    "v2_ring_scan": (dict(V2_RING, scan_layers=True), [f"block{i}.memory" for i in range(4)]),
}


@functools.lru_cache(maxsize=None)
def _diagnosed(case):
    """(LM, summary, stats) of a case on BATCHES (built and collected once per session)."""
    lm = LM(LMConfig(**BASE, **CASES[case][0]), rngs=nnx.Rngs(0))
    summary, stats = md.diagnose(lm, BATCHES, progress=False)
    return lm, summary, stats


def test_usage_and_kl_known_values():
    """Uniform -> KL 0, usage 1; one row -> KL log N, usage 1/N; half the rows evenly ->
    KL log 2, usage 1/2; no accesses -> ValueError."""
    N = 64
    assert md.usage(np.full(N, 7)) == 1.0 and md.kl_to_uniform(np.full(N, 7)) == pytest.approx(0)
    one = np.zeros(N, np.int64)
    one[5] = 11
    assert md.usage(one) == 1 / N
    assert md.kl_to_uniform(one) == pytest.approx(math.log(N))
    half = np.repeat([3, 0], N // 2)
    assert md.usage(half) == 0.5 and md.kl_to_uniform(half) == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="at least one access"):
        md.kl_to_uniform(np.zeros(4))


@pytest.mark.parametrize("case", list(CASES))
def test_counts_sum_to_tokens_heads_topk(case):
    """Per unit (every kind and placement): sum(counts) = N_tok H k, usage in (0, 1], KL in
    [0, log R], finite positive stds, top-1 >= mean selected score, Tucker ratios >= 1."""
    _, summary, stats = _diagnosed(case)
    units = {u["name"]: u for u in summary["units"]}
    assert list(units) == CASES[case][1] and summary["n_tokens"] == N_TOK
    for u in stats.units:
        r = units[u.name]
        assert r["accesses"] == N_TOK * u.heads * u.topk == stats.counts[u.name].sum()
        assert 0 < r["usage"] <= 1 and 0 <= r["kl_uniform"] <= r["log_rows"] + 1e-9
        assert r["top1_mean"] >= r["score_mean"]
        for key in ("top1_std", "score_std", "mem_out_std", "layer_out_std"):
            assert np.isfinite(r[key]) and r[key] > 0, key
        assert (u.kind == "pkm") == ("sv_ratio" not in r)
        if u.kind != "pkm":
            assert np.all(r["sv_ratio"] >= 1)
    assert (summary["global_table"] is None) == (not case.startswith("v2"))


def test_v2_shared_windows_and_loop_equals_scan():
    """Ring sharing, g = 2: unit l's window is tables (l, l+1 mod 4) (32 rows); a window
    position w N + j maps back to the global row window[w] N + j the module retrieves (so the
    window counts are the global rows' counts); the pooled table counts are the scattered
    windows' sum; the scanned LM (same init) gives the same counts."""
    lm, summary, stats = _diagnosed("v2_ring")
    g = stats.global_counts()
    assert g.shape == (64,) and g.sum() == sum(c.sum() for c in stats.counts.values())
    assert summary["global_table"]["usage"] == md.usage(g)
    want = np.zeros(64, np.int64)
    x = np.random.default_rng(5).standard_normal((40, 16)).astype(np.float32)
    for u in stats.units:
        assert u.n_rows == 32 and u.window == (u.unit, (u.unit + 1) % 4)
        module = md.unit_module(lm, u)
        _, rows = module.retrieve(x, layer=u.unit)
        _, local = md._retrieve(module, u, x)
        local = np.asarray(local)
        assert local.min() >= 0 and local.max() < 32
        np.testing.assert_array_equal(np.asarray(u.window)[local // 16] * 16 + local % 16, rows)
        want[[t * 16 + j for t in u.window for j in range(16)]] += stats.counts[u.name]
    np.testing.assert_array_equal(g, want)
    _, _, scan = _diagnosed("v2_ring_scan")
    for name, c in stats.counts.items():
        np.testing.assert_array_equal(scan.counts[name], c)


def test_skip_unit_input_is_block_k_tap_and_stds_pool_exactly():
    """memory_layers="1:1/0:2": the collected input of the skip unit is block 0's tap (blocks
    run with tap=True by hand); its mem_out std is std(memory(tap)) over all batches and the
    layer stds equal the stds of the model's concatenated layer outputs (exact pooling)."""
    lm, summary, stats = _diagnosed("pkm_units")
    unit = stats.units[1]
    assert (unit.placement, unit.read_block, unit.write_block) == ("skip", 0, 2)
    mem = md.unit_module(lm, unit)
    taps, outs = [], []
    for b in BATCHES:
        H = lm.embed(jnp.asarray(b))
        for i, block in enumerate(lm.layers.blocks):
            H, _, _, rec = block(H, memory_unit=lm.layers.parallel_units[i], tap=True)
            if i == 0:
                taps.append(rec["ffn_input"])
        np.testing.assert_allclose(md.memory_inputs(lm, b)[0], taps[-1], rtol=1e-5, atol=1e-6)
        outs.append(lm(jnp.asarray(b), return_intermediates=True).intermediates["layer_outputs"])
    want_mem = np.std(np.concatenate([np.asarray(mem(t)) for t in taps]))
    assert summary["units"][1]["mem_out_std"] == pytest.approx(want_mem, rel=1e-4)
    layers = np.concatenate([np.asarray(o) for o in outs], axis=1)          # [L, N_b B, T, d]
    np.testing.assert_allclose(summary["layer_out_std"], layers.reshape(4, -1).std(-1),
                               rtol=1e-4)


def test_tucker_singular_values_and_ratio():
    """SVs [H, r] per UltraMem unit, lambda1/lambda2 >= 1; a core summing to diag(2, 0.5) has
    singular values (2, 0.5) and ratio 4; PKM units have no core; rank 1 -> ValueError."""
    lm = LM(LMConfig(**BASE, memory="ultramem", memory_layers="0:0/1:3", memory_kwargs=UM),
            rngs=nnx.Rngs(0))
    sv = md.tucker_singular_values(lm)
    assert set(sv) == {"block0.memory", "skip0:1->3"}
    for v in sv.values():
        assert v.shape == (2, 2) and np.all(md.sv_ratio(v) >= 1)
    cores = lm.layers.blocks[0].memory.retrieval.cores
    cores[...] = jnp.zeros_like(cores[...]).at[0, :].set(jnp.diag(jnp.asarray([1.5, 0.2])))
    cores[...] = cores[...].at[1, :].set(jnp.diag(jnp.asarray([0.5, 0.3])))
    sv = md.tucker_singular_values(lm)["block0.memory"]
    np.testing.assert_allclose(sv, [[2.0, 0.5]] * 2, rtol=1e-6)
    np.testing.assert_allclose(md.sv_ratio(sv), [4.0, 4.0], rtol=1e-6)
    with pytest.raises(ValueError, match="rank >= 2"):
        md.sv_ratio(np.ones((2, 1)))
    assert md.tucker_singular_values(_diagnosed("pkm_units")[0]) == {}


def test_errors():
    with pytest.raises(ValueError, match="no memory units"):
        md.memory_units(LM(LMConfig(**BASE), rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="at least one token batch"):
        md.collect(_diagnosed("pkm_units")[0], [], progress=False)


def test_cli_end_to_end_on_a_tiny_trained_v2_run(tmp_path, small_corpus):
    from seedjax.train.loop import Trainer
    cfg = smoke_config(small_corpus, steps=2)
    cfg.model.n_layers = 1                                  # compile time dominates
    cfg.model.memory, cfg.model.memory_layers = "ultramem_v2", "every"
    cfg.model.memory_kwargs = {"n_keys": 8, "k_dim": 16, "topk": 8, "v_dim": 16, "p_dim": 8,
                               "init": "official"}
    work = tmp_path / "v2"
    Trainer(cfg, str(work), progress=False).run()
    with pytest.raises(ValueError, match="no checkpoints"):
        run(str(tmp_path), str(tmp_path / "x"))
    out = tmp_path / "diag"
    env = {**os.environ, "PYTHONPATH": ROOT}
    res = subprocess.run(
        [sys.executable, "-m", "experiments.diagnose_memory", "--workdir", str(work), "--out",
         str(out), "--batches", "2", "--noprogress"], cwd=ROOT, env=env, capture_output=True,
        text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "block0.memory (ultramem_v2, 0->0, R=64): usage" in res.stdout
    for name in ("memory_diagnostics.json", "memory_diagnostics.md", "slot_counts.npz",
                 "slot_access.png", "unit_summary.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "memory_diagnostics.json").read_text())
    assert result["step"] == 2 and result["model"]["memory"] == "ultramem_v2"
    n_tok = result["batches"] * math.prod(result["batch_shape"])
    assert result["n_tokens"] == n_tok and len(result["units"]) == 1
    for u in result["units"]:
        assert u["accesses"] == n_tok * 1 * 8 and 0 < u["usage"] <= 1 and u["n_rows"] == 64
        assert len(u["tucker_sv"]) == 1 and u["sv_ratio"][0] >= 1
    counts = np.load(out / "slot_counts.npz")
    assert counts["block0.memory"].sum() == n_tok * 8
