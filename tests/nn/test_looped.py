"""Looped LM (Ouro / LoopLM, seedjax.nn.looped + model.stack="looped"): T = 1 equals the plain
LM, per-loop logits equal a hand unrolling, the exit distribution against float64, the exit
rules, cached decoding, scan/remat/connections composition, and the ValueErrors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.nn.looped import (exit_log_probs, exit_probs, exit_readout, resolve_rule,
                               threshold_exit_steps)

BASE = LMConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=48,
                max_seq_len=16, sandwich_norm=True, head="untied")


def looped_cfg(**stack_kwargs):
    return BASE.replace(stack="looped", stack_kwargs={"loops": 3, **stack_kwargs})


def tokens(b=2, t=10, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, BASE.vocab_size, (b, t)),
                       jnp.int32)


def abstract_lm(cfg):
    return nnx.eval_shape(lambda: LM(cfg, rngs=nnx.Rngs(0)))


def make_lm(cfg, seed=0):
    """An LM with numpy-drawn weights: N(0, 0.1^2), norm gains 1 + N(0, 0.1^2) (built from the
    abstract model, which skips compiling jax's RNG for every parameter shape: test speed)."""
    graphdef, state = nnx.split(abstract_lm(cfg))
    rng = np.random.default_rng(seed)
    pure = nnx.to_pure_dict(state)

    def draw(path, leaf):
        z = rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
        return jnp.asarray(1.0 + z if str(path[-1].key) == "scale" else z)

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, pure))
    return nnx.merge(graphdef, state)


@pytest.fixture(scope="module")
def model():
    m = make_lm(looped_cfg())
    # a gate with some spread so every rule picks different loops for different tokens
    m.layers.exit_gate.kernel[...] = jnp.asarray(np.random.default_rng(3).normal(0, 0.5, 32),
                                                 jnp.float32)
    return m


def test_one_loop_without_gate_equals_plain_lm():
    """T = 1 with the gate off is exactly the plain LM (same blocks, final norm, head) with the
    same weights; its exit distribution is all mass on that one loop."""
    looped = make_lm(looped_cfg(loops=1, exit_gate=False), seed=0)
    plain = make_lm(BASE, seed=1)
    nnx.update(plain.layers, nnx.state(looped.layers.body))
    for name in ("embed", "final_norm", "head"):
        nnx.update(getattr(plain, name), nnx.state(getattr(looped, name)))
    x = tokens()
    a, b = looped(x), plain(x)
    np.testing.assert_array_equal(np.asarray(a.logits), np.asarray(b.logits))
    np.testing.assert_array_equal(np.asarray(a.loop_logits[0]), np.asarray(b.logits))
    np.testing.assert_array_equal(np.asarray(a.exit_probs), np.ones((2, 10, 1), np.float32))
    assert b.loop_logits is None and b.exit_probs is None


def test_per_loop_logits_equal_unrolling_by_hand(model):
    """loop_logits[t] = head(final_norm(body^(t+1)(embed))) with the final norm applied after
    every loop and fed into the next; gate logits = w . x_t + b on the normed state; RoPE
    positions are the same in every loop (the body is called with the default positions)."""
    x = tokens()
    out = model(x, return_intermediates=True)
    h = model.embed(x)
    for t in range(3):
        h, _, _, _ = model.layers.body(h)
        h = model.final_norm(h)
        np.testing.assert_allclose(out.intermediates["loop_states"][t], h, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out.loop_logits[t], model.head(h, model.embed),
                                   rtol=1e-5, atol=1e-6)
        gate = h @ model.layers.exit_gate.kernel[...] + model.layers.exit_gate.bias[...]
        np.testing.assert_allclose(out.intermediates["gate_logits"][t], gate, rtol=1e-5,
                                   atol=1e-6)
    assert out.loop_logits.shape == (3, 2, 10, 96) and out.exit_probs.shape == (2, 10, 3)


def _p64(z):
    """float64 reference: p_t = lambda_t prod_{j<t}(1 - lambda_j), last loop the rest, with
    1 - sigmoid(z) computed as sigmoid(-z) (exact in float64 for |z| <= 30)."""
    z = np.asarray(z, np.float64)
    lam, one_minus = 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z))
    surv = np.cumprod(one_minus, axis=-1)
    prev = np.concatenate([np.ones_like(surv[..., :1]), surv[..., :-1]], axis=-1)
    p = lam * prev
    p[..., -1] = prev[..., -1]
    return p, 1 - surv


