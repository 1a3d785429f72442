"""KV-cache sampling: greedy decoding equals step-by-step argmax of the full forward pass (also
with UltraMemV2 layers, whose retrievals generate prepares for decoding); nucleus sampling with a tiny top_p is greedy; bad arguments raise ValueError."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.data import ByteTokenizer
from seedjax.eval.sampling import generate, sample_logits, sample_text
from seedjax.models import LM, LMConfig

CFG = LMConfig(d_model=32, n_layers=2, n_heads=4, mlp_dim=64, max_seq_len=24)


MEMORY = dict(memory="ultramem_v2", memory_layers="1:1",
              memory_kwargs={"n_keys": 4, "k_dim": 8, "topk": 4, "v_dim": 8, "p_dim": 4})


@pytest.mark.parametrize("scan,memory", [(False, {}), (True, {}), (False, MEMORY)])
def test_greedy_generation_matches_full_forward_argmax(scan, memory):
    model = LM(CFG.replace(scan_layers=scan, **memory), rngs=nnx.Rngs(0))
    prompt = jnp.array([[10, 20, 30], [40, 50, 60]], jnp.int32)
    out = np.asarray(generate(model, prompt, 8, temperature=0.0))
    assert out.shape == (2, 11)
    np.testing.assert_array_equal(out[:, :3], prompt)
    # reference without a cache: one causal forward over the generated sequence gives, at each
    # position, the logits of the full forward over that position's prefix
    logits = np.asarray(nnx.jit(lambda m, x: m(x).logits)(model, jnp.asarray(out[:, :-1])))
    np.testing.assert_array_equal(out[:, 3:], np.argmax(logits[:, 2:], -1))


def test_top_p_and_temperature():
    logits = jnp.array([[0.0, 3.0, 1.0, 2.0]])
    key = jax.random.key(0)
    assert int(sample_logits(logits, key, 1.0, 1e-6)[0]) == 1  # nucleus of one token = greedy
    draws = {int(sample_logits(logits, k, 1.0, 0.8)[0]) for k in jax.random.split(key, 200)}
    assert draws <= {1, 3} and draws == {1, 3}  # top-2 tokens hold >= 0.8 of the mass
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(logits, key, -1.0, 1.0)
    with pytest.raises(ValueError, match="top_p"):
        sample_logits(logits, key, 1.0, 0.0)


def test_sampling_errors_and_text():
    model = LM(CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, jnp.zeros((1, 20), jnp.int32), 10)
    text = sample_text(model, ByteTokenizer(), "ab", 5, temperature=0.0, top_p=1.0, num_samples=2)
    assert text.count("\n----\n") == 1 and text.startswith("ab")
