"""kernels_pallas.pk_retrieval: fused product-key retrieval (PKM and TDQKR/MCS).

Tier 1 (numerics, interpret mode): the Mosaic kernel and the Triton kernel vs reference.py,
indices exact and scores allclose, over tiny specs, exact-tie data and a seeded sweep; VJP of
the custom-VJP entry points vs autodiff of the reference.
Tier 2 (lowering): jax.export for tpu (Mosaic) and cuda (Triton) at the production shapes.
Tier 3 (TPU compile): libtpu AOT compile for v5e and v5p, one chip and shard_map over 4 chips.
"""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from kernels_pallas.pk_retrieval import api, arg_specs, bench, config, gpu, tpu
from kernels_pallas.pk_retrieval import reference as ref

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
TRITON_OK = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]


def _pk(impl, **kw):
    return jax.jit(lambda *a: api.product_key_topk(*a, **kw, implementation=impl))


def _tk(impl, **kw):
    return jax.jit(lambda *a: api.tucker_topk(*a, **kw, implementation=impl))


def _assert_same(got, want, atol=1e-5):
    (s, i), (rs, ri) = got, want
    assert s.shape == rs.shape and i.shape == ri.shape, (s.shape, rs.shape, i.shape, ri.shape)
    assert i.dtype == jnp.int32 and s.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))
    scale = max(1.0, float(jnp.max(jnp.abs(rs))))
    np.testing.assert_allclose(np.asarray(s), np.asarray(rs), rtol=1e-5, atol=atol * scale)


# ----------------------------------------------------------------------- tier 1: forward

def _slow_first(specs, n_slow=1):
    """Params with the first ``n_slow`` marked slow (covered elsewhere in the default suite)."""
    return [pytest.param(s, id=s.name, marks=[pytest.mark.slow] if i < n_slow else [])
            for i, s in enumerate(specs)]


@pytest.mark.parametrize("spec", _slow_first(arg_specs.TINY_PK))
def test_pk_interpret_matches_reference_on_tiny_specs(spec):
    """PKM kernel == reference (indices exact), incl. leading dims, topk == k_s^2, k_s == n,
    bf16 inputs."""
    args = spec.make(1)
    _assert_same(_pk("interpret", **spec.kwargs())(*args), _pk("xla", **spec.kwargs())(*args))


@pytest.mark.parametrize("spec", _slow_first(arg_specs.TINY_TUCKER))
def test_tucker_interpret_matches_reference_on_tiny_specs(spec):
    """TDQKR kernel == reference: per-core scores and indices, incl. r = 3, h_c = 1, 'abs'
    pre-selection, topk == k_s^2, k_s == n, bf16 inputs."""
    args = spec.make(2)
    _assert_same(_tk("interpret", **spec.kwargs())(*args), _tk("xla", **spec.kwargs())(*args))


def _tie_data(rng, shape, low=-2, high=2):
    return rng.integers(low, high + 1, size=shape).astype(np.float32)


@pytest.mark.parametrize("dtype", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow)])
def test_pk_ties_break_like_lax_top_k(dtype):
    """Small-integer queries and duplicated sub-key rows make exact ties everywhere (all sums
    are exact): the kernel must pick the lowest sub-key index per side and the
    lexicographically smallest rank pair in the grid, exactly as the reference."""
    rng = np.random.default_rng(3)
    heads, n, d, ks, topk = 2, 12, 4, 5, 7
    k1, k2 = (_tie_data(rng, (heads, n, d)) for _ in range(2))
    k1[:, 6:] = k1[:, :6]                                      # duplicated sub-keys
    k2[:, 1::2] = k2[:, 0::2]
    q1, q2 = (_tie_data(rng, (16, heads, d)) for _ in range(2))
    args = [jnp.asarray(x, dtype) for x in (q1, q2, k1, k2)]
    want = _pk("xla", topk_side=ks, topk=topk)(*args)
    s = np.asarray(want[0])
    assert (np.diff(s, axis=-1) == 0).sum() > 50, "the data should contain many exact ties"
    _assert_same(_pk("interpret", topk_side=ks, topk=topk)(*args), want)


