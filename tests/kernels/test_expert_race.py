"""kernels_pallas.expert_race: the Expert Race kernel against seedjax.nn.moe.racing.

Tier 1 (numerics, interpret mode): mask, kth, excess and counts equal the reference
(``racing.race_select``, method "top_k", and its "threshold" method) bit for bit, on tiny specs,
on edge cases (all-equal scores, +-inf, NaN selected only when K exceeds the non-NaN scores,
signed zeros, a crowded bucket of values equal to the K-th, K = N, K = 0) and on Hypothesis
draws of shapes, dtypes (f32, bf16, f16), data (continuous, duplicates, specials) and k; counts
are always the selection's per-expert histogram. NaN policy (racing.py): NaN ranks below -inf,
all NaNs equal, so with ties="index" NaNs fill the budget in index order after every non-NaN
score, and with ties="ge" all NaNs are selected only when the K-th value is NaN.
Tier 2 (lowering): jax.export for tpu at every production shape.
Tier 3 (TPU compile): libtpu AOT compile for v5e and v5p (skipped without libtpu).
"""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from jax import export

from kernels_pallas.expert_race import api, arg_specs, bench, config, tpu
from kernels_pallas.expert_race import reference as ref

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _race(impl, k, ties="index"):
    return jax.jit(lambda s: api.expert_race_select(s, k, ties=ties, implementation=impl))


def _assert_same(got, want, count=None):
    """Same mask, kth, excess and counts; counts == the histogram of the mask."""
    (mask, info), (rmask, rinfo) = got, want
    assert mask.dtype == jnp.bool_ and mask.shape == rmask.shape
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(rmask))
    for a, b, dt in ((info.kth, rinfo.kth, jnp.float32), (info.excess, rinfo.excess, jnp.int32),
                     (info.counts, rinfo.counts, jnp.int32)):
        assert a.dtype == dt and a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(info.counts), np.asarray(ref.expert_counts(mask)))
    if count is not None:
        assert int(jnp.sum(mask)) == count + int(info.excess)


def _check(scores, k, ties="index"):
    """interpret == racing top_k == racing threshold for one case."""
    scores = jnp.asarray(scores)
    want = _race("xla", k, ties)(scores)
    _assert_same(_race("interpret", k, ties)(scores), want,
                 count=scores.size // scores.shape[-1] * k)
    _assert_same(jax.jit(lambda s: ref.expert_race_reference(s, k, ties=ties,
                                                             method="threshold"))(scores), want)
    return want


# ----------------------------------------------------------------------- tier 1: fixed cases

@pytest.mark.parametrize("spec", [pytest.param(s, id=s.name,
                                               marks=[pytest.mark.slow] if i >= 2 else [])
                                  for i, s in enumerate(arg_specs.TINY)])
def test_interpret_matches_reference_on_tiny_specs(spec):
    """Continuous scores: E = 8, 6 (padded to 8), 16, 300 (padded to 384 lanes), f32 / bf16 /
    f16, both tie modes."""
    _check(spec.make(1), spec.k_per_token, spec.ties)


def _crowded(dtype="float32"):
    """A bucket of 60 scores equal to the K-th (1.0) around K: ties decide most of the mask."""
    x = np.zeros((4, 20, 8), np.float32)
    x.reshape(-1)[::3] = 1.0
    x.reshape(-1)[7::11] = 2.0
    return jnp.asarray(x, dtype)


_INF, _NAN = np.inf, np.nan
EDGE_CASES = {
    # every score equal: the first K by row-major index ("index"), everything ("ge")
    "all_equal": (np.full((3, 7, 5), 0.25, np.float32), 2, "index"),
    "all_equal_ge": (np.full((3, 7, 5), 0.25, np.float32), 2, "ge"),
    # +-inf and NaN; K = 20 exceeds the 18 non-NaN scores, so two NaNs are selected
    "inf_nan": (np.array([[_NAN, 1, -_INF, _NAN, _INF, 0], [_NAN, -_INF, _INF, 2, _NAN, -1],
                          [_INF, _NAN, -3, -_INF, 5, 0], [-2, -_INF, 4, _INF, 6, _NAN]],
                         np.float32)[None], 5, "index"),
    "nan_kth_ge": (np.array([[[_NAN, 1, _NAN], [2, _NAN, _NAN]]], np.float32), 2, "ge"),
    # -0.0 == +0.0: ties by index, not by sign
    "signed_zeros": (np.array([[[-0.0, 0.0, -0.0, 1.0], [0.0, -0.0, -1.0, 0.0]]], np.float32),
                     1, "index"),
    "crowded": (_crowded(), 3, "index"),
    "crowded_ge": (_crowded(), 3, "ge"),
    "crowded_bf16": (_crowded("bfloat16"), 3, "index"),
    # K = N: k_per_token = E selects everything, NaN included
    "k_equals_n": (np.array([[[_NAN, -_INF, 3.0], [0.0, _INF, -1.0]]], np.float32), 3,
                   "index"),
    "bf16_specials": (jnp.asarray([[[_NAN, 1, -_INF, 0.5], [_INF, -0.0, 0.0, _NAN]]],
                                  jnp.bfloat16), 2, "index"),
}
_FAST_EDGES = ("inf_nan", "crowded", "all_equal_ge", "bf16_specials")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in _FAST_EDGES
                                               else [pytest.mark.slow]) for n in EDGE_CASES])
