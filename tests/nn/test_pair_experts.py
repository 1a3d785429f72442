"""PairExperts (experts over selected (token, expert) pairs): every dispatch ("blocked",
"ragged_dot", "dense_masked") and both expert kinds equal an independent all-experts reference
for outputs and for gradients w.r.t. x, the pair weights and every parameter, on pairs from
each router of routing_rules and on hand-made edge cases (empty experts, all pairs on one
expert, tokens with zero or all experts, padding pairs holding garbage); the static bound's
drop count; expert parallel on 8 fake devices == unsharded (outputs, gradients, psum_scatter,
per-device capacity drops, the module option); parameters, bf16; config / call errors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType

from seedjax.nn.moe import PairExperts, PairExpertsConfig
from seedjax.nn.moe.expert_parallel import expert_parallel_pairs
from seedjax.nn.moe.pair_experts import pair_forward
from seedjax.nn.moe.routing_rules import (Pairs, expert_choice, expert_race, selected_pairs,
                                          token_choice)
from seedjax.nn.params import param_metadata

B, L, D, E, K, F = 2, 12, 16, 6, 2, 12
T, NP = B * L, B * L * K          # 24 tokens, static bound 48 pairs


def _module(kind="gelu_mlp", seed=0, **kw):
    m = PairExperts(PairExpertsConfig(D, kw.pop("n_experts", E), F, kind=kind, block_size=4,
                                      **kw), rngs=nnx.Rngs(seed))
    if kind == "gelu_mlp":   # nonzero biases, so their gradients and b2's per-pair sum count
        m.b1[...] = 0.3 * jax.random.normal(jax.random.key(seed + 7), m.b1.shape)
        m.b2[...] = 0.3 * jax.random.normal(jax.random.key(seed + 8), m.b2.shape)
    return m


_selected_pairs = jax.jit(selected_pairs, static_argnums=2)
_dense_masked = nnx.jit(lambda m, x, w: m.dense_masked(x, w))
_call = nnx.jit(lambda m, x, pairs: m(x, pairs))


def _pairs_from_mask(mask, weights, n_pairs=NP):
    return _selected_pairs(jnp.asarray(mask), jnp.asarray(weights, jnp.float32), n_pairs)


def _handmade() -> Pairs:
    """Token 0 on every expert, tokens 5..23 on none, experts 2 and 4 empty, 15 of 48 pairs
    valid; the padding pairs hold in-range garbage tokens/experts and nonzero weights."""
    rng = np.random.default_rng(3)
    mask = np.zeros((T, E), bool)
    mask[0, :] = True
    mask[1, [0, 5]] = mask[2, [1, 3]] = mask[3, [0, 1, 3, 5]] = mask[4, 5] = True
    mask[:, [2, 4]] &= np.arange(T)[:, None] == 0
    weights = np.where(mask, rng.standard_normal((T, E)), 0).astype(np.float32)
    p = _pairs_from_mask(mask, weights)
    n = int(p.valid.sum())
    pad = ~np.asarray(p.valid)
    return p._replace(token=jnp.where(pad, jnp.asarray(rng.integers(0, T, NP)), p.token),
                      expert=jnp.where(pad, jnp.asarray(rng.integers(0, E, NP)), p.expert),
                      weight=jnp.where(pad, 5.0, p.weight)), n


@jax.jit
def _routed(logits):
    """(mask, weights) of every router on logits [B, L, E] (one compile)."""
    routed = {"token_choice": token_choice(logits, K),
              "expert_choice_image": expert_choice(logits, K, per="image"),
              "expert_choice_batch": expert_choice(logits, K, per="batch"),
              "expert_race": expert_race(logits, K)[0]}   # identity gating: negative weights
    return {name: (r.mask, r.weights) for name, r in routed.items()}


@pytest.fixture(scope="module")
def cases() -> dict:
    """name -> (x [T, D], Pairs with P = 48) for every router and the edge cases."""
    x = jax.random.normal(jax.random.key(2), (T, D))
    routed = _routed(jax.random.normal(jax.random.key(1), (B, L, E)))
    out = {name: (x, _pairs_from_mask(*r)) for name, r in routed.items()}
    for name, (mask, _) in routed.items():
        assert int(mask.sum()) == NP, name          # exactly B L k, nothing cut
    one = np.zeros((T, E), bool)
    one[:, 3] = True                                  # every token on expert 3: 24 pairs + 24 pad
    out["all_on_one_expert"] = (x, _pairs_from_mask(one, np.where(one, 0.7, 0)))
    hand, n = _handmade()
    assert n == 15 and int(hand.group_sizes[2]) == int(hand.group_sizes[4]) == 1
    out["handmade_padding"] = (x, hand)
    return out


def _reference_ffn(kind, p, x):
    """Every expert on every token, from the formulas: [E, T, D]."""
    if kind == "swiglu":
        return jax.vmap(lambda g, u, dn: (jax.nn.silu(x @ g) * (x @ u)) @ dn)(
            p["w_gate"], p["w_up"], p["w_down"])
    hidden = jax.nn.gelu(jnp.einsum("td,edf->etf", x, p["w1"]) + p["b1"][:, None], approximate=True)
    return jnp.einsum("etf,efd->etd", hidden, p["w2"]) + p["b2"][:, None]


@functools.partial(jax.jit, static_argnums=0)
def _reference_grads(kind, params, x, weight, token, expert, valid, ct):
    def loss(params, x, weight):
        every = _reference_ffn(kind, params, x)
        picked = every[expert, token]                                    # [P, D]
        sel = jax.nn.one_hot(token, T) * jnp.where(valid, weight, 0)[:, None]   # [P, T]
        y = jnp.einsum("pt,pd->td", sel, picked)
        return jnp.sum(y * ct), y
    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(params, x, weight)


@functools.partial(jax.jit, static_argnums=0)
def _module_grads(graphdef, state, x, weight, rest, ct):
    def loss(state, x, weight):
        y = nnx.merge(graphdef, state)(x, Pairs(rest[0], rest[1], weight, rest[2], rest[3]))
        return jnp.sum(y * ct), y
    return jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(state, x, weight)


def _run_module(m, x, pairs, ct):
    graphdef, state = nnx.split(m)
    (_, y), (g_state, g_x, g_w) = _module_grads(
        graphdef, state, x, pairs.weight, (pairs.token, pairs.expert, pairs.valid,
                                           pairs.group_sizes), ct)
    return y, nnx.to_pure_dict(g_state), g_x, g_w


@pytest.mark.parametrize("kind", ["gelu_mlp", "swiglu"])
@pytest.mark.parametrize("dispatch", ["blocked", "blocked_sliced", "ragged_dot",
                                      "dense_masked"])
def test_dispatch_equals_reference_outputs_and_gradients(cases, kind, dispatch):
    """For each routing case: y, dy/dx, dy/d(pair weights) and every parameter's gradient ==
    the reference (all experts on all tokens, one-hot combine); padding pairs get zero weight
    gradient; dense_masked(x, weights [T, E]) gives the same y."""
    m = _module(kind, dispatch=dispatch)
    params = m.expert_params()
    ct = jax.random.normal(jax.random.key(4), (T, D))
    for name, (x, p) in cases.items():
        y, g_params, g_x, g_w = _run_module(m, x, p, ct)
        (_, ref_y), (r_params, r_x, r_w) = _reference_grads(
            kind, params, x, p.weight, p.token, p.expert, p.valid, ct)
        msg = f"{kind}/{dispatch}/{name}"
        assert y.shape == (T, D) and y.dtype == jnp.float32
        np.testing.assert_allclose(y, ref_y, atol=2e-5, rtol=1e-5, err_msg=msg)
        np.testing.assert_allclose(g_x, r_x, atol=2e-5, rtol=1e-4, err_msg=msg)
        np.testing.assert_allclose(g_w, r_w, atol=2e-5, rtol=1e-4, err_msg=msg)
        assert not np.any(np.asarray(g_w)[~np.asarray(p.valid)]), msg
        assert set(g_params) == set(params), msg
        for k in params:
            np.testing.assert_allclose(g_params[k], r_params[k], atol=2e-5, rtol=1e-4,
                                       err_msg=f"{msg}/{k}")
        if dispatch == "blocked":   # the dense masked API on the same selection
            dense = jnp.zeros((T, E)).at[p.token, p.expert].add(jnp.where(p.valid, p.weight, 0))
            np.testing.assert_allclose(_dense_masked(m, x, dense), ref_y, atol=2e-5, err_msg=msg)
    zero_tokens = np.setdiff1d(np.arange(T), np.asarray(cases["handmade_padding"][1].token[:15]))
    y, *_ = _run_module(m, *cases["handmade_padding"], ct)
    assert zero_tokens.size == 19 and not np.any(np.asarray(y)[zero_tokens])


def test_select_bound_and_drop_count():
    """P = min(T E, ceil(c T k)); a "ge" race with ties selects more than T k: with c = 1 the
    excess is dropped and counted (the kept pairs are the first in (expert, token) order),
    with c = 2 nothing is dropped and the layer equals dense_masked on the full mask, router
    logits' gradient included; zero pairs give y = 0."""
    m1 = _module(capacity_factor=1.0)
    m2 = _module(capacity_factor=2.0)
    assert (m1.config.n_pairs(T, K), m2.config.n_pairs(T, K), m2.config.n_pairs(T, 4),
            m1.config.n_pairs(0, 1)) == (48, 96, 144, 0)

    @nnx.jit
    def run(m1, m2, logits, x):
        r, _ = expert_race(logits, K, ties="ge")
        s1, s2 = m1.select(r.mask, r.weights, K), m2.select(r.mask, r.weights, K)
        kept = jnp.zeros((T, E)).at[s1.pairs.token, s1.pairs.expert].add(
            s1.pairs.valid.astype(jnp.float32)).reshape(B, L, E)
        # router gradient through select's weight gather == through the dense weights
        ct = jnp.cos(x)
        sparse = lambda lg: jnp.sum(m2(x, m2.select(*expert_race(lg, K, ties="ge")[0][2:4],
                                                    K).pairs) * ct)
        dense = lambda lg: jnp.sum(m2.dense_masked(x, expert_race(lg, K, ties="ge")[0].weights)
                                   * ct)
        return (r.mask.sum(), s1, s2, m1(x, s1.pairs), m1.dense_masked(x, r.weights * kept),
                m2(x, s2.pairs), m2.dense_masked(x, r.weights),
                m1(x, selected_pairs(r.mask, r.weights, 0)),
                jax.grad(sparse)(logits), jax.grad(dense)(logits))

    logits = jnp.round(2 * jax.random.normal(jax.random.key(5), (B, L, E))) / 2   # many ties
    x = jax.random.normal(jax.random.key(2), (B, L, D))
    selected, s1, s2, y1, ref1, y2, ref2, y0, g_sparse, g_dense = run(m1, m2, logits, x)
    assert int(selected) > NP
    assert s1.pairs.token.shape == (48,) and s2.pairs.token.shape == (96,)
    assert int(s1.dropped) == int(selected) - NP and int(s2.dropped) == 0
    assert int(s1.pairs.valid.sum()) == NP == int(s1.pairs.group_sizes.sum())
    np.testing.assert_allclose(y1, ref1, atol=2e-5)
    np.testing.assert_allclose(y2, ref2, atol=2e-5)
    assert y0.shape == (B, L, D) and not np.any(np.asarray(y0))     # zero pairs: y = 0
    assert np.count_nonzero(np.asarray(g_dense)) == int(selected)   # only selected logits
    np.testing.assert_allclose(g_sparse, g_dense, atol=2e-5)


