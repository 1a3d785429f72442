"""configs/combined.py: every LM part at once (looped stack + SeeDNorm + hyper-connections +
UltraMemV2 + over-encoding). Properties: each part is really in the built model (its parameters
exist); a short Stage I run trains (finite loss that goes down, per-loop metrics, a resumable
checkpoint); cached greedy decoding equals the uncached forward's argmax at every generated
position (KV cache, n-gram history, memory layer and connection streams agree)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.combined import get_config
from seedjax.models import LM, LMConfig
from seedjax.eval.sampling import generate


def _model():
    cfg = get_config("smoke")
    return LM(LMConfig.from_dict(cfg.model), rngs=nnx.Rngs(0))


def test_every_part_is_in_the_model():
    abstract = nnx.eval_shape(_model)
    paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    for part in ("layers/exit_gate/kernel", "embed/ngram_table", "ffn_norm/alpha",
                 "attn_post_norm/gamma", "ffn_conn/dynamic_alpha", "memory/values",
                 "memory/retrieval/cores"):
        assert any(part in p for p in paths), (part, sorted(paths))


def test_cached_greedy_decode_equals_uncached_argmax():
    model = _model()
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 5)), jnp.int32)
    out = generate(model, prompt, 8, temperature=0.0)
    logits = model(out).logits                     # [B, S, V], the exit rule's logits
    want = jnp.argmax(logits[:, 4:-1], axis=-1)     # predictions for positions 5..12
    np.testing.assert_array_equal(np.asarray(out[:, 5:]), np.asarray(want))


@pytest.mark.slow   # ~40 s on one core: the train-step compile of every part at once
def test_smoke_trains(tmp_path, small_corpus):
    from seedjax.train.loop import Trainer
    cfg = get_config("smoke")
    cfg.data.source = small_corpus
    cfg.mesh.shape = dict(data=-1, fsdp=1, model=1, expert=1, mem=1)
    cfg.train.update(steps=4, eval_every=4, checkpoint_every=4, log_every=1)
    out = Trainer(cfg, str(tmp_path), progress=False).run()
    assert out["status"] == "completed" and out["step"] == 4
    assert np.isfinite(out["val"]["loss"]) and "loop_ce/2" in out["val"]
    losses = [r["loss"] for r in map(__import__("json").loads,
                                     (tmp_path / "metrics.jsonl").read_text().splitlines())
              if "loss" in r and r.get("split", "train") == "train"]
    assert losses[-1] < losses[0], losses


def test_bad_variant_names_the_allowed():
    with pytest.raises(ValueError, match="allowed"):
        get_config("big")


@pytest.mark.slow   # ~30 s: a libtpu AOT compile
def test_whole_train_step_compiles_for_a_tpu_slice():
    """Every part at once compiles as one train step for TPU v5e-4 (data parallel over 4 chips:
    gradients all-reduced) and fits the chip."""
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        pytest.skip("libtpu not installed (pip install 'jax[tpu]==0.10.2')")
    from seedjax.train import aot, hardware
    program = aot.build_step(get_config("smoke"), aot.tpu_devices("v5e:2x2"))
    report, _ = aot.compile_step(program, hardware.CHIPS["v5e"])
    assert report.fits and report.collectives["all-reduce"] >= 1