def test_edge_cases(name):
    """Edge cases of the order and of the tie modes (see the module docstring)."""
    scores, k, ties = EDGE_CASES[name]
    mask, info = _check(scores, k, ties)
    if name == "inf_nan":                                     # 18 non-NaN + the 2 first NaNs
        flat = np.asarray(mask).reshape(-1)
        nan_idx = np.flatnonzero(np.isnan(np.asarray(scores).reshape(-1)))
        assert flat[nan_idx].tolist() == [True, True] + [False] * (len(nan_idx) - 2)
        assert np.isnan(float(info.kth))
    if name == "crowded":
        assert 0 < int(jnp.sum(mask & (_crowded() == 1))) < int(jnp.sum(_crowded() == 1))


@pytest.mark.parametrize("ties", ["index", "ge"])
def test_k_zero_selects_nothing(ties):
    """k_per_token = 0 (K = 0): empty mask, kth = +inf, counts 0, for every implementation
    (the kernel is not called: there is nothing to search)."""
    x = arg_specs.TINY[0].make(0)
    for impl in ("interpret", "xla"):
        mask, info = api.expert_race_select(x, 0, ties=ties, implementation=impl)
        assert not bool(jnp.any(mask)) and float(info.kth) == np.inf
        assert int(info.excess) == 0 and not bool(jnp.any(info.counts))


def test_selection_has_no_gradient():
    """Forward only: a loss through the mask (and kth) differentiates with the kernel exactly
    as with the reference (the mask is a constant, kth carries no gradient)."""
    x = arg_specs.TINY[0].make(3)

    def loss(impl):
        def f(s):
            mask, info = api.expert_race_select(s, 2, implementation=impl)
            return jnp.sum(jnp.where(mask, s, 0.0) ** 2) + info.kth
        return jax.jit(jax.value_and_grad(f))
    (v, g), (rv, rg) = loss("interpret")(x), loss("xla")(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(rg))
    assert float(v) == float(rv)