def test_all_equal_scores_give_lexicographic_indices():
    """Zero queries tie every slot: both kernels return flat indices a * n + b in lax.top_k
    order, i.e. 0, 1, ..., topk - 1 for topk <= k_s (row a = 0 first)."""
    heads, n, d, ks, topk = 2, 9, 8, 6, 6
    q = jnp.zeros((5, heads, d), jnp.float32)
    k = jnp.asarray(np.random.default_rng(0).normal(size=(heads, n, d)), jnp.float32)
    for s, i in (_pk("interpret", topk_side=ks, topk=topk)(q, q, k, k),
                 _pk("xla", topk_side=ks, topk=topk)(q, q, k, k)):
        np.testing.assert_array_equal(np.asarray(i), np.broadcast_to(np.arange(topk), i.shape))
        assert float(jnp.max(jnp.abs(s))) == 0.0
    qt = jnp.zeros((5, heads, 2, d), jnp.float32)
    kt = jnp.asarray(np.random.default_rng(1).normal(size=(heads, n, 2, d)), jnp.float32)
    cores = jnp.ones((2, heads, 2, 2), jnp.float32)
    _, i = _tk("interpret", topk_side=ks, topk=topk)(qt, qt, kt, kt, cores)
    np.testing.assert_array_equal(np.asarray(i), np.broadcast_to(np.arange(topk), i.shape))


@pytest.mark.parametrize("preselect", ["top", pytest.param("abs", marks=pytest.mark.slow)])
def test_tucker_ties_break_like_lax_top_k(preselect):
    """TDQKR with integer queries/keys/cores, duplicated keys and dyadic (u, t): every score is
    exact, so the side and grid tie rules are compared exactly."""
    rng = np.random.default_rng(4)
    heads, n, r, dk, hc, ks, topk = 1, 10, 2, 3, 2, 5, 9
    kr, kc = (_tie_data(rng, (heads, n, r, dk), -1, 1) for _ in range(2))
    kr[:, 5:] = kr[:, :5]
    qr, qc = (_tie_data(rng, (12, heads, r, dk), -1, 1) for _ in range(2))
    cores = rng.integers(0, 3, size=(hc, heads, r, r)).astype(np.float32)
    rank1 = (jnp.asarray([[1.0, 0.5]]), jnp.asarray([[0.5, -1.0]]))
    args = [jnp.asarray(x) for x in (qr, qc, kr, kc, cores)]
    kw = dict(topk_side=ks, topk=topk, preselect=preselect)
    want = jax.jit(lambda *a: api.tucker_topk(*a, **kw, rank1=rank1, implementation="xla"))(*args)
    got = jax.jit(lambda *a: api.tucker_topk(*a, **kw, rank1=rank1,
                                             implementation="interpret"))(*args)
    assert (np.diff(np.asarray(want[0]).sum(-1), axis=-1) == 0).sum() > 10
    _assert_same(got, want)


def _random_pk_spec(seed):
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(3, 40))
    ks = int(rng.integers(1, min(n, 9) + 1))
    topk = int(rng.choice([1, ks, ks * ks, int(rng.integers(1, ks * ks + 1))]))
    return arg_specs.PKSpec(f"pk_rand{seed}", (int(rng.integers(1, 30)),),
                            heads=int(rng.integers(1, 4)), n=n,
                            half_dim=int(rng.choice([4, 8, 24])), topk_side=ks, topk=topk,
                            dtype=str(rng.choice(["float32", "bfloat16"])))


