"""Ouro checkpoint conversion (seedjax.convert.ouro) against the released PyTorch code's outputs
on the tiny fixture ``../shared/fixtures/ouro_tiny`` (see its README): every golden array with a
seedjax counterpart, bit-exact round trips (f32, bf16, sharded), and the conversion errors.

"Relative error" below is max |ours - golden| / max |golden| per array (required <= 1e-5)."""
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from seedjax.convert.ouro import config_from_hf, load_hf, save_hf
from seedjax.nn.looped import mixed_logits_loss

FIXTURE = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "ouro_tiny"
pytestmark = pytest.mark.skipif(
    not (FIXTURE / "golden.npz").exists(),
    reason=f"Ouro golden fixture not found at {FIXTURE} (expected <repo>/../shared/fixtures/"
           "ouro_tiny with config.json, model.safetensors and golden.npz)")
RTOL = 1e-5


def rel_err(ours, golden) -> float:
    ours, golden = np.asarray(ours, np.float64), np.asarray(golden, np.float64)
    assert ours.shape == golden.shape, (ours.shape, golden.shape)
    return float(np.max(np.abs(ours - golden)) / max(np.max(np.abs(golden)), 1e-30))


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE / "golden.npz"))


@pytest.fixture(scope="module")
def model():
    return load_hf(str(FIXTURE), dtype=jnp.float32)


@pytest.fixture(scope="module")
def out(model, golden):
    return model(jnp.asarray(golden["tokens"]), return_intermediates=True)


def test_config_read_from_config_json(model):
    """Every model value comes from config.json (not class defaults): sizes, T, threshold,
    RoPE theta, eps, untied head, sandwich norms, the looped stack."""
    c = model.cfg
    assert (c.vocab_size, c.d_model, c.n_layers, c.n_heads, c.kv_heads, c.mlp_dim) == \
        (320, 64, 2, 4, 4, 160)
    assert (c.rope_theta, c.norm_eps, c.max_seq_len, c.head) == (10000.0, 1e-6, 128, "untied")
    assert c.stack == "looped" and c.sandwich_norm
    assert dict(c.stack_kwargs) == {"loops": 4, "exit_gate": True, "exit_rule": "threshold",
                                    "exit_threshold": 1.0}


def test_per_loop_states_logits_and_gate_match_released(out, golden):
    """Per-loop normed states (final norm after every loop), per-loop logits, gate logits and
    gate lambdas equal the released code's to 1e-5 relative."""
    inter = out.intermediates
    assert rel_err(inter["loop_states"], golden["hidden_per_loop"]) < RTOL
    assert rel_err(out.loop_logits, golden["logits_per_loop"]) < RTOL
    assert rel_err(inter["gate_logits"], golden["gate_logit_per_loop"]) < RTOL
    lam = 1 / (1 + np.exp(-np.asarray(inter["gate_logits"], np.float64)))
    assert rel_err(lam, golden["gate_lambda_per_loop"]) < RTOL


def test_exit_distribution_matches_released(out, golden):
    """Exit probabilities [B, S, T] and their CDF equal the released pdf/cumsum."""
    assert rel_err(out.exit_probs, golden["stacked_exit_pdf"]) < RTOL
    assert rel_err(np.cumsum(np.asarray(out.exit_probs), -1), golden["exit_cdf_default"]) < RTOL


def test_exit_rules_match_released(model, out, golden):
    """Default call (config threshold 1.0 = last loop), exit_at_step 0 and 3, threshold 0.5
    (per-token loop choice and logits), weighted exit, and the released use_weighted_exit
    flag-only call (ignored by the released code: equals the default) match."""
    toks = jnp.asarray(golden["tokens"])
    assert rel_err(out.logits, golden["logits_default"]) < RTOL
    np.testing.assert_array_equal(out.exit_steps, golden["exit_steps_default"])
    assert rel_err(out.logits, golden["logits_use_weighted_exit_flag_only"]) < RTOL
    for k in (0, 3):
        assert rel_err(model(toks, exit_at_step=k).logits, golden[f"logits_exit_at_step_{k}"]) \
            < RTOL
    o = model(toks, exit_threshold=0.5)
    np.testing.assert_array_equal(o.exit_steps, golden["exit_steps_threshold_0p5"])
    assert rel_err(o.logits, golden["logits_exit_threshold_0p5"]) < RTOL
    w = model(toks, weighted_exit=True)
    assert rel_err(w.logits, golden["logits_weighted_exit"]) < RTOL