@pytest.mark.slow
def test_tpu_semantics_interpreter_finds_no_races_or_out_of_bounds_reads():
    """Under pltpu.InterpretParams (out-of-bounds reads raise, DMA races are detected) the
    double-buffered load matches the reference over several chunks."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    from jax.experimental.pallas import tpu as pltpu
    params = pltpu.InterpretParams(out_of_bounds_reads="raise", detect_races=True)
    x = jnp.asarray(np.random.default_rng(4).integers(-3, 4, size=(3, 50, 40)),
                    jnp.float32)             # 150 x 64 padded -> 3 chunks; ties -> index search
    mask, kth, excess, counts = tpu.expert_race_tpu(x, 450, tiles=config.INTERPRET_TILES,
                                                    interpret=params)
    _assert_same((mask, ref.RaceInfo(kth, excess, counts)), ref.expert_race_reference(x, 3))
    assert not ipc.races.races_found


def test_layout_pads_experts_and_rows():
    """E pads to a power of two <= 128 (lane l is expert l % E_pad) or to a multiple of 128;
    rows to whole chunks; the VMEM estimate is about 5 bytes per padded score."""
    lay = tpu.layout((3, 10, 6), 32)
    assert (lay.e_pad, lay.width, lay.valid, lay.rows, lay.chunk) == (8, 128, 240, 32, 32)
    lay = tpu.layout((5, 300), 32)
    assert (lay.e_pad, lay.width, lay.rows) == (384, 384, 32)
    lay = tpu.layout((128, 256, 128), 256)
    assert (lay.rows, lay.positions, lay.index_bits) == (32768, 4 * 2**20, 22)
    assert tpu.vmem_bytes(lay, 4) == 5 * 4 * 2**20 + 2 * 256 * 128 * 4 + 2 * 128 * 4


# -------------------------------------------------------------------- tier 1: fuzzing

def _fuzz_settings(n):
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


DATA = ("normal", "duplicates", "specials", "equal")


@st.composite
def race_cases(draw):
    """(shape, dtype, data kind, seed, k, ties): 2-d or 3-d shapes (up to 1200 tokens, i.e.
    several 32-row interpret chunks), E in 1..20 or > 128, k in {0, 1, E (K = N), any}."""
    e = draw(st.one_of(st.integers(1, 20), st.sampled_from([128, 130])))
    lead = draw(st.one_of(st.tuples(st.integers(1, 40)),
                          st.tuples(st.integers(1, 4), st.integers(1, 12)),
                          st.tuples(st.integers(1, 3), st.integers(100, 400))))   # > 1 chunk
    k = draw(st.one_of(st.sampled_from([0, 1, e]), st.integers(0, e)))
    return ((*lead, e), draw(st.sampled_from(["float32", "bfloat16", "float16"])),
            draw(st.sampled_from(DATA)), draw(st.integers(0, 2**16)), k,
            draw(st.sampled_from(["index", "ge"])))


def _fuzz_scores(shape, dtype, data, seed):
    rng = np.random.default_rng(seed)
    if data == "equal":
        x = np.full(shape, rng.choice([-1.5, 0.0, 3.0]), np.float32)
    elif data == "normal":
        x = rng.standard_normal(shape).astype(np.float32)
    else:                                   # small integers: duplicates everywhere
        x = rng.integers(-2, 3, size=shape).astype(np.float32)
        if data == "specials":
            pick = rng.random(shape) < 0.3
            x[pick] = rng.choice([np.inf, -np.inf, np.nan, -0.0], size=int(pick.sum()))
    return jnp.asarray(x, dtype)


def _fuzz(case):
    shape, dtype, data, seed, k, ties = case
    scores = _fuzz_scores(shape, dtype, data, seed)
    want = ref.expert_race_reference(scores, k, ties=ties)
    _assert_same(api.expert_race_select(scores, k, ties=ties, implementation="interpret"),
                 want, count=scores.size // shape[-1] * k)


@_fuzz_settings(3)
@given(race_cases())
@example(((2, 5, 7), "bfloat16", "specials", 11, 4, "index"))
@example(((2, 300, 5), "float32", "duplicates", 3, 2, "index"))       # 2 chunks, index search
def test_fuzz_interpret_matches_reference(case):
    """Drawn races: kernel (interpret) == racing.race_select."""
    _fuzz(case)


@pytest.mark.slow
@_fuzz_settings(80)
@given(race_cases())
def test_fuzz_interpret_matches_reference_many(case):
    """The same property over many more draws."""
    _fuzz(case)


# ----------------------------------------------------------------------------- API contract

def test_default_implementation_on_cpu_is_xla():
    """implementation=None resolves by backend; on CPU it is racing.py."""
    assert jax.default_backend() == "cpu"
    assert api.resolve_implementation(None) == "xla"
    x = arg_specs.TINY[0].make(0)
    _assert_same(api.expert_race_select(x, 2), ref.expert_race_reference(x, 2))


@pytest.mark.parametrize("call, match", [
    (lambda x: api.expert_race_select(x, 9), "k_per_token=9 must be an integer in"),
    (lambda x: api.expert_race_select(x, -1), "k_per_token=-1"),
    (lambda x: api.expert_race_select(x, 1.5), "k_per_token=1.5"),
    (lambda x: api.expert_race_select(x, 1, ties="gt"), "ties='gt' is not allowed"),
    (lambda x: api.expert_race_select(x, 1, implementation="cuda"),
     "implementation='cuda' is not allowed"),
    (lambda x: api.expert_race_select(x.astype(jnp.int32), 1),
     "scores dtype='int32' is not allowed"),
    (lambda x: api.expert_race_select(x.reshape(-1), 1), "must be \\[..., E\\] with >= 2 dims"),
    (lambda x: api.expert_race_select(x, 1, implementation="interpret", tiles=object()),
     "tiles=.* must be a config.TpuTiles"),
    (lambda x: api.expert_race_select(x, 1, implementation="interpret",
                                      tiles=config.TpuTiles(chunk_rows=32, max_scores=1000)),
     "more than tiles.max_scores=1000"),
    (lambda x: tpu.expert_race_tpu(x, 0, interpret=True), "count=0 must be an integer"),
])
def test_invalid_arguments_raise_clear_value_errors(call, match):
    """Bad k, ties, implementation, dtype, rank, tiles and kernel counts raise ValueError
    naming them."""
    with pytest.raises(ValueError, match=match):
        call(jnp.ones((2, 8, 8), jnp.float32))


def test_tile_config_validates():
    with pytest.raises(ValueError, match="chunk_rows=48"):
        config.TpuTiles(chunk_rows=48)
    assert config.tpu_tiles("TPU v5 lite") is config.TPU_TILES["v5e"]


# ----------------------------------------------------------------------- tier 2: lowering

@pytest.mark.parametrize("spec", arg_specs.PRODUCTION, ids=lambda s: s.name)
def test_tpu_kernel_exports_at_production_shapes(spec):
    """The whole entry point (padding, kernel, decoding) lowers for TPU at production tiles."""
    tiles = config.TPU_TILES["v5p"]
    f = lambda s: api.expert_race_select(s, spec.k_per_token, ties=spec.ties,   # noqa: E731
                                         implementation="pallas_tpu", tiles=tiles)
    exp = export.export(jax.jit(f), platforms=["tpu"])(spec.shape_struct())
    assert "tpu_custom_call" in exp.mlir_module()


# -------------------------------------------------------------------- tier 3: TPU compile

@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install 'jax[tpu]')")
@pytest.mark.parametrize("chip, sharded, name", [
    ("v5e", False, "b256_8in128_bf16"), ("v5p", False, "b128_8in128"),
    ("v5p", True, "b256_4in32_bf16")])
def test_tpu_aot_compile(chip, sharded, name):
    """Mosaic compiles the largest float32 and bfloat16 specs within each chip's VMEM limit
    (one chip, and inside shard_map over 4 chips); the full matrix is the slow report test."""
    mem = bench.compile_tpu(arg_specs.by_name(name), chip, sharded).memory_analysis()
    assert mem.output_size_in_bytes > 0


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_oversized_problem_fails_tpu_compile():
    """The VMEM budget is real: 32M float32 scores (160 MiB resident) do not compile on v5e
    when the max_scores guard is lifted (RESOURCE_EXHAUSTED / VMEM error from Mosaic)."""
    import dataclasses
    big = dataclasses.replace(config.TPU_TILES["v5e"], max_scores=2**31 - 1)
    spec = arg_specs.RaceSpec("too_big", (1024, 256, 128), 2)
    with pytest.raises(Exception, match="RESOURCE_EXHAUSTED(.|\n)*memory space vmem"):
        bench.compile_tpu(spec, "v5e", False, tiles=big)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_compile_report_all_specs(tmp_path):
    """Every production spec compiles on v5e, v5p and v6e (the report bench.py writes)."""
    page = bench.compile_report(str(tmp_path / "report.md"))
    assert "FAILS" not in page