def _random_tucker_spec(seed):
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(3, 30))
    ks = int(rng.integers(1, min(n, 9) + 1))
    topk = int(rng.choice([1, ks, ks * ks, int(rng.integers(1, ks * ks + 1))]))
    return arg_specs.TuckerSpec(f"tk_rand{seed}", (int(rng.integers(1, 20)),),
                                heads=int(rng.integers(1, 3)), n=n, rank=int(rng.integers(1, 4)),
                                dk=int(rng.choice([4, 8, 12])), n_cores=int(rng.integers(1, 4)),
                                topk_side=ks, topk=topk,
                                dtype=str(rng.choice(["float32", "bfloat16"])),
                                preselect=str(rng.choice(["top", "abs"])))


@pytest.mark.parametrize("seed", [0] + [pytest.param(s, marks=pytest.mark.slow)
                                        for s in range(1, 8)])
def test_random_shapes_sweep(seed):
    """Seeded random small shapes (k_s from 1 to 9, topk in {1, k_s, k_s^2, random}, both
    dtypes, r and h_c in 1..3): kernel == reference for PKM and TDQKR."""
    spec = _random_pk_spec(seed)
    args = spec.make(seed)
    _assert_same(_pk("interpret", **spec.kwargs())(*args), _pk("xla", **spec.kwargs())(*args))
    spec = _random_tucker_spec(seed)
    args = spec.make(seed)
    _assert_same(_tk("interpret", **spec.kwargs())(*args), _tk("xla", **spec.kwargs())(*args))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_random_shapes_vjp(seed):
    """Seeded random small shapes: custom VJP == reference autodiff for PKM and TDQKR."""
    for spec, call in ((_random_pk_spec(seed), api.product_key_topk),
                       (_random_tucker_spec(seed), api.tucker_topk)):
        args = spec.make(seed)
        f = lambda impl, spec=spec, call=call: (
            lambda *a: call(*a, **spec.kwargs(), implementation=impl))
        _assert_grads_close(jax.jit(lambda *a: _vjp(f("interpret"), a, seed))(*args),
                            jax.jit(lambda *a: _vjp(f("xla"), a, seed))(*args), spec.dtype)