def test_exit_probs_sum_to_one_against_float64_for_gate_logits_up_to_30():
    """p from float32 log space sums to 1 and matches a float64 reference for gate logits in
    [-30, 30] (random and the extremes), including masses far below float32's 1 - eps, which
    a float32 product of (1 - lambda) would round to 0."""
    z = np.concatenate([
        np.random.default_rng(0).uniform(-30, 30, (2000, 4)),
        np.array([[30.0] * 4, [-30.0] * 4, [30, -30, 30, -30], [-30, 30, -30, 30],
                  [0.0] * 4, [15, 15, -15, 0]])]).astype(np.float32)
    p = np.asarray(exit_probs(jnp.asarray(z)), np.float64)
    ref, _ = _p64(z)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p, ref, atol=1e-7)
    big = ref > 1e-30
    assert np.max(np.abs(p[big] - ref[big]) / ref[big]) < 1e-4
    # [30]*4: the survivors after loop 1 have mass e^-30, resolved relatively
    np.testing.assert_allclose(p[-6][1], np.exp(-30.0), rtol=1e-4)
    lp = np.asarray(exit_log_probs(jnp.asarray(z)))
    assert np.all(np.isfinite(lp))


def test_threshold_exit_steps_against_float64_cdf():
    """The threshold rule picks, per token, the first loop whose float64 CDF >= q (else the
    last), for several q; q = 1 is always the last loop."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (500, 4)).astype(np.float32)
    _, cdf = _p64(z)
    for q in (0.1, 0.3, 0.5, 0.77, 0.95):
        hit = cdf[:, :-1] >= q
        want = np.where(hit.any(-1), hit.argmax(-1), 3)
        margin = np.abs(cdf[:, :-1] - q).min(-1) > 1e-5  # skip float32 ties at the boundary
        got = np.asarray(threshold_exit_steps(jnp.asarray(z), q))
        np.testing.assert_array_equal(got[margin], want[margin])
    np.testing.assert_array_equal(np.asarray(threshold_exit_steps(jnp.full((3, 4), 30.0), 1.0)), 3)


def test_exit_rules_select_loops(model):
    """exit_at_step k returns loop k; threshold gathers per token the loop of exit_steps;
    weighted is sum_t p_t logits_t; the default (threshold 1.0) is the last loop; skipping the
    per-loop logits gives the same logits."""
    x = tokens()
    out = model(x)
    per = np.asarray(out.loop_logits)
    np.testing.assert_array_equal(np.asarray(out.logits), per[-1])
    np.testing.assert_array_equal(np.asarray(out.exit_steps), 2)
    for k in range(3):
        np.testing.assert_array_equal(np.asarray(model(x, exit_at_step=k).logits), per[k])
    o = model(x, exit_threshold=0.5)
    steps = np.asarray(o.exit_steps)
    assert len(np.unique(steps)) > 1
    want = np.take_along_axis(per, steps[None, ..., None], 0)[0]
    np.testing.assert_array_equal(np.asarray(o.logits), want)
    w = model(x, weighted_exit=True)
    p = np.asarray(w.exit_probs)
    np.testing.assert_allclose(w.logits, np.einsum("tbsv,bst->bsv", per, p), rtol=1e-5,
                               atol=1e-5)
    assert w.exit_steps is None
    for kw in ({}, {"exit_at_step": 1}, {"exit_threshold": 0.5}, {"weighted_exit": True}):
        lean = model(x, return_loop_logits=False, **kw)
        assert lean.loop_logits is None
        np.testing.assert_allclose(lean.logits, model(x, **kw).logits, rtol=1e-6, atol=1e-6)


def test_loops_override_extrapolates(model):
    """loops=T' runs the shared stack T' times; its first loops equal the default run's."""
    x = tokens()
    a, b = model(x), model(x, loops=5)
    assert b.loop_logits.shape[0] == 5 and b.exit_probs.shape == (2, 10, 5)
    np.testing.assert_allclose(b.loop_logits[:3], a.loop_logits, rtol=1e-6, atol=1e-6)


def test_cached_decoding_equals_full_forward(model):
    """Prefill + one-token decode with one KV cache per (loop, layer) equals the full forward
    at every loop count."""
    x = tokens()
    step = nnx.jit(lambda m, x, cache, loops: m(x, cache=cache, loops=loops),
                   static_argnames="loops")
    for loops in (1, 3):
        full = model(x, loops=loops)
        out = step(model, x[:, :7], model.init_cache(2, 12, loops=loops), loops)
        pieces, cache = [out.loop_logits], out.cache
        for t in range(7, 10):
            o = step(model, x[:, t:t + 1], cache, loops)
            pieces.append(o.loop_logits)
            cache = o.cache
        np.testing.assert_allclose(jnp.concatenate(pieces, 2), full.loop_logits, atol=2e-5)


