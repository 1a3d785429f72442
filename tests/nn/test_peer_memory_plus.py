"""PEER and Memory+ layers: forward == a numpy brute force that scores all n^2 product keys of
every head, per-head softmax routing, Memory+'s W2(y * silu(W1 x)), gradients, parameter
metadata and init, the "peer" / "memory_plus" LM FFNs and config errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import erf

from seedjax.models import LM, LMConfig
from seedjax.nn.memory import PEER, MemoryPlus, MemoryPlusConfig, PEERConfig
from seedjax.nn.params import param_metadata
from seedjax.train.flops import lm_forward_flops_per_token

PEER_CFG = PEERConfig(d_model=16, n_keys=8, heads=2, k_dim=8, topk=4)
MPLUS_CFG = MemoryPlusConfig(d_model=16, n_keys=8, heads=2, k_dim=8, topk=4)
X = np.random.default_rng(1).standard_normal((3, 5, 16)).astype(np.float32)


def _params(m):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(m)))


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _brute_force_topk(p, x, c, *, layernorm=False, qk_norm=False, eps=0.0):
    """float64: query (+ bias, + per-head LayerNorm), the score of every one of the n^2
    product keys of each head written out, and the exact top-k -> (scores, idx) [..., H, k]."""
    q = x.astype(np.float64) @ p["w_query"] + p.get("b_query", 0.0)
    q = q.reshape(*x.shape[:-1], c.heads, c.k_dim)
    if layernorm:
        q = (q - q.mean(-1, keepdims=True)) / np.sqrt(q.var(-1, keepdims=True) + c.norm_eps)
        q = q * p["query_scale"].reshape(c.heads, -1) + p["query_bias"].reshape(c.heads, -1)
    half = c.k_dim // 2
    q1, q2, k1, k2 = q[..., :half], q[..., half:], p["sub_keys"][:, 0], p["sub_keys"][:, 1]
    if qk_norm:
        q1, q2, k1, k2 = (t / np.sqrt((t ** 2).sum(-1, keepdims=True) + eps)
                          for t in (q1, q2, k1, k2))
    n = c.n_keys
    full = np.zeros((*q.shape[:-1], n * n))
    for i in range(n):                       # slot i * n + j has <q1, K1[i]> + <q2, K2[j]>
        for j in range(n):
            full[..., i * n + j] = ((q1 * k1[:, i]).sum(-1) + (q2 * k2[:, j]).sum(-1))
    idx = np.argsort(-full, axis=-1, kind="stable")[..., :c.topk]
    return np.take_along_axis(full, idx, -1), idx


def _peer_reference(m, x):
    """sum_h sum_t softmax_h(S)[t] * sigma(<U[i_t], x>) * V[i_t] in float64."""
    c, p = m.config, _params(m)
    scores, idx = _brute_force_topk(p, x, c, layernorm=c.query_norm == "layernorm")
    g = _softmax(scores)                                            # per head over its top-k
    h = np.einsum("...hkd,...d->...hk", p["expert_down"][idx], x.astype(np.float64))
    act = 0.5 * h * (1 + erf(h / np.sqrt(2))) if c.activation == "gelu" else np.maximum(h, 0)
    return np.einsum("...hk,...hkd->...d", g * act, p["expert_up"][idx]), scores, idx


def _mplus_reference(m, x):
    """y = brute-force PKM read (per-head softmax, one table, summed over heads);
    out = W2(y * silu(W1 x)) in float64."""
    c, p = m.config, _params(m)
    scores, idx = _brute_force_topk(p, x, c, qk_norm=c.qk_norm, eps=c.norm_eps)
    y = np.einsum("...hk,...hkd->...d", _softmax(scores), p["values"][idx])
    a = x.astype(np.float64) @ p["w_in"]
    return (y * a / (1 + np.exp(-a))) @ p["w_out"], y, idx


@nnx.jit
def _forward(m, x):
    return m(x), m.retrieve(x)


PEER_VARIANTS = {"gelu_layernorm": {}, "relu_no_norm": {"activation": "relu", "query_norm": "none"},
                 "dense_experts": {"expert_compute": "dense"}}


@pytest.fixture(scope="module")
def peers():
    return {k: PEER(dataclasses.replace(PEER_CFG, **kw), rngs=nnx.Rngs(0))
            for k, kw in PEER_VARIANTS.items()}


@pytest.fixture(scope="module")
def mpluses():
    return {qk: MemoryPlus(dataclasses.replace(MPLUS_CFG, qk_norm=qk), rngs=nnx.Rngs(0))
            for qk in (False, True)}


@pytest.mark.parametrize("variant", sorted(PEER_VARIANTS))
def test_peer_equals_brute_force(peers, variant):
    """PEER output, scores and expert indices equal the brute force over all n^2 experts per
    head with the exact top-k, per-head softmax and sum_i g_i sigma(u_i.x) v_i."""
    m = peers[variant]
    y, (scores, idx) = _forward(m, X)
    ref_y, ref_s, ref_i = _peer_reference(m, X)
    assert y.shape == X.shape and idx.shape == (3, 5, 2, 4) and idx.dtype == jnp.int32
    np.testing.assert_array_equal(idx, ref_i)      # random inputs: no ties
    np.testing.assert_allclose(scores, ref_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-5)


def test_peer_router_softmax_is_per_head(peers):
    """Router weights = softmax over each head's own top-k scores, built here by hand: each
    head's k weights sum to 1 (so all H*k sum to H), unlike one softmax over all H*k."""
    m = peers["gelu_layernorm"]
    g, idx = nnx.jit(lambda mod, x: mod.router(x))(m, X)
    scores, ref_idx = _brute_force_topk(_params(m), X, m.config, layernorm=True)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    by_hand = e / e.sum(-1, keepdims=True)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(g, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g).sum(-1), 1.0, rtol=1e-6)
    flat = scores.reshape(*scores.shape[:-2], -1)
    joint = _softmax(flat).reshape(scores.shape)
    assert np.abs(joint.sum(-1) - 1).max() > 1e-3   # a joint softmax would not sum to 1 per head