@pytest.mark.slow
def test_tpu_semantics_interpreter_finds_no_races_or_out_of_bounds_reads():
    """Under pltpu.InterpretParams (TPU-semantics simulator: out-of-bounds reads raise, races
    are detected) both kernels run and match the reference on a tiny shape."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    from jax.experimental.pallas import tpu as pltpu
    params = pltpu.InterpretParams(out_of_bounds_reads="raise", detect_races=True)
    spec = arg_specs.PKSpec("pk_sim", (5,), heads=1, n=20, half_dim=8, topk_side=3, topk=4)
    args = spec.make(0)
    got = tpu.product_key_topk_tpu(*args, **spec.kwargs(), tiles=config.INTERPRET_TILES,
                                   interpret=params)
    _assert_same(got, ref.product_key_topk_reference(*args, **spec.kwargs()))
    spec = arg_specs.TuckerSpec("tk_sim", (5,), heads=1, n=20, rank=2, dk=8, n_cores=2,
                                topk_side=3, topk=4)
    args = spec.make(0)
    u, t = ref.tucker_rank1(args[4])
    got = tpu.tucker_topk_tpu(*args, u, t, **spec.kwargs(), tiles=config.INTERPRET_TILES,
                              interpret=params)
    _assert_same(got, ref.tucker_topk_reference(*args, **spec.kwargs()))
    assert not ipc.races.races_found


def test_reference_matches_seedjax_ops():
    """reference.py is an independent restatement of the op contracts in seedjax.ops."""
    from seedjax.ops.product_keys import product_key_topk as sj_pk
    from seedjax.ops.tucker_keys import tucker_topk as sj_tk
    spec = arg_specs.TINY_PK[1]
    args = spec.make(5)
    _assert_same(ref.product_key_topk_reference(*args, **spec.kwargs()),
                 sj_pk(*args, **spec.kwargs()))
    spec = arg_specs.TINY_TUCKER[1]
    args = spec.make(5)
    _assert_same(ref.tucker_topk_reference(*args, **spec.kwargs()),
                 sj_tk(*args, **spec.kwargs()))


def test_gpu_kernel_interpret_matches_reference():
    """Triton kernel (interpret mode) == reference; n = 150 spans two 128-row sub-key chunks,
    so the running top-k merge across chunks is exercised."""
    spec = arg_specs.PKSpec("pk_gpu", (19,), heads=2, n=150, half_dim=8, topk_side=6, topk=9)
    args = spec.make(7)
    got = jax.jit(lambda *a: gpu.product_key_topk_gpu(*a, **spec.kwargs(), interpret=True))(*args)
    _assert_same(got, _pk("xla", **spec.kwargs())(*args))
    spec = arg_specs.TuckerSpec("tk_gpu", (11,), heads=1, n=140, rank=2, dk=8, n_cores=2,
                                topk_side=5, topk=7, preselect="abs")
    args = spec.make(8)
    u, t = ref.tucker_rank1(args[4])
    got = jax.jit(lambda *a: gpu.tucker_topk_gpu(*a, u, t, **spec.kwargs(), interpret=True))(*args)
    _assert_same(got, _tk("xla", **spec.kwargs())(*args))


# ----------------------------------------------------------------------------- tier 1: VJP

def _vjp(fn, args, seed):
    out, pull = jax.vjp(lambda *a: fn(*a)[0], *args)
    g = jnp.asarray(np.random.default_rng(seed).normal(size=out.shape), out.dtype)
    return pull(g)


def _assert_grads_close(got, want, dtype):
    tol = 2e-2 if dtype == "bfloat16" else 1e-5
    for a, b in zip(got, want):
        assert a.dtype == b.dtype
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("spec", [
    pytest.param(arg_specs.TINY_PK[1], id="pk_tiny_lead"),
    pytest.param(arg_specs.TINY_PK[4], id="pk_tiny_bf16", marks=pytest.mark.slow)])
def test_pk_vjp_matches_reference(spec):
    """Custom VJP (rescore from indices) == autodiff of the reference w.r.t. q1, q2, k1, k2."""
    args = spec.make(9)
    f = lambda impl: (lambda *a: api.product_key_topk(*a, **spec.kwargs(), implementation=impl))
    _assert_grads_close(jax.jit(lambda *a: _vjp(f("interpret"), a, 0))(*args),
                        jax.jit(lambda *a: _vjp(f("xla"), a, 0))(*args), spec.dtype)


@pytest.mark.parametrize("spec", [
    pytest.param(arg_specs.TINY_TUCKER[0], id="tk_tiny", marks=pytest.mark.slow),
    pytest.param(arg_specs.TINY_TUCKER[5], id="tk_tiny_bf16")])
def test_tucker_vjp_matches_reference(spec):
    """Custom VJP == reference autodiff w.r.t. queries, keys and cores (per-core scores)."""
    args = spec.make(10)
    f = lambda impl: (lambda *a: api.tucker_topk(*a, **spec.kwargs(), implementation=impl))
    _assert_grads_close(jax.jit(lambda *a: _vjp(f("interpret"), a, 1))(*args),
                        jax.jit(lambda *a: _vjp(f("xla"), a, 1))(*args), spec.dtype)


# ----------------------------------------------------------------------------- API contract

def test_default_implementation_on_cpu_is_xla():
    """implementation=None resolves by backend; on CPU it is the XLA reference."""
    assert jax.default_backend() == "cpu"
    assert api.resolve_implementation("f", None) == "xla"
    spec = arg_specs.TINY_PK[0]
    args = spec.make(0)
    _assert_same(api.product_key_topk(*args, **spec.kwargs()),
                 ref.product_key_topk_reference(*args, **spec.kwargs()))


@pytest.mark.parametrize("call, match", [
    (lambda q, k, c: api.product_key_topk(q, q, k, k, topk_side=3, topk=4, implementation="cuda"),
     "implementation='cuda' is unknown"),
    (lambda q, k, c: api.product_key_topk(q, q, k, k, topk_side=9, topk=4), "topk_side=9 exceeds"),
    (lambda q, k, c: api.product_key_topk(q, q, k, k, topk_side=2, topk=5), "topk=5 exceeds"),
    (lambda q, k, c: api.product_key_topk(q, q, k, k, topk_side=0, topk=1), "topk_side=0"),
    (lambda q, k, c: api.product_key_topk(q, q[..., :3], k, k, topk_side=2, topk=2),
     "q1 shape"),
    (lambda q, k, c: api.product_key_topk(q[..., :3], q[..., :3], k, k, topk_side=2, topk=2),
     "half-queries must be"),
    (lambda q, k, c: api.product_key_topk(q.astype(jnp.int32), q.astype(jnp.int32), k, k,
                                          topk_side=2, topk=2), "floating dtype"),
    (lambda q, k, c: api.product_key_topk(q, q, k, k, topk_side=2, topk=2,
                                          implementation="interpret",
                                          tiles=config.GpuTiles()), "must be a TpuTiles"),
    (lambda q, k, c: api.tucker_topk(q[:, :, None], q[:, :, None], k[:, :, None], k[:, :, None],
                                     c, topk_side=2, topk=2), "cores must be"),
    (lambda q, k, c: api.tucker_topk(q[:, :, None], q[:, :, None], k[:, :, None], k[:, :, None],
                                     c[:, :, :1, :1], topk_side=2, topk=2, preselect="max"),
     "preselect='max'"),
    (lambda q, k, c: api.tucker_topk(q[:, :, None], q[:, :, None], k[:, :, None], k[:, :, None],
                                     c[:, :, :1, :1], topk_side=2, topk=2,
                                     rank1=(jnp.ones((2, 2)), jnp.ones((2, 2)))), "rank1 must"),
])
def test_invalid_arguments_raise_clear_value_errors(call, match):
    """Bad shapes, sizes, dtypes, options and tiles raise ValueError naming the field."""
    q = jnp.ones((3, 2, 4))
    k = jnp.ones((2, 8, 4))
    c = jnp.ones((2, 2, 2, 2))
    with pytest.raises(ValueError, match=match):
        call(q, k, c)


def test_tile_configs_validate_and_map_chips():
    """Tile dataclasses reject layouts Mosaic / Triton cannot use; device kinds map to chips."""
    with pytest.raises(ValueError, match="token_tile"):
        config.TpuTiles(token_tile=64)
    with pytest.raises(ValueError, match="token_block"):
        config.GpuTiles(token_block=24)
    assert config.chip_name("TPU v5 lite") == "v5e"
    assert config.chip_name("TPU v5") == "v5p"
    assert config.chip_name("TPU v6 lite") == "v6e"


def test_pkm_candidate_pruning_keeps_every_possible_winner():
    """The pruned PKM grid keeps exactly the cells with (a + 1)(b + 1) <= topk (capped at k_s)."""
    for ks, topk in ((32, 32), (5, 25), (7, 3), (80, 80)):
        blocks, rows = tpu.pk_candidate_blocks(ks, topk)
        cells = {(a, b) for a, m, _, _ in blocks for b in range(m)}
        want = {(a, b) for a in range(ks) for b in range(ks) if (a + 1) * (b + 1) <= topk}
        assert cells == want
        assert rows == sum(m8 for _, _, m8, _ in blocks) and rows % 8 == 0


# ----------------------------------------------------------------------- tier 2: lowering

def _tpu_forward(spec):
    tiles = config.TPU_TILES["v5e"]
    if isinstance(spec, arg_specs.PKSpec):
        return ((lambda *a: tpu.product_key_topk_tpu(*a, **spec.kwargs(), tiles=tiles)),
                spec.shapes())
    vec = jax.ShapeDtypeStruct((spec.heads, spec.rank), jnp.float32)
    return ((lambda *a: tpu.tucker_topk_tpu(*a, **spec.kwargs(), tiles=tiles)),
            (*spec.shapes(), vec, vec))


@pytest.mark.parametrize("spec", arg_specs.PRODUCTION_PK + arg_specs.PRODUCTION_TUCKER,
                         ids=lambda s: s.name)
def test_tpu_kernel_exports_at_production_shapes(spec):
    """The Mosaic kernel lowers for TPU (block-shape rules, primitives) at production tiles."""
    f, shapes = _tpu_forward(spec)
    exp = export.export(jax.jit(f), platforms=["tpu"])(*shapes)
    assert "tpu_custom_call" in exp.mlir_module()


def test_differentiable_api_exports_for_tpu():
    """value_and_grad through the custom VJP (kernel forward, gather-based backward) lowers for
    TPU at a production PKM and TDQKR shape."""
    tiles = config.TPU_TILES["v5p"]
    pk = arg_specs.PRODUCTION_PK[0]

    def pk_loss(*a):
        s, _ = api.product_key_topk(*a, **pk.kwargs(), implementation="pallas_tpu", tiles=tiles)
        return jnp.sum(s)
    export.export(jax.jit(jax.value_and_grad(pk_loss, argnums=(0, 1, 2, 3))),
                  platforms=["tpu"])(*pk.shapes())
    tk = arg_specs.PRODUCTION_TUCKER[0]

    def tk_loss(*a):
        s, _ = api.tucker_topk(*a, **tk.kwargs(), implementation="pallas_tpu", tiles=tiles)
        return jnp.sum(s)
    export.export(jax.jit(jax.value_and_grad(tk_loss, argnums=(0, 1, 2, 3, 4))),
                  platforms=["tpu"])(*tk.shapes())


@pytest.mark.parametrize("spec", arg_specs.PRODUCTION_PK + arg_specs.PRODUCTION_TUCKER,
                         ids=lambda s: s.name)
def test_gpu_kernel_exports_for_cuda_at_production_shapes(spec):
    """The Triton kernel lowers for CUDA (Triton IR; the Triton compiler itself is not run)."""
    if isinstance(spec, arg_specs.PKSpec):
        f, shapes = (lambda *a: gpu.product_key_topk_gpu(*a, **spec.kwargs())), spec.shapes()
    else:
        vec = jax.ShapeDtypeStruct((spec.heads, spec.rank), jnp.float32)
        f = lambda *a: gpu.tucker_topk_gpu(*a, **spec.kwargs())
        shapes = (*spec.shapes(), vec, vec)
    exp = export.export(jax.jit(f), platforms=["cuda"], disabled_checks=TRITON_OK)(*shapes)
    assert "triton" in exp.mlir_module()


# -------------------------------------------------------------------- tier 3: TPU compile

@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install 'jax[tpu]')")
@pytest.mark.parametrize("chip, sharded, spec", [
    ("v5e", False, arg_specs.PRODUCTION_TUCKER[3]), ("v5e", True, arg_specs.PRODUCTION_PK[1]),
    ("v5p", False, arg_specs.PRODUCTION_PK[1]), ("v5p", True, arg_specs.PRODUCTION_TUCKER[3])],
    ids=["v5e-1chip-tdqkr", "v5e-shard_map4-pkm", "v5p-1chip-pkm", "v5p-shard_map4-tdqkr"])
def test_tpu_aot_compile(chip, sharded, spec):
    """Mosaic compiles (layouts, bf16 tiling, VMEM within the chip's limit) the largest PKM
    and TDQKR production specs on each chip, on one chip and inside shard_map over 4 chips
    with tokens sharded (the full matrix is the slow report test)."""
    mem = bench.compile_tpu(spec, chip, sharded).memory_analysis()
    assert mem.output_size_in_bytes > 0


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_compile_report_all_specs(tmp_path):
    """Every production spec compiles on v5e and v5p (the report bench.py writes)."""
    page = bench.compile_report(str(tmp_path / "report.md"))
    assert "FAILS" not in page