def _ep_setup():
    mesh = jax.make_mesh((8,), ("expert",), axis_types=(AxisType.Auto,))
    m = _module(n_experts=16)
    logits = jax.random.normal(jax.random.key(6), (B, L, 16))
    logits = logits.at[..., :2].add(1.5)     # experts 0, 1 (device 0) take most pairs
    pairs = nnx.jit(lambda m, lg: m.select(*expert_race(lg, K)[0][2:4], K).pairs)(m, logits)
    return mesh, m, pairs


def test_expert_parallel_equals_unsharded():
    """Experts 16 over mesh axis "expert" of 8 devices (2 each), inside shard_map: y and the
    gradients w.r.t. x, pair weights and parameters == the unsharded module; combine by
    psum_scatter gives y sharded by tokens; the config option expert_axis routes __call__ through
    it under jax.set_mesh; a per-device capacity drops (and counts) the pairs past it, and y
    equals the unsharded layer with exactly those pairs invalid."""
    mesh, m, pairs = _ep_setup()
    x = jax.random.normal(jax.random.key(2), (T, D))
    ct = jax.random.normal(jax.random.key(4), (T, D))
    params = m.expert_params()
    forward = lambda p, xx, pr: pair_forward(m.config, p, xx, pr, jnp.float32)

    def loss(params, x, weight, cap, combine):
        y, dropped = expert_parallel_pairs(forward, params, x, pairs._replace(weight=weight),
                                           mesh=mesh, capacity_factor=cap, combine=combine)
        return jnp.sum(y * ct), (y, dropped)

    def ref_loss(params, x, weight, valid):
        y = forward(params, x, pairs._replace(weight=weight, valid=valid))
        return jnp.sum(y * ct), y

    grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True),
                    static_argnums=(3, 4))
    ref = jax.jit(jax.value_and_grad(ref_loss, argnums=(0, 1, 2), has_aux=True))
    (_, ref_y), ref_g = ref(params, x, pairs.weight, pairs.valid)
    opt = _module(n_experts=16, expert_axis="expert", expert_capacity_factor=1.0)

    @nnx.jit
    def forwards(m, opt, x):
        sc = m.expert_parallel(x, pairs, combine="psum_scatter")[0]
        return sc, m.expert_parallel(x, pairs, capacity_factor=1.0), opt(x, pairs,
                                                                         return_dropped=True)

    with jax.set_mesh(mesh):
        (_, (y, dropped)), g = grads(params, x, pairs.weight, None, "psum")
        y_sc, (y_cap, dropped_cap), (y_opt, dropped_opt) = forwards(m, opt, x)
    assert int(dropped) == 0
    np.testing.assert_allclose(y, ref_y, atol=2e-5)
    np.testing.assert_allclose(y_sc, ref_y, atol=2e-5)
    assert y_sc.sharding.spec[0] == "expert"
    for a, b, name in zip(jax.tree.leaves(g), jax.tree.leaves(ref_g),
                          ["b1", "b2", "w1", "w2", "x", "weight"]):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4, err_msg=name)
    # capacity 1.0: C = 48 / 8 = 6 pairs per device; device 0 (experts 0, 1) overflows
    sizes = np.asarray(pairs.group_sizes).reshape(8, 2).sum(1)
    assert sizes[0] > 6 and int(dropped_cap) == int(np.maximum(sizes - 6, 0).sum())
    valid = np.asarray(pairs.valid).copy()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    for s in range(8):
        valid[starts[s] + 6:starts[s] + sizes[s]] = False
    (_, ref_cap), _ = ref(params, x, pairs.weight, jnp.asarray(valid))
    np.testing.assert_allclose(y_cap, ref_cap, atol=2e-5)
    np.testing.assert_allclose(y_opt, ref_cap, atol=2e-5)    # same init (seed 0), same capacity
    assert int(dropped_opt) == int(dropped_cap)


