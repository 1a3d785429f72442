"""Expert Race routing core (seedjax.nn.moe.racing / routing_rules / routing_stats): exact
top-K selection == a NumPy stable-sort reference (random, duplicate-heavy, all-equal, +-inf,
NaN, K = 0, K = N; float32 and bfloat16; hypothesis), the counting ("threshold") formulation
== lax.top_k, "ge" excess on ties, shard_map races == unsharded, the EMA threshold (training
only, identical over 8 ranks, batch-independent at inference), routers (token choice ==
Router, expert-choice capacity, race gating), selected pairs, router similarity loss, load
statistics and config errors."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from seedjax.nn.moe import MoEConfig, Router
from seedjax.nn.moe import routing_rules as rr
from seedjax.nn.moe import routing_stats as rs
from seedjax.nn.moe.racing import (METHODS, TIES, RaceThreshold, RouterStat, key_to_score,
                                   kth_largest, race_select, sortable_key, top_count_mask)

_top_count = jax.jit(top_count_mask, static_argnames=("count", "axes", "ties", "method"))
_race = jax.jit(race_select, static_argnames=("k_per_token", "ties", "method"))
_rules = {"token_choice": jax.jit(rr.token_choice, static_argnums=1,
                                  static_argnames=("gating", "normalize")),
          "expert_choice": jax.jit(rr.expert_choice, static_argnums=1,
                                   static_argnames=("gating", "per", "capacity_factor")),
          "expert_race": jax.jit(rr.expert_race, static_argnums=1, static_argnames="gating")}
SPECIAL = [np.nan, -np.inf, np.inf, -0.0, 0.0, -1.0, 0.5, 0.5, 1.0, 2.0]


def _ref_select(x, count, ties):
    """NumPy reference for one group x [n]: stable sort on (NaN last, -x, index).
    Returns (mask [n], kth)."""
    x = np.asarray(x, np.float32)
    nan = np.isnan(x)
    order = np.lexsort((np.arange(x.size), -np.where(nan, 0, x), nan))
    mask = np.zeros(x.size, bool)
    if count == 0:
        return mask, np.inf
    kth = x[order[count - 1]]
    if ties == "index":
        mask[order[:count]] = True
    else:
        mask = np.ones(x.size, bool) if np.isnan(kth) else x >= kth
    return mask, kth


def _same(a, b):
    return np.array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32), equal_nan=True)


def _groups(rng, n=20):
    """Rows of one [G, n] float32 array, each a regime."""
    rows = [rng.standard_normal(n) for _ in range(4)]
    rows += [rng.choice([-1.0, 0.0, 0.5, 2.0], n) for _ in range(4)]       # duplicate-heavy
    rows += [np.ones(n), rng.choice([-0.0, 0.0], n)]                      # all equal
    rows += [rng.choice(SPECIAL, n) for _ in range(4)]                     # NaN, +-inf, +-0
    rows += [np.full(n, np.nan), rng.choice([np.inf, -np.inf], n)]
    few = np.full(n, np.nan)
    few[rng.choice(n, 3, replace=False)] = rng.standard_normal(3)
    rows += [few]                                                          # 3 non-NaN
    return np.stack(rows).astype(np.float32)


# --- selection ---------------------------------------------------------------------------

def test_sortable_key_orders_specials_and_round_trips():
    ordered = [np.nan, -np.inf, -3e38, -1.0, -1e-30, 0.0, 1e-30, 1.0, 3e38, np.inf]
    for dtype in (jnp.float32, jnp.bfloat16, jnp.float16):
        vals = [v for v in ordered if not np.isfinite(v) or abs(v) < 6e4 or dtype != jnp.float16]
        if dtype == jnp.float16:
            vals = [v for v in vals if v == 0 or not np.isfinite(v) or abs(v) > 1e-4]
        x = jnp.asarray(vals + [-0.0, 0.0], dtype)
        k, back = jax.jit(lambda x: (lambda k: (k, key_to_score(k, x.dtype)))(sortable_key(x)))(x)
        k = np.asarray(k)
        assert k.dtype == np.int32 and np.all(np.diff(k[:-2]) > 0), (dtype, k)
        assert _same(back, x) and k[-2] == k[-1] == 0


@pytest.mark.parametrize("dtype,counts", [(jnp.float32, (1, 7)), (jnp.bfloat16, (7,))])
def test_group_selection_matches_numpy_reference(dtype, counts):
    """Each row of [G, 20] is a group (random / duplicates / all equal / specials / all NaN /
    3 non-NaN); every method x ties x count == the stable-sort reference, kth and excess too."""
    x = jnp.asarray(_groups(np.random.default_rng(0)), dtype)
    xf = np.asarray(x.astype(jnp.float32))
    for count in counts:
        refs = [_ref_select(row, count, t) for t in TIES for row in xf]
        for method in METHODS:
            for i, ties in enumerate(TIES):
                mask, kth, excess = map(np.asarray, _top_count(x, count=count, axes=(1,),
                                                               ties=ties, method=method))
                for g, row in enumerate(xf):
                    ref_mask, ref_kth = refs[i * len(xf) + g]
                    assert np.array_equal(mask[g], ref_mask), (method, ties, count, g, row)
                    assert _same(kth[g], ref_kth)
                    assert excess[g] == ref_mask.sum() - count
                if ties == "index":
                    assert np.all(mask.sum(1) == count)


def test_k_zero_and_k_equal_n():
    x = jnp.asarray(_groups(np.random.default_rng(1), n=4)[None], jnp.float32)   # [1, 17, 4]
    for method in METHODS:
        mask, info = jax.device_get(_race(x, k_per_token=0, method=method))
        assert not mask.any() and info.kth == np.inf and info.counts.sum() == 0
        mask, info = jax.device_get(_race(x, k_per_token=4, method=method))
        assert mask.all() and np.array_equal(info.counts, [17] * 4)
        assert np.isnan(info.kth)   # the lowest ranked entry is a NaN


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.one_of(st.sampled_from(SPECIAL),
                                 st.floats(-4, 4, width=32, allow_subnormal=False)),
                       min_size=24, max_size=24),
       k=st.sampled_from([1, 3]))
def test_race_select_hypothesis(values, k):
    x = jnp.asarray(np.asarray(values, np.float32).reshape(2, 3, 4))
    flat = np.asarray(x).reshape(-1)
    for ties in TIES:
        ref, ref_kth = _ref_select(flat, 6 * k, ties)
        for method in METHODS:
            mask, info = jax.device_get(_race(x, k_per_token=k, ties=ties, method=method))
            assert np.array_equal(mask.reshape(-1), ref), (ties, method)
            assert _same(info.kth, ref_kth)
            assert int(info.excess) == ref.sum() - 6 * k
            assert np.array_equal(info.counts, mask.sum((0, 1)))


def test_ge_reports_excess_on_tied_kth():
    x = jnp.asarray([[[5.0, 3.0, 1.0, 3.0], [0.0, 3.0, -1.0, 2.0]]])   # K = 2 tokens x 1
    for method in METHODS:
        mask, info = jax.device_get(_race(x, k_per_token=1, ties="index", method=method))
        assert np.array_equal(np.flatnonzero(mask), [0, 1]) and info.excess == 0
        mask, info = jax.device_get(_race(x, k_per_token=1, ties="ge", method=method))
        assert np.array_equal(np.flatnonzero(mask), [0, 1, 3, 5])
        assert info.excess == 2 and info.kth == 3.0
        assert np.array_equal(info.counts, [1, 2, 0, 1])


def test_threshold_formulation_on_crowded_values():
    """4096 scores sharing their top bits (1 + j ulp, many repeats): the bitwise counting
    search == lax.top_k == the sort reference, and kth_largest == the sorted value."""
    rng = np.random.default_rng(2)
    x = (1.0 + rng.integers(0, 64, 4096) * np.finfo(np.float32).eps).astype(np.float32)
    x[rng.choice(4096, 40, replace=False)] = np.nan
    xj = jnp.asarray(x.reshape(4, 32, 32))
    ref, ref_kth = _ref_select(x, 1000, "index")
    a = jax.device_get(_top_count(xj, count=1000, axes=(0, 1, 2), method="threshold"))
    b = jax.device_get(_top_count(xj, count=1000, axes=(0, 1, 2), method="top_k"))
    assert np.array_equal(a[0].reshape(-1), ref)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] == ref_kth
    kth = jax.jit(lambda x: (kth_largest(x, 1000), kth_largest(x, 4096 - 3)))(xj)
    assert kth[0] == np.sort(x[~np.isnan(x)])[::-1][999] and np.isnan(kth[1])


def _mesh():
    return jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))


def test_sharded_race_equals_unsharded():
    """A race over 8 shards (axis_name) selects exactly the unsharded global top-K."""
    mesh = _mesh()
    x = np.round(np.random.default_rng(3).standard_normal((16, 5, 4)), 1).astype(np.float32)
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    for method, ties in (("threshold", "index"), ("top_k", "ge")):
        ref, info = jax.device_get(_race(jnp.asarray(x), k_per_token=2, ties=ties,
                                         method=method))

        def local(s):
            mask, i = race_select(s, 2, ties=ties, method=method, axis_name="data")
            return mask, i.kth[None], i.excess[None]

        f = jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=(P("data"),) * 3)
        mask, kth, excess = jax.device_get(jax.jit(f)(xs))
        assert np.array_equal(mask, ref), (method, ties)
        assert np.all(kth == info.kth) and np.all(excess == info.excess)


# --- EMA threshold -----------------------------------------------------------------------

@nnx.jit(static_argnums=2)
def _thr_call(thr, x, k):
    return thr(x, k)


def test_threshold_updates_only_in_training():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 8, 4)), jnp.float32)
    thr = RaceThreshold(decay=0.9, init=1.0)
    mask, info = jax.device_get(_thr_call(thr, x, 2))
    ref, _ = _ref_select(np.asarray(x).reshape(-1), 32, "index")
    assert np.array_equal(mask.reshape(-1), ref)
    tau1 = np.asarray(thr.tau[...])
    assert np.isclose(tau1, 0.9 * 1.0 + 0.1 * float(info.kth), rtol=1e-6)
    thr.eval()
    assert thr.use_running_average
    mask, info = jax.device_get(_thr_call(thr, x, 2))
    assert thr.tau[...] == tau1
    assert np.array_equal(mask, np.asarray(x) > tau1)
    assert info.excess == mask.sum() - 32 and info.kth == tau1
    thr.train()
    _thr_call(thr, x, 0)                                  # K = 0: kth = +inf, tau kept
    assert thr.tau[...] == tau1
    _thr_call(thr, jnp.full_like(x, jnp.nan), 2)          # NaN kth: tau kept
    assert thr.tau[...] == tau1
    # optimizer / trainer view: tau is not a Param
    assert not jax.tree.leaves(nnx.state(thr, nnx.Param))
    assert isinstance(thr.tau, RouterStat) and isinstance(thr.tau, nnx.BatchStat)


def test_threshold_identical_across_8_ranks():
    """3 training steps inside shard_map over 8 ranks: with sync_axes every rank holds the
    same tau (local races + mean of kth, or one global race == the unsharded module); without,
    the ranks drift apart."""
    mesh = _mesh()
    xs = [np.random.default_rng(10 + i).standard_normal((16, 4, 4)).astype(np.float32)
          for i in range(3)]
    xs_sharded = [jax.device_put(x, NamedSharding(mesh, P("data"))) for x in xs]

    def run(**kw):
        graphdef, state = nnx.split(RaceThreshold(**kw))

        def step(state, x):
            m = nnx.merge(graphdef, state)
            m(x, 2)
            return m.tau[...][None]

        f = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")),
                                  out_specs=P("data")))
        for x in xs_sharded:
            taus = np.asarray(f(state, x))
            state["tau"][...] = jnp.asarray(taus[0])
        return taus

    local = run(sync_axes="data", sync_race=False)
    assert np.all(local == local[0])
    glob = run(sync_axes="data", sync_race=True)
    single = RaceThreshold()
    for x in xs:
        _thr_call(single, jnp.asarray(x), 2)
    assert np.all(glob == glob[0]) and np.isclose(glob[0], single.tau[...], rtol=1e-6)
    unsynced = run()
    assert np.unique(unsynced).size > 1


def test_inference_routing_is_independent_of_the_batch():
    z = jnp.asarray(np.random.default_rng(5).standard_normal((4, 6, 8)), jnp.float32)
    thr = RaceThreshold(init=0.8, use_running_average=True)
    route = nnx.jit(lambda thr, z: rr.expert_race(z, 2, threshold=thr)[0].mask)
    batch = np.asarray(route(thr, z))
    for b in range(4):
        assert np.array_equal(route(thr, z[b:b + 1])[0], batch[b])
    race = _rules["expert_race"]
    train_alone, train_batch = race(z[:1], 2)[0].mask, race(z, 2)[0].mask
    assert not np.array_equal(train_alone[0], train_batch[0])  # the race does depend on it


# --- routers -----------------------------------------------------------------------------

def test_token_choice_matches_router():
    c = MoEConfig(d_model=8, n_experts=6, top_k=2, router_score="sigmoid")
    router = Router(c, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(6).standard_normal((3, 5, 8)), jnp.float32)
    r = jax.device_get(nnx.jit(lambda m, x: m(x))(router, x.reshape(-1, 8)))
    out = jax.device_get(_rules["token_choice"](jnp.asarray(r.logits).reshape(3, 5, 6), 2,
                                                gating="sigmoid", normalize=True))
    t = np.arange(15)[:, None]
    assert out.mask.reshape(15, 6)[t, r.experts].all() and np.all(out.mask.sum(-1) == 2)
    np.testing.assert_allclose(out.weights.reshape(15, 6)[t, r.experts], r.weights, rtol=1e-6)
    assert np.array_equal(out.counts, np.bincount(r.experts.reshape(-1), None, 6))
    ident = jax.device_get(_rules["token_choice"](jnp.asarray(r.logits), 2, gating="identity"))
    np.testing.assert_allclose(ident.weights[ident.mask], r.logits[ident.mask])


@pytest.mark.parametrize("per,cf", [("image", 1.0), ("batch", 1.5)])
def test_expert_choice_respects_capacity(per, cf):
    b, l, e, k = 3, 8, 4, 2
    z = np.round(np.random.default_rng(7).standard_normal((b, l, e)), 1).astype(np.float32)
    out = jax.device_get(_rules["expert_choice"](jnp.asarray(z), k, per=per,
                                                 capacity_factor=cf))
    m = out.mask
    s = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    if per == "image":
        cap = l * k // e
        assert np.all(m.sum(1) == cap)
        for i in range(b):
            for j in range(e):
                assert np.array_equal(m[i, :, j], _ref_select(out.scores[i, :, j], cap,
                                                              "index")[0])
    else:
        cap = math.ceil(cf * b * l * k / e)
        assert np.all(m.sum((0, 1)) == cap) and np.array_equal(out.counts, [cap] * e)
        for j in range(e):
            assert np.array_equal(m[..., j].reshape(-1),
                                  _ref_select(out.scores[..., j].reshape(-1), cap, "index")[0])
    np.testing.assert_allclose(out.scores, s, rtol=1e-5)
    assert np.array_equal(out.weights, np.where(m, out.scores, 0))


@pytest.mark.parametrize("gating", rr.GATINGS)
def test_expert_race_gates_before_the_global_top_k(gating):
    z = np.random.default_rng(8).standard_normal((2, 6, 4)).astype(np.float32)
    out, info = jax.device_get(_rules["expert_race"](jnp.asarray(z), 2, gating=gating))
    s = {"identity": z, "sigmoid": 1 / (1 + np.exp(-z)),
         "softmax": np.exp(z) / np.exp(z).sum(-1, keepdims=True)}[gating]
    np.testing.assert_allclose(out.scores, s, rtol=1e-5)
    ref, _ = _ref_select(out.scores.reshape(-1), 24, "index")
    assert np.array_equal(out.mask.reshape(-1), ref) and out.mask.sum() == 24
    assert np.array_equal(out.weights, np.where(out.mask, out.scores, 0))
    assert np.array_equal(out.counts, info.counts)


def test_selected_pairs_are_expert_sorted():
    mask = np.zeros((2, 3, 4), bool)
    mask[0, 0, [1, 3]] = mask[0, 2, 1] = mask[1, 1, [0, 1, 2, 3]] = True
    w = np.where(mask, np.arange(24, dtype=np.float32).reshape(2, 3, 4), 0)
    pairs = jax.jit(rr.selected_pairs, static_argnums=2)
    p = jax.device_get(pairs(jnp.asarray(mask), jnp.asarray(w), 9))
    assert np.array_equal(p.expert[:7], [0, 1, 1, 1, 2, 3, 3])
    assert np.array_equal(p.token[:7], [4, 0, 2, 4, 4, 0, 4])
    assert np.array_equal(p.weight[:7], [16, 1, 9, 17, 18, 3, 19])
    assert np.array_equal(p.valid, [True] * 7 + [False] * 2) and np.all(p.weight[7:] == 0)
    assert np.array_equal(p.group_sizes, mask.reshape(-1, 4).sum(0))
    short = pairs(jnp.asarray(mask), jnp.asarray(w), 3)
    assert np.array_equal(short.group_sizes, [1, 2, 0, 0])


def test_route_dispatches_every_router():
    z = jnp.asarray(np.random.default_rng(9).standard_normal((2, 8, 4)), jnp.float32)

    @functools.partial(jax.jit, static_argnums=0)
    def route(config, z):
        out, info = rr.route(config, z)
        return out.mask.sum(), info is not None

    for router in rr.ROUTERS:
        n, has_info = route(rr.RoutingConfig(router=router, n_experts=4, top_k=2), z)
        assert n == 32 and has_info == (router == "expert_race")


@pytest.mark.parametrize("kwargs,field", [
    (dict(router="switch"), "RoutingConfig.router"),
    (dict(gating="relu"), "RoutingConfig.gating"),
    (dict(top_k=9), "RoutingConfig.top_k"),
    (dict(top_k=0), "RoutingConfig.top_k"),
    (dict(capacity_factor=0.5), "RoutingConfig.capacity_factor"),
    (dict(ties="gt"), "RoutingConfig.ties"),
    (dict(method="approx"), "RoutingConfig.method"),
    (dict(router="token_choice", gating="identity", normalize=True), "RoutingConfig.normalize"),
])
def test_bad_config_raises_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")) as e:
        rr.RoutingConfig(**{"n_experts": 8, "top_k": 2, **kwargs})
    if "router" in kwargs and kwargs["router"] == "switch":
        assert "expert_race" in str(e.value)     # names the allowed values
    if "gating" in kwargs and kwargs["gating"] == "relu":
        assert "identity" in str(e.value)


def test_bad_arguments_raise():
    z = jnp.zeros((1, 4, 4))
    with pytest.raises(ValueError, match="top_k"):
        rr.expert_race(z, 5)
    with pytest.raises(ValueError, match="gating"):
        rr.token_choice(z, 1, gating="tanh")
    with pytest.raises(ValueError, match="capacity_factor"):
        rr.expert_choice(z, 1, capacity_factor=0.9)
    with pytest.raises(ValueError, match="ties"):
        race_select(z, 1, ties="gt")
    with pytest.raises(ValueError, match="k_per_token"):
        race_select(z, 5)
    with pytest.raises(ValueError, match="dtype"):
        race_select(jnp.zeros((1, 4, 4), jnp.int32), 1)
    with pytest.raises(ValueError, match="RaceThreshold.decay"):
        RaceThreshold(decay=1.0)


# --- router similarity loss and load statistics ------------------------------------------

def _rsl_reference(z, m):
    z, m = np.asarray(z, np.float64).reshape(-1, z.shape[-1]), np.asarray(m, np.float64)
    m = m.reshape(-1, z.shape[-1])
    e = z.shape[1]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    m2 = m.T @ m
    off = ~np.eye(e, dtype=bool)
    w = np.where(off, (e * e - e) * m2 / m2[off].sum(), e * m2 / np.trace(m2))
    return (w * (p.T @ p)).sum() / z.shape[0]


def test_router_similarity_loss():
    z = jnp.asarray(np.random.default_rng(11).standard_normal((3, 6, 4)), jnp.float32)
    pairs = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    uniform = np.zeros((6, 4), bool)       # every expert pair once, every expert 3 times
    for t, (i, j) in enumerate(pairs):
        uniform[t, [i, j]] = True

    @jax.jit
    def run(z, uniform):
        mask = rr.expert_race(z, 2)[0].mask
        loss, grad = jax.value_and_grad(rs.router_similarity_loss)(z, mask)
        u_loss, u_grad = jax.value_and_grad(rs.router_similarity_loss)(z.reshape(-1, 4)[:6],
                                                                       uniform)
        return (mask, loss, grad, u_loss, u_grad,
                rs.router_similarity_loss(z, jnp.zeros(z.shape, bool)))

    mask, loss, grad, u_loss, u_grad, empty = jax.device_get(run(z, jnp.asarray(uniform)))
    np.testing.assert_allclose(loss, _rsl_reference(z, mask), rtol=1e-5)
    assert np.abs(grad).max() > 0
    assert np.isclose(u_loss, 1.0, atol=1e-6) and np.abs(u_grad).max() < 1e-6   # W = 1
    assert empty == 0


def test_load_statistics():
    mask = np.zeros((5, 4), bool)                  # 5 tokens, 4 experts
    mask[0, [0, 1]] = mask[1, [0, 1]] = mask[2, [0, 2]] = mask[3, 0] = True

    @jax.jit
    def stats(m):
        return (rs.expert_load(m), rs.max_violation(m), rs.experts_per_token_histogram(m),
                rs.combination_usage(m), rs.combination_usage(m, mass=0.5),
                rs.routing_stats(m), rs.pair_counts(m))

    load, vio, hist, comb, comb50, summary, m2 = jax.device_get(stats(jnp.asarray(mask)))
    np.testing.assert_allclose(load, [4 / 7, 2 / 7, 1 / 7, 0], rtol=1e-6)
    assert np.isclose(vio, (4 - 7 / 4) / (7 / 4))
    assert np.array_equal(hist, [1, 1, 3, 0, 0])
    # co-activations: (0,1) x2, (0,2) x1 -> 2 of the 6 pairs hold >= 95%, 1 holds >= 50%
    assert np.isclose(comb, 2 / 6) and np.isclose(comb50, 1 / 6)
    assert np.isclose(summary["experts_per_token"], 7 / 5)
    assert np.isclose(summary["tokens_without_expert"], 1 / 5)
    assert np.array_equal(m2.diagonal(), mask.sum(0)) and m2[0, 1] == 2 and m2[1, 2] == 0
    empty = jax.device_get(stats(jnp.zeros((5, 4), bool)))
    assert empty[1] == 0 and empty[3] == 0 and np.all(empty[0] == 0)