def test_labels_logits_and_loss_match_released(model, golden):
    """The released labels path (weighted logits, shifted CE of them) is the weighted exit plus
    mixed_logits_loss."""
    toks = jnp.asarray(golden["tokens"])
    w = model(toks, weighted_exit=True, return_loop_logits=False)
    assert rel_err(w.logits, golden["logits_with_labels"]) < RTOL
    assert rel_err(mixed_logits_loss(w.logits, toks), golden["loss_with_labels"]) < RTOL


def test_prefill_kv_and_greedy_decodes_match_released(model, golden):
    """The prefill K/V (post-RoPE, slot = loop * L + layer), the 6-token greedy decode with the
    per-(loop, layer) cache and the logits that chose each token match the released code; so
    do the no-cache decode and its logits (checked in one full forward over prompt + decoded
    tokens: by causality position P-1+i holds the logits of no-cache step i)."""
    prompt = jnp.asarray(golden["prompt"])
    p = prompt.shape[1]

    @nnx.jit
    def greedy(m, prompt):
        pre = m(prompt, cache=m.init_cache(1, 11), return_loop_logits=False)

        def body(carry, _):
            tok, cache = carry
            o = m(tok[:, None], cache=cache, return_loop_logits=False)
            return (jnp.argmax(o.logits[:, -1], -1).astype(jnp.int32), o.cache), o.logits[:, -1]

        first = jnp.argmax(pre.logits[:, -1], -1).astype(jnp.int32)
        (_, _), steps = jax.lax.scan(body, (first, pre.cache), None, length=5)
        logits = jnp.concatenate([pre.logits[None, :, -1], steps], 0)      # [6, 1, V]
        return pre.cache, logits, jnp.argmax(logits, -1).T                 # tokens [1, 6]

    cache, step_logits, new = greedy(model, prompt)
    keys = np.stack([np.asarray(c.k[:, :, :p]) for loop in cache for c in loop])
    vals = np.stack([np.asarray(c.v[:, :, :p]) for loop in cache for c in loop])
    # both [T*L, B, K, P, hd]
    assert rel_err(keys, golden["prefill_kv_keys"]) < RTOL
    assert rel_err(vals, golden["prefill_kv_values"]) < RTOL
    np.testing.assert_array_equal(new, golden["gen_tokens_use_cache"])
    assert rel_err(step_logits, golden["gen_step_logits_use_cache"]) < RTOL
    seq = jnp.concatenate([prompt, jnp.asarray(golden["gen_tokens_no_cache"][:, :-1])], 1)
    full = model(seq, return_loop_logits=False).logits[:, p - 1:]   # [1, 6, V]
    np.testing.assert_array_equal(np.argmax(np.asarray(full), -1), golden["gen_tokens_no_cache"])
    assert rel_err(np.asarray(full).transpose(1, 0, 2), golden["gen_step_logits_no_cache"]) < RTOL


def _tensors(path):
    return load_file(str(path))