def test_parameters_bf16_and_module_api():
    """Documented shapes, logical axes and decay labels; bf16 compute stays close to float32
    with a float32 output; x [B, L, D] in gives y [B, L, D]."""
    g = _module()
    axes = param_metadata(g, "out_sharding")
    assert axes == {"w1": ("expert", "embed", "mlp"), "b1": ("expert", "mlp"),
                    "w2": ("expert", "mlp", "embed"), "b2": ("expert", "embed")}
    assert param_metadata(g, "weight_decay") == {"w1": True, "b1": False, "w2": True,
                                                 "b2": False}
    assert {k: v.shape for k, v in g.expert_params().items()} == {
        "w1": (E, D, F), "b1": (E, F), "w2": (E, F, D), "b2": (E, D)}
    s = _module("swiglu")
    assert param_metadata(s, "out_sharding") == {"w_gate": ("expert", "embed", "mlp"),
                                                 "w_up": ("expert", "embed", "mlp"),
                                                 "w_down": ("expert", "mlp", "embed")}
    nobias = PairExperts(PairExpertsConfig(D, E, F, use_bias=False), rngs=nnx.Rngs(0))
    assert set(nobias.expert_params()) == {"w1", "w2"}
    assert PairExpertsConfig(D, E, F).flops_per_pair() == 4 * D * F
    assert PairExpertsConfig(D, E, F, kind="swiglu").flops_per_pair() == 6 * D * F
    logits = jax.random.normal(jax.random.key(1), (B, L, E))
    pairs = _pairs_from_mask(*_routed(logits)["expert_race"])
    x = jax.random.normal(jax.random.key(2), (B, L, D))
    bf = PairExperts(g.config, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    nnx.update(bf, nnx.state(g))
    y32, y16 = _call(g, x, pairs), _call(bf, x.astype(jnp.bfloat16), pairs)
    assert y32.shape == y16.shape == (B, L, D) and y16.dtype == jnp.float32
    np.testing.assert_allclose(y16, y32, atol=0.1)


def test_errors_name_the_field():
    with pytest.raises(ValueError, match=r"PairExpertsConfig.capacity_factor=0.5 must be a "
                                         r"finite number >= 1"):
        PairExpertsConfig(D, E, F, capacity_factor=0.5)
    with pytest.raises(ValueError, match=r"PairExpertsConfig.kind='relu'.*'gelu_mlp', 'swiglu'"):
        PairExpertsConfig(D, E, F, kind="relu")
    with pytest.raises(ValueError, match=r"PairExpertsConfig.dispatch='megablox'.*"
                                         r"'blocked', 'blocked_sliced', 'ragged_dot', 'dense_masked'"):
        PairExpertsConfig(D, E, F, dispatch="megablox")
    with pytest.raises(ValueError, match="PairExpertsConfig.use_bias=True is for kind"):
        PairExpertsConfig(D, E, F, kind="swiglu", use_bias=True)
    with pytest.raises(ValueError, match="PairExpertsConfig.expert_capacity_factor=0.9"):
        PairExpertsConfig(D, E, F, expert_capacity_factor=0.9)
    with pytest.raises(ValueError, match="PairExpertsConfig.hidden_dim=0 must be an integer"):
        PairExpertsConfig(D, E, 0)
    with pytest.raises(ValueError, match=r"top_k=7 must be an integer in \[1, n_experts=6\]"):
        PairExpertsConfig(D, E, F).n_pairs(T, 7)
    m = _module()
    pairs = Pairs(np.zeros(NP, np.int32), np.zeros(NP, np.int32), np.zeros(NP, np.float32),
                  np.zeros(NP, bool), np.zeros(E, np.int32))
    with pytest.raises(ValueError, match=r"input shape \(24, 8\) must be \[..., d_model=16\]"):
        m(jnp.zeros((T, 8)), pairs)
    with pytest.raises(ValueError, match="group_sizes shape"):
        m(jnp.zeros((T, D)), pairs._replace(group_sizes=jnp.zeros(5, jnp.int32)))
    with pytest.raises(ValueError, match=r"weights shape \(24, 5\) must be \(24, 6\)"):
        m.dense_masked(jnp.zeros((T, D)), jnp.zeros((T, 5)))
    mesh = jax.make_mesh((8,), ("expert",), axis_types=(AxisType.Auto,))
    x = jnp.zeros((T, D))
    with pytest.raises(ValueError, match=r"combine='gather' is not allowed; allowed: "
                                         r"\('psum', 'psum_scatter'\)"):
        m.expert_parallel(x, pairs, mesh=mesh, combine="gather")
    with pytest.raises(ValueError, match="n_experts=6 is not divisible by the 8 devices"):
        m.expert_parallel(x, pairs, mesh=mesh)
    with pytest.raises(ValueError, match="expert axis 'model' is not an axis of the mesh"):
        m.expert_parallel(x, pairs, mesh=mesh, axis="model")
    with pytest.raises(ValueError, match="capacity_factor=0.5 must be a finite number >= 1"):
        m.expert_parallel(x, pairs, mesh=mesh, capacity_factor=0.5)
    m16 = _module(n_experts=16)
    p16 = pairs._replace(group_sizes=np.zeros(16, np.int32))
    with pytest.raises(ValueError, match=r"psum_scatter' needs T=4 divisible by the 8"):
        m16.expert_parallel(jnp.zeros((4, D)), p16, mesh=mesh, combine="psum_scatter")
    with pytest.raises(ValueError, match="no mesh"):
        m16.expert_parallel(jnp.zeros((4, D)), p16)