@pytest.mark.parametrize("qk_norm", [False, True])
def test_memory_plus_equals_w2_of_gated_brute_force_read(mpluses, qk_norm):
    """Memory+ output == W2(y * silu(W1 x)), y the brute-force PKM read (query with bias,
    exact top-k over all n^2 keys per head, per-head softmax, summed over heads); read() == y."""
    m = mpluses[qk_norm]
    out, (_, idx) = _forward(m, X)
    y = nnx.jit(lambda mod, x: mod.read(x))(m, X)
    ref_out, ref_y, ref_i = _mplus_reference(m, X)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(y, ref_y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out, ref_out, rtol=1e-4, atol=1e-5)


def _grads(m):
    graphdef, state = nnx.split(m)
    ct = jnp.asarray(np.random.default_rng(2).standard_normal(X.shape), jnp.float32)
    loss = lambda st: jnp.sum(nnx.merge(graphdef, st)(X) * ct)
    return nnx.to_pure_dict(jax.jit(jax.grad(loss))(state))


@pytest.mark.parametrize("layer,names", [
    ("peer", ("w_query", "query_scale", "query_bias", "sub_keys", "expert_down", "expert_up")),
    ("memory_plus", ("w_query", "b_query", "sub_keys", "values", "w_in", "w_out"))])
def test_gradients_reach_every_parameter(peers, mpluses, layer, names):
    """d(sum(out * c)) is finite and nonzero for queries, sub-keys, tables and projections;
    table rows that no token selected get zero gradient."""
    m = peers["gelu_layernorm"] if layer == "peer" else mpluses[False]
    g = _grads(m)
    assert set(g) == set(names)
    for name in names:
        a = np.asarray(g[name])
        assert np.all(np.isfinite(a)) and np.abs(a).max() > 0, name
    table = np.asarray(g["expert_up" if layer == "peer" else "values"])
    assert 0 < np.count_nonzero(np.any(table != 0, axis=1)) <= min(15 * 2 * 4, 64)


def test_peer_dense_expert_compute_equals_gather_gradients_included(peers):
    """expert_compute="dense" (all N experts by matmul, the selected ones kept) gives the
    gather path's gradient for every parameter (same weights: both built from Rngs(0))."""
    dense, gather = _grads(peers["dense_experts"]), _grads(peers["gelu_layernorm"])
    for name in gather:
        np.testing.assert_allclose(dense[name], gather[name], rtol=1e-4, atol=1e-5,
                                   err_msg=name)


def test_parameter_metadata_and_memory_plus_init(peers, mpluses):
    """Tables carry ("mem_rows", ...) axes, lr_group memory_values and no weight decay;
    Memory+ init: keys U(+-1/sqrt(Dk)), values std Dv^-0.5, W_q xavier, W1/W2 std D^-0.5."""
    groups = param_metadata(peers["gelu_layernorm"], "lr_group")
    decay = param_metadata(peers["gelu_layernorm"], "weight_decay")
    axes = param_metadata(peers["gelu_layernorm"], "out_sharding")
    for name in ("expert_down", "expert_up"):
        assert groups[name] == "memory_values" and decay[name] is False
    assert axes["expert_up"] == ("mem_rows", "mem_dim") and groups["w_query"] == "default"
    m = MemoryPlus(MemoryPlusConfig(d_model=64, n_keys=32, heads=4, k_dim=32), rngs=nnx.Rngs(0))
    meta = param_metadata(m, "lr_group")
    assert meta["values"] == "memory_values" and meta["w_in"] == "default"
    assert param_metadata(m, "out_sharding")["values"] == ("mem_rows", "mem_dim")
    p = _params(m)
    key_max = np.abs(p["sub_keys"]).max()
    assert 0.9 * 32 ** -0.5 < key_max <= 32 ** -0.5           # 1/sqrt(Dk), not 1/sqrt(Dk/2)
    np.testing.assert_allclose(p["values"].std(), 64 ** -0.5, rtol=0.05)
    for name in ("w_in", "w_out"):
        np.testing.assert_allclose(p[name].std(), 64 ** -0.5, rtol=0.1)
    bound = (6 / (64 + 4 * 32)) ** 0.5
    assert bound * 0.95 < np.abs(p["w_query"]).max() <= bound and np.all(p["b_query"] == 0)