def test_round_trip_float32_is_bit_exact(model, tmp_path):
    """save_hf writes the published layout: the same tensor names, shapes, dtype and bytes as
    the fixture, a config.json giving the same seedjax config, and reloading gives bitwise the
    same parameters."""
    save_hf(model, str(tmp_path))
    src, dst = _tensors(FIXTURE / "model.safetensors"), _tensors(tmp_path / "model.safetensors")
    assert sorted(src) == sorted(dst)
    for k in src:
        assert src[k].dtype == dst[k].dtype and src[k].shape == dst[k].shape, k
        assert src[k].tobytes() == dst[k].tobytes(), k
    with safe_open(str(tmp_path / "model.safetensors"), framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert config_from_hf(cfg) == model.cfg
    again = load_hf(str(tmp_path))
    for a, b in zip(nnx.state(model, nnx.Param).flat_state(),
                    nnx.state(again, nnx.Param).flat_state()):
        assert a[0] == b[0]
        np.testing.assert_array_equal(np.asarray(a[1][...]), np.asarray(b[1][...]))


def test_round_trip_bf16_sharded_and_scanned(model, tmp_path):
    """A bf16 checkpoint written in shards with an index file loads (as f32 params, scanned
    layers: stacked in layer order) and re-saves to bitwise the same bf16 tensors; loading with
    dtype=bfloat16 keeps bf16 parameters."""
    a, b = tmp_path / "a", tmp_path / "b"
    save_hf(model, str(a), dtype=jnp.bfloat16, max_shard_bytes=40_000)
    index = json.loads((a / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (a / "model.safetensors").exists()
    scanned = load_hf(str(a), dtype=jnp.float32, scan_layers=True)
    save_hf(scanned, str(b), dtype=jnp.bfloat16)
    src = {}
    for shard in sorted(set(index["weight_map"].values())):
        src.update(_tensors(a / shard))
    dst = _tensors(b / "model.safetensors")
    assert sorted(src) == sorted(dst)
    for k in src:
        assert src[k].dtype == dst[k].dtype == np.dtype("bfloat16"), k
        assert src[k].tobytes() == dst[k].tobytes(), k
    bf = load_hf(str(a), dtype=jnp.bfloat16)
    assert bf.layers.body.blocks[0].attn.wq[...].dtype == jnp.bfloat16
    for layer in range(2):
        np.testing.assert_array_equal(
            np.asarray(scanned.layers.body.stacked["ffn_norm"]["scale"][...][layer]),
            np.asarray(bf.layers.body.blocks[layer].ffn_norm.scale[...], np.float32))
    assert scanned.cfg.scan_layers and scanned.cfg.replace(scan_layers=False) == bf.cfg.replace(
        dtype="float32")


def _copy_fixture(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(FIXTURE / name, d / name)
        (d / name).chmod(0o644)
    return d


def _edit_tensors(d, fn):
    t = dict(_tensors(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_missing_unexpected_misshaped_tensors_raise(tmp_path):
    """A missing, unexpected or wrongly shaped tensor is a ValueError naming the tensor and
    both shapes."""
    d = _copy_fixture(tmp_path)
    _edit_tensors(d, lambda t: t.pop("model.layers.1.input_layernorm_2.weight"))
    with pytest.raises(ValueError, match=r"missing .*model\.layers\.1\.input_layernorm_2\.weight"
                                         r".*expected shape \(64,\).*absent"):
        load_hf(str(d))
    d = _copy_fixture(tmp_path / "x")
    _edit_tensors(d, lambda t: t.update({"model.rotary_emb.inv_freq": np.ones(8, np.float32)}))
    with pytest.raises(ValueError, match=r"unexpected .*model\.rotary_emb\.inv_freq.*\(8,\)"):
        load_hf(str(d))
    d = _copy_fixture(tmp_path / "y")
    _edit_tensors(d, lambda t: t.update({"model.layers.0.mlp.up_proj.weight":
                                         np.ones((64, 160), np.float32)}))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*shape "
                                         r"\(64, 160\), expected \(160, 64\)"):
        load_hf(str(d))


@pytest.mark.parametrize("field", ["total_ut_steps", "early_exit_threshold", "num_key_value_heads",
                                   "rms_norm_eps", "tie_word_embeddings", "rope_theta"])
def test_config_without_required_field_raises(tmp_path, field):
    """config.json without a required field is a ValueError naming it (never a class
    default); rope_theta may sit at the top level or in rope_parameters but not be absent."""
    d = _copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg.pop(field)
    if field == "rope_theta":
        cfg["rope_parameters"].pop("rope_theta")
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"required field '{field}'"):
        load_hf(str(d))


def test_unsupported_config_values_raise(tmp_path):
    """Values the port cannot represent are ValueErrors naming them, as are a config whose
    threshold is outside (0, 1]."""
    base = json.loads((FIXTURE / "config.json").read_text())
    for edit, msg in (({"hidden_act": "gelu"}, "hidden_act"),
                      ({"model_type": "qwen2"}, "model_type"),
                      ({"use_sliding_window": True}, "use_sliding_window"),
                      ({"early_exit_threshold": 0.0}, "exit_threshold"),
                      ({"rope_parameters": {"rope_theta": 10000.0, "rope_type": "yarn"}},
                       "rope_type")):
        with pytest.raises(ValueError, match=msg):
            config_from_hf({**base, **edit})
    null = config_from_hf({**base, "early_exit_threshold": None})
    assert null.stack_kwargs["exit_rule"] == "last"
