"""Decoder LM tests: causality, KV-cache decoding, scan == loop, factory registry, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig, register
from seedjax.nn import SwiGLU
from seedjax.nn.attention import CausalSelfAttention

CFG = LMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=64, max_seq_len=24)


def tokens(b=2, t=16, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, 256)


@pytest.mark.parametrize("scan", [False, True])
def test_shapes_and_dtypes(scan):
    model = LM(CFG.replace(scan_layers=scan), rngs=nnx.Rngs(0))
    out = model(tokens(), return_intermediates=True)
    assert out.logits.shape == (2, 16, 256) and out.logits.dtype == jnp.float32
    assert out.aux_losses == {}
    assert out.intermediates["layer_outputs"].shape == (2, 2, 16, 32)


def test_mixer_kwargs_set_the_attention_chunk():
    """model.mixer_kwargs={"causal_chunk": 4} reaches every block's attention, and the
    block-skipping result equals the unchunked one (T = 16 <= the default chunk)."""
    chunked = LM(CFG.replace(mixer_kwargs={"causal_chunk": 4}), rngs=nnx.Rngs(0))
    full = LM(CFG, rngs=nnx.Rngs(0))
    assert [a.causal_chunk for _, a in nnx.iter_graph(chunked)
            if isinstance(a, CausalSelfAttention)] == [4, 4]
    np.testing.assert_allclose(chunked(tokens()).logits, full(tokens()).logits, atol=1e-5)
    with pytest.raises(ValueError, match="causal_chunk must be >= 1"):
        LM(CFG.replace(mixer_kwargs={"causal_chunk": 0}), rngs=nnx.Rngs(0))


def test_bf16_compute():
    model = LM(CFG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    out = model(tokens())
    assert out.logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out.logits)))


@pytest.mark.parametrize("scan", [False, True])
def test_causality(scan):
    """Logits at position t do not change when tokens after t change."""
    model = LM(CFG.replace(scan_layers=scan), rngs=nnx.Rngs(0))
    a = tokens()
    b = a.at[:, 9:].set((a[:, 9:] + 17) % 256)
    la, lb = model(a).logits, model(b).logits
    np.testing.assert_allclose(la[:, :9], lb[:, :9], atol=1e-6)
    assert float(jnp.max(jnp.abs(la[:, 9:] - lb[:, 9:]))) > 1e-4


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decoding_equals_full_forward(scan):
    model = LM(CFG.replace(scan_layers=scan), rngs=nnx.Rngs(0))
    toks = tokens(t=12)
    full = model(toks).logits
    cache = model.init_cache(2, 20)
    out = model(toks[:, :7], cache=cache)
    pieces, cache = [out.logits], out.cache
    for t in range(7, 12):
        out = model(toks[:, t:t + 1], cache=cache)
        pieces.append(out.logits)
        cache = out.cache
    np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=2e-5)


def test_scan_equals_loop_with_same_weights():
    loop = LM(CFG, rngs=nnx.Rngs(0))
    scan = LM(CFG.replace(scan_layers=True), rngs=nnx.Rngs(0))
    # same init stream -> same weights, stacked along "layers"
    wq_loop = jnp.stack([b.attn.wq[...] for b in loop.layers.blocks])
    np.testing.assert_array_equal(wq_loop, scan.layers.stacked["attn"]["wq"][...])
    np.testing.assert_allclose(loop(tokens()).logits, scan(tokens()).logits, atol=1e-5)
    axes = scan.layers.stacked["attn"]["wq"].get_metadata()["out_sharding"]
    assert axes == ("layers", "embed", "heads", "head_dim")


@pytest.mark.parametrize("memory", [None, "ultramem"])
def test_remat_gives_same_gradients(memory):
    """remat recomputes blocks (and skip-layer memory units) in the backward: same gradients."""
    cfg = CFG if memory is None else CFG.replace(
        n_layers=3, memory=memory, memory_layers="0:1", memory_kwargs={
            "n_keys": 8, "k_dim": 16, "heads": 2, "topk": 4, "v_dim": 16, "expand": 4})
    def grads(cfg):
        model = LM(cfg, rngs=nnx.Rngs(0))
        def loss(m):
            return jnp.mean(m(tokens()).logits ** 2)
        return nnx.grad(loss)(model)
    g0, g1 = grads(cfg), grads(cfg.replace(remat=True))
    assert jax.tree.structure(g0) == jax.tree.structure(g1)
    gd, st = nnx.split(LM(cfg.replace(remat=True), rngs=nnx.Rngs(0)))
    eqns = jax.make_jaxpr(lambda st: nnx.merge(gd, st)(tokens()).logits)(st).jaxpr.eqns
    remats = [e for e in eqns if e.primitive.name.startswith("remat")]
    assert len(remats) == cfg.n_layers + (memory is not None)   # each block, the skip unit
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6)


class ScaledFFN(nnx.Module):
    def __init__(self, cfg, *, rngs):
        self.inner = SwiGLU(cfg.d_model, cfg.mlp_dim, rngs=rngs)

    def __call__(self, x):
        y = self.inner(x)
        return y, {"ffn_l2": 1e-3 * jnp.mean(y ** 2)}


@register("ffn", "test_scaled_ffn")
def _scaled_ffn(cfg, layer_idx, *, rngs):
    return ScaledFFN(cfg, rngs=rngs)


def test_registered_factory_plugs_in_with_aux_losses():
    for scan in (False, True):
        model = LM(CFG.replace(ffn="test_scaled_ffn", scan_layers=scan), rngs=nnx.Rngs(0))
        out = model(tokens())
        assert set(out.aux_losses) == {"ffn_l2"}
        assert float(out.aux_losses["ffn_l2"]) > 0


def test_untied_head_and_layernorm():
    model = LM(CFG.replace(head="untied", norm="layernorm"), rngs=nnx.Rngs(0))
    assert model(tokens()).logits.shape == (2, 16, 256)


def test_errors_name_the_field():
    with pytest.raises(ValueError, match="model.ffn='nope'.*swiglu"):
        LM(CFG.replace(ffn="nope"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.norm"):
        LM(CFG.replace(norm="batchnorm"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.n_heads"):
        CFG.replace(d_model=30)
    with pytest.raises(ValueError, match="model.dtype"):
        CFG.replace(dtype="float8")
    with pytest.raises(ValueError, match="model.ffn_kwargs"):
        LM(CFG.replace(ffn_kwargs={"bogus": 1}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['model\.d_modle'\]"):
        LMConfig.from_dict({"d_modle": 3})
    model = LM(CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_seq_len"):
        model(tokens(t=25))
    with pytest.raises(ValueError, match="max_seq_len"):
        model.init_cache(1, 100)


@pytest.mark.parametrize("scan", [False, True])
def test_intermediates_record_sublayer_inputs(scan):
    model = LM(CFG.replace(scan_layers=scan), rngs=nnx.Rngs(0))
    inter = model(tokens(), return_intermediates=True).intermediates
    assert inter["streams"].shape == (2, 2, 2, 16, 32)
    assert inter["branch_inputs"].shape == (2, 2, 2, 16, 32)
    # plain residual: the FFN sublayer's input state is the attention sublayer's output state,
    # and layer l's output is layer l+1's attention input
    np.testing.assert_allclose(inter["layer_outputs"][0], inter["streams"][1, 0], atol=1e-6)
    np.testing.assert_allclose(inter["branch_inputs"], inter["streams"], atol=1e-6)