LM_BASE = LMConfig(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, mlp_dim=32, max_seq_len=16)
TINY = {"n_keys": 8, "heads": 2, "k_dim": 8, "topk": 4}


@pytest.mark.parametrize("ffn,cls", [("peer", PEER), ("memory_plus", MemoryPlus)])
def test_lm_with_memory_ffn_has_finite_logits(ffn, cls):
    """An LM with model.ffn="peer" / "memory_plus" builds that layer in every block, runs a
    jitted forward with finite logits, and has a FLOP formula."""
    cfg = LM_BASE.replace(ffn=ffn, ffn_kwargs=TINY)
    model = LM(cfg, rngs=nnx.Rngs(0))
    assert all(isinstance(b.ffn, cls) for b in model.layers.blocks)
    graphdef, state = nnx.split(model)
    toks = jax.random.randint(jax.random.key(0), (2, 8), 0, 256)
    out = jax.jit(lambda st, t: nnx.merge(graphdef, st)(t))(state, toks)
    assert out.logits.shape == (2, 8, 256) and bool(jnp.all(jnp.isfinite(out.logits)))
    flops = lm_forward_flops_per_token(cfg, 8)
    assert flops["mem_keys"] == 2 * 2 * 2 * 8 * 8 and ("mem_experts" in flops) == (ffn == "peer")


@pytest.mark.parametrize("cls,kw,match", [
    (PEERConfig, {"activation": "silu"}, r"PEERConfig.activation='silu'.*\('gelu', 'relu'\)"),
    (PEERConfig, {"query_norm": "batchnorm"}, r"PEERConfig.query_norm='batchnorm'.*leak future"),
    (PEERConfig, {"k_dim": 7}, "PEERConfig.k_dim=7 must be even"),
    (PEERConfig, {"topk": 65}, r"PEERConfig.topk=65 must be <= n_keys\*\*2=64"),
    (PEERConfig, {"heads": 0}, "PEERConfig.heads=0 must be an integer >= 1"),
    (PEERConfig, {"expert_init_std": -1.0},
     "PEERConfig.expert_init_std=-1.0 must be a positive number or None"),
    (PEERConfig, {"implementation": "cuda"}, "PEERConfig.implementation='cuda' is not one of"),
    (PEERConfig, {"expert_compute": "all"},
     r"PEERConfig.expert_compute='all' is not allowed; allowed: \('gather', 'dense'\)"),
    (MemoryPlusConfig, {"qk_norm": "yes"}, "MemoryPlusConfig.qk_norm='yes' must be True or"),
    (MemoryPlusConfig, {"v_dim": 0}, "MemoryPlusConfig.v_dim=0 must be an integer >= 1"),
    (MemoryPlusConfig, {"n_keys": 50000}, "MemoryPlusConfig.n_keys=50000 gives more slots"),
    (MemoryPlusConfig, {"proj_init_std": 0}, "MemoryPlusConfig.proj_init_std=0 must be"),
])
def test_config_errors_name_field_value_and_allowed(cls, kw, match):
    """Bad config values raise ValueError naming the field, the value and what is allowed."""
    with pytest.raises(ValueError, match=match):
        cls(**{"d_model": 16, "n_keys": 8, **kw})


def test_module_and_lm_errors():
    """Wrong config type, wrong input width and unknown ffn_kwargs raise ValueError."""
    with pytest.raises(ValueError, match="PEER needs a PEERConfig"):
        PEER(MPLUS_CFG, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="MemoryPlus input last dim 7 != d_model=16"):
        MemoryPlus(MPLUS_CFG, rngs=nnx.Rngs(0)).retrieve(jnp.zeros((2, 7)))
    with pytest.raises(ValueError, match="model.ffn_kwargs"):
        LM(LM_BASE.replace(ffn="peer", ffn_kwargs={**TINY, "bogus": 1}), rngs=nnx.Rngs(0))
    assert MemoryPlusConfig(d_model=16).v_dim == 16 and PEERConfig(d_model=16, topk=40,
                                                                   n_keys=8).topk_side == 8