def test_scan_and_remat_compose():
    """scan_layers=True and remat=True give the same per-loop logits and gradients as the
    unrolled, non-remat looped model with the same weights (one layer, two loops: the
    gradient compiles dominate this file's time)."""
    cfg = looped_cfg(loops=2).replace(n_layers=1)
    ref = make_lm(cfg)
    alt = make_lm(cfg.replace(scan_layers=True, remat=True))
    for b in range(1):  # same weights, stacked along "layers"
        nnx.update(ref.layers.body.blocks[b], jax.tree.map(
            lambda v: v[b], nnx.state(alt.layers.body)["stacked"]))
    x = tokens()

    def loss(m):
        o = m(x, weighted_exit=True)
        return jnp.mean(o.logits ** 2), o.loop_logits

    grad = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
    ((_, l_ref), g_ref), ((_, l_alt), g_alt) = grad(ref), grad(alt)
    np.testing.assert_allclose(l_alt, l_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(g_alt["layers"]["exit_gate"]["kernel"][...],
                               g_ref["layers"]["exit_gate"]["kernel"][...], rtol=1e-4, atol=1e-7)
    wq_ref = jnp.stack([b["attn"]["wq"][...] for b in g_ref["layers"]["body"]["blocks"].values()])
    np.testing.assert_allclose(g_alt["layers"]["body"]["stacked"]["attn"]["wq"][...], wq_ref,
                               rtol=1e-4, atol=1e-7)
    assert float(jnp.max(jnp.abs(g_ref["layers"]["exit_gate"]["kernel"][...]))) > 0


def test_composes_with_hyper_connections():
    """A looped stack with hyper-connections (stream reduced, normed and re-expanded between
    loops) runs and gives finite per-loop logits and a normalised exit distribution."""
    cfg = looped_cfg(loops=2).replace(connection="hyper", connection_kwargs={"rate": 2})
    out = make_lm(cfg)(tokens())
    assert out.loop_logits.shape == (2, 2, 10, 96)
    assert bool(jnp.all(jnp.isfinite(out.loop_logits)))
    np.testing.assert_allclose(out.exit_probs.sum(-1), 1.0, atol=1e-6)


def test_value_errors(model):
    """T < 1, exit_at_step outside [0, T), q outside (0, 1], loop keywords on a plain LM, a
    cache built for another loop count and bad stack kwargs raise ValueErrors naming them."""
    x = tokens()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="loops"):
            model(x, loops=bad)
    with pytest.raises(ValueError, match="stack_kwargs.loops"):
        abstract_lm(looped_cfg(loops=0))
    for k in (-1, 3, 1.0):
        with pytest.raises(ValueError, match=r"exit_at_step.*\[0, 3\)"):
            model(x, exit_at_step=k)
    with pytest.raises(ValueError, match=r"exit_at_step.*\[0, 5\)"):
        model(x, exit_at_step=5, loops=5)
    for q in (0, 0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"exit_threshold.*\(0, 1\]"):
            model(x, exit_threshold=q)
    with pytest.raises(ValueError, match=r"stack_kwargs.exit_threshold.*\(0, 1\]"):
        abstract_lm(looped_cfg(exit_threshold=0.0))
    with pytest.raises(ValueError, match="exit_rule"):
        abstract_lm(looped_cfg(exit_rule="first"))
    with pytest.raises(ValueError, match="model.stack_kwargs"):
        abstract_lm(looped_cfg(bogus=1))
    with pytest.raises(ValueError, match="model.stack="):
        abstract_lm(BASE.replace(stack="spiral"))
    plain = make_lm(BASE)
    with pytest.raises(ValueError, match="stack='looped'"):
        plain(x, loops=2)
    with pytest.raises(ValueError, match="stack='looped'"):
        plain(x, exit_threshold=0.5)
    with pytest.raises(ValueError, match="loop slots"):
        model(x, cache=model.init_cache(2, 12, loops=2))


def test_resolve_rule_priority():
    """exit_at_step > exit_threshold > weighted_exit > the config rule, as released."""
    cfg = looped_cfg().stack_kwargs
    from seedjax.nn.looped import LoopConfig
    c = LoopConfig(**cfg)
    assert resolve_rule(c, 3, exit_at_step=1, exit_threshold=0.5, weighted_exit=True) == ("step", 1)
    assert resolve_rule(c, 3, exit_threshold=0.5, weighted_exit=True) == ("threshold", 0.5)
    assert resolve_rule(c, 3, weighted_exit=True) == ("weighted", None)
    assert resolve_rule(c, 3) == ("threshold", 1.0)
    assert resolve_rule(LoopConfig(exit_rule="last"), 3) == ("last", None)
    assert resolve_rule(LoopConfig(exit_rule="weighted"), 3) == ("weighted", None)
    states = jnp.ones((2, 1, 3, 4))
    r = exit_readout(states, None, lambda h: h.sum(-1, keepdims=True), "threshold", 0.5)
    np.testing.assert_array_equal(np.asarray(r.exit_probs), [[[0, 1]] * 3])
