"""kernels_pallas.embedding_bag across the evidence tiers of DESIGN.md ("Kernels"):
1 numerics (interpret mode vs reference.py, forward and VJP; the DMA pipeline under the TPU
simulator with race and out-of-bounds detection), 2 lowering (jax.export for tpu / cuda at
production tiles), 3 TPU AOT compile with libtpu (skipped without it), 4 hardware (TPU only)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels_pallas.embedding_bag import api, arg_specs, bench, gpu, reference, tpu
from kernels_pallas.embedding_bag.arg_specs import SPECS, ArgSpec
from kernels_pallas.embedding_bag.config import (GPU_TILES, TPU_TILES, TpuTiles,
                                                 chip_of_device_kind, gpu_tiles, tpu_tiles)

TOL = {"float32": 2e-5, "bfloat16": 2e-2}


def _fwd_vjp(spec: ArgSpec, args: dict, impl: str, *, upcast: bool = False, **kw):
    """jit -> (output, grads of the differentiable args) for a fixed random cotangent.
    ``upcast`` runs on float32 copies of the float arguments (the reference for bf16)."""
    dn = bench.diff_names(spec)
    if upcast:
        args = {n: v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating) else v
                for n, v in args.items()}

    def f(d):
        out, vjp = jax.vjp(
            lambda d: arg_specs.call(spec, {**args, **d}, implementation=impl, **kw), d)
        ct = jax.random.normal(jax.random.key(7), out.shape, jnp.float32).astype(out.dtype)
        return out, vjp(ct)[0]
    return jax.jit(f)({n: args[n] for n in dn})


def _assert_close(got, want, dtype: str, what: str):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    tol = TOL[dtype]
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=what)


def _check_against_reference(spec: ArgSpec, args: dict, **kw):
    out_k, g_k = _fwd_vjp(spec, args, "interpret", **kw)
    out_r, g_r = _fwd_vjp(spec, args, "xla", upcast=True)
    ref_dtype = jnp.float32 if spec.op == "row_dot" else jnp.dtype(spec.dtype)
    assert out_k.dtype == ref_dtype
    _assert_close(out_k, out_r, spec.dtype, f"{spec.name} forward")
    for n in g_r:
        assert g_k[n].dtype == args[n].dtype, n
        _assert_close(g_k[n], g_r[n], spec.dtype, f"{spec.name} d_{n}")


# ------------------------------------------------------------------------- tier 1: numerics

@pytest.mark.parametrize("name", arg_specs.TINY)
def test_tiny_specs_forward_and_vjp_match_reference(name):
    """Kernel forward and custom VJP (interpret=True) equal jax.grad of reference.py, with
    duplicate indices, out-of-range (pad) indices and zero weights in the arguments."""
    spec = SPECS[name]
    _check_against_reference(spec, spec.make(seed=1))


@pytest.mark.parametrize("seed, dtype, slices, dim", [
    (0, "float32", 2, 256), (1, "bfloat16", 0, 128), (2, "bfloat16", 3, 384),
    (3, "float32", 1, 384)])
def test_random_small_shapes_match_reference(seed, dtype, slices, dim):
    """A randomized sweep of small shapes (N, T, K, G and the pad share drawn from a fixed
    seed; dtype, S and Dv pinned per case so both dtypes and slices straddling the packed bf16
    halves are covered): forward and VJP equal the reference."""
    rng = np.random.default_rng(100 + seed)
    spec = ArgSpec(f"sweep{seed}", "bag", n_rows=int(rng.integers(3, 80)), dim=dim,
                   tokens=int(rng.integers(1, 14)), k=int(rng.integers(1, 20)), slices=slices,
                   groups=int(rng.choice([0, 2, 3, 4])), dtype=dtype)
    args = spec.make(seed, pad_frac=float(rng.uniform(0, 0.5)), dup_frac=0.5, zero_frac=0.2)
    _check_against_reference(spec, args)


def test_all_pad_and_single_row_bags():
    """Every index out of range -> zero output and zero gradients; K copies of one row ->
    output = (sum of weights) * row and that row's gradient gets all K contributions."""
    spec = ArgSpec("edge", "bag", 16, 128, 4, 8)
    args = spec.make(0)
    pads = dict(args, indices=jnp.full((4, 8), 16, jnp.int32).at[:, ::2].set(-1))
    out, g = _fwd_vjp(spec, pads, "interpret")
    assert not np.any(np.asarray(out)) and not np.any(np.asarray(g["values"]))
    assert not np.any(np.asarray(g["weights"]))
    same = dict(args, indices=jnp.full((4, 8), 5, jnp.int32))
    _check_against_reference(spec, same)
    out = api.embedding_bag(same["values"], same["indices"], same["weights"],
                            implementation="interpret")
    want = same["weights"].sum(-1)[:, None] * same["values"][5][None]
    np.testing.assert_allclose(np.asarray(out), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_dma_pipeline_race_free_in_tpu_simulator():
    """The manual DMA schedule (index tiles to SMEM one step ahead, double-buffered rows, one
    byte-counted wait per slot) runs under pltpu.InterpretParams(detect_races=True,
    out_of_bounds_reads='raise') over 3 tiles with no race and matches the reference (forward
    and both kernels of the VJP)."""
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as sim
    spec = ArgSpec("race", "bag", 40, 128, 6, 8, slices=2, groups=2, dtype="bfloat16")
    tiles = TpuTiles(rows_per_tile=16, rows_per_dot=8, dma_unroll=1)
    p = tpu.plan(6, 8, 2, 2, 128, jnp.bfloat16, tiles)
    assert p.tiles_per_core == 3
    args = spec.make(3)
    dn = bench.diff_names(spec)
    out, vjp = jax.vjp(lambda *d: arg_specs.call(
        spec, {**args, **dict(zip(dn, d))}, implementation="interpret", tiles=tiles,
        interpret=tpu.interpret_params()), *(args[n] for n in dn))
    grads = vjp(jnp.ones_like(out))
    assert sim.races is not None and not sim.races.races_found
    out_r, vjp_r = jax.vjp(lambda *d: arg_specs.call(
        spec, {**args, **dict(zip(dn, d))}, implementation="xla"),
        *(args[n].astype(jnp.float32) for n in dn))
    _assert_close(out, out_r, "bfloat16", "forward")
    for n, a, b in zip(dn, grads, vjp_r(jnp.ones_like(out_r))):
        _assert_close(a, b, "bfloat16", f"d_{n}")


def test_megacore_split_and_token_padding_match_reference():
    """num_cores=2 (v5p's leading 'parallel' grid axis) with a token count that needs padding
    to whole tiles gives the reference result."""
    spec = ArgSpec("mc", "bag", 30, 128, 11, 5, slices=2, groups=3)
    tiles = TpuTiles(rows_per_tile=16, rows_per_dot=8, num_cores=2, dma_unroll=1)
    p = tpu.plan(11, 5, 2, 3, 128, jnp.float32, tiles)
    assert p.num_cores == 2 and p.n_tokens % (2 * p.tile_tokens) == 0 and p.tiles_per_core > 2
    _check_against_reference(spec, spec.make(4), tiles=tiles)


def test_gpu_kernel_matches_reference_in_interpret_mode():
    """The Triton forward (groups G=3, S=2 slices, pads clamped with zero weights)."""
    spec = SPECS["tiny_mcs_g3_f32"]
    a = spec.make(2)
    valid = (a["indices"] >= 0) & (a["indices"] < spec.n_rows)
    idx = jnp.where(valid, a["indices"], 0)
    w = jnp.where(valid[..., None], a["weights"], 0.0)
    out = gpu.bag(a["values"], idx, w, a["groups"], 3, GPU_TILES["gpu"], interpret=True)
    want = reference.embedding_bag(a["values"], a["indices"], a["weights"], a["groups"], 3)
    _assert_close(out, want, "float32", "gpu forward")


def test_bf16_pack_roundtrip():
    """pack_bf16_table / unpack_bf16_words are inverse (column j and j + D/2 share a word)."""
    x = jax.random.normal(jax.random.key(0), (5, 12), jnp.bfloat16)
    words = tpu.pack_bf16_table(x)
    assert words.shape == (5, 6) and words.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(tpu.unpack_bf16_words(words)), np.asarray(x))


def test_empty_batches_and_leading_shapes():
    """T = 0 or K = 0 give zeros of the right shape; leading dims are kept."""
    v = jnp.ones((8, 128))
    out = api.embedding_bag(v, jnp.zeros((0, 3), jnp.int32), jnp.zeros((0, 3)),
                            implementation="interpret")
    assert out.shape == (0, 128)
    out = api.embedding_bag(v, jnp.zeros((2, 3, 0), jnp.int32), jnp.zeros((2, 3, 0, 2)),
                            groups=jnp.zeros((2, 3, 0), jnp.int32), n_groups=4,
                            implementation="interpret")
    assert out.shape == (2, 3, 4, 128) and not np.any(np.asarray(out))
    assert api.row_dot(v, jnp.zeros((2, 0), jnp.int32), jnp.ones((2, 128)),
                       implementation="interpret").shape == (2, 0)


@pytest.mark.parametrize("kwargs, match", [
    (dict(values=jnp.ones((4,))), "must be \\[N, D\\]"),
    (dict(indices=jnp.zeros((3, 2))), "indices must be integers"),
    (dict(weights=jnp.ones((3, 5))), "weights shape"),
    (dict(weights=jnp.ones((3, 2, 3))), "not divisible"),
    (dict(groups=jnp.zeros((3, 3), jnp.int32)), "groups shape"),
    (dict(groups=jnp.zeros((3, 2), jnp.int32), n_groups=0), "n_groups"),
    (dict(implementation="cuda"), "implementation='cuda' is unknown"),
    (dict(values=jnp.ones((8, 16), jnp.float16), implementation="interpret"),
     "float32 and bfloat16"),
    (dict(values=jnp.ones((8, 15), jnp.bfloat16), implementation="interpret"), "even row dim"),
    (dict(implementation="pallas_tpu", tiles=GPU_TILES["gpu"]), "TpuTiles"),
])
def test_bad_arguments_raise_value_errors(kwargs, match):
    """Shape, dtype and option errors name the field and what is allowed."""
    a = dict(values=jnp.ones((8, 16)), indices=jnp.zeros((3, 2), jnp.int32),
             weights=jnp.ones((3, 2)))
    a.update(kwargs)
    values, indices, weights = a.pop("values"), a.pop("indices"), a.pop("weights")
    with pytest.raises(ValueError, match=match):
        api.embedding_bag(values, indices, weights, **a)


def test_row_dot_validation():
    """row_dot checks x's shape and refuses the (absent) GPU kernel."""
    t, i = jnp.ones((8, 16)), jnp.zeros((3, 2), jnp.int32)
    with pytest.raises(ValueError, match="x shape"):
        api.row_dot(t, i, jnp.ones((3, 15)))
    with pytest.raises(ValueError, match="pallas_gpu"):
        api.row_dot(t, i, jnp.ones((3, 16)), implementation="pallas_gpu")


def test_default_implementation_and_tile_lookup():
    """None picks pallas_tpu on TPU (f32/bf16 tables), XLA on GPU and CPU; device kinds map to
    the chip tile tables."""
    assert api.default_implementation(jnp.float32, "tpu") == "pallas_tpu"
    assert api.default_implementation(jnp.float16, "tpu") == "xla"
    assert api.default_implementation(jnp.bfloat16, "gpu") == "xla"
    assert api.default_implementation(jnp.float32, "cpu") == "xla"
    assert chip_of_device_kind("TPU v5 lite") == "v5e"
    assert chip_of_device_kind("TPU v5") == "v5p"
    assert chip_of_device_kind("TPU v6 lite") == "v6e"
    assert chip_of_device_kind("cpu") is None
    assert tpu_tiles("TPU v5").num_cores == 2 and tpu_tiles("TPU v5 lite") == TPU_TILES["v5e"]
    assert gpu_tiles("NVIDIA H100 80GB HBM3") == GPU_TILES["h100"]
    with pytest.raises(ValueError, match="rows_per_tile"):
        TpuTiles(rows_per_tile=0)


def test_plan_rejects_tiles_that_overflow_vmem():
    """A plan whose double-buffered rows exceed vmem_limit_bytes raises before compiling."""
    with pytest.raises(ValueError, match="VMEM"):
        tpu.plan(4096, 256, 1, 1, 4096, jnp.float32,
                 TpuTiles(rows_per_tile=8192, vmem_limit_bytes=1 << 20))


# ------------------------------------------------------------------------- tier 2: lowering

@pytest.mark.parametrize("chip", ["v5e", "v5p"])
@pytest.mark.parametrize("name", arg_specs.PRODUCTION)
def test_exports_for_tpu_at_production_tiles(name, chip):
    """jax.export(platforms=['tpu']) of the public API, forward and forward+VJP, with the chip's
    tiles: Pallas TPU lowering accepts the block shapes and primitives (tpu_custom_call)."""
    for grad in (False, True):
        exp = bench.export_tpu(SPECS[name], chip, grad=grad)
        text = exp.mlir_module()
        assert exp.platforms == ("tpu",) and "tpu_custom_call" in text
        assert text.count("tpu_custom_call") >= (2 if grad else 1)


@pytest.mark.parametrize("name", [n for n in arg_specs.PRODUCTION if SPECS[n].op == "bag"])
def test_gpu_kernel_exports_for_cuda(name):
    """The Triton forward lowers for CUDA at production shapes (safety check for the Triton
    custom call disabled, as jax.export requires)."""
    from jax import export
    spec = SPECS[name]
    s = spec.shapes()
    t, k = spec.tokens, spec.k
    f = lambda v, i, w, g: gpu.bag(v, i, w, g, spec.n_groups, GPU_TILES["gpu"])  # noqa: E731
    exp = export.export(jax.jit(f), platforms=["cuda"], disabled_checks=[
        export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
        s["values"], jax.ShapeDtypeStruct((t, k), jnp.int32),
        jax.ShapeDtypeStruct((t, k, spec.n_slices), jnp.float32),
        jax.ShapeDtypeStruct((t, k), jnp.int32))
    assert "triton" in exp.mlir_module()


# ---------------------------------------------------------------------- tier 3: TPU compile

def _needs_libtpu():
    pytest.importorskip("libtpu", reason="libtpu is not installed: no TPU AOT compile")


@pytest.mark.parametrize("sharded", [False, True], ids=["1chip", "shard_map4"])
@pytest.mark.parametrize("chip", ["v5e", "v5p"])
def test_tpu_aot_compile_forward(chip, sharded):
    """Mosaic's real compiler accepts the forward at production shape (PKM K=32 f32, 2^20 rows)
    on one chip and in shard_map over 4 chips; the f32 table is gathered in place (no table-
    sized temporaries)."""
    _needs_libtpu()
    spec = SPECS["pkm_k32_f32"]
    m = bench.aot_compile(spec, chip, grad=False, sharded=sharded).memory_analysis()
    assert m.argument_size_in_bytes >= spec.n_rows * spec.dim * 4
    assert m.temp_size_in_bytes < 64 << 20


def test_tpu_aot_compile_bf16_ultramem_forward():
    """UltraMem's MCS + IVE read (S=2, G=4, K=160, bf16, Dv 384) compiles for v5e; the only
    table-sized temporary is the packed uint32 table (192 words padded to 256 lanes)."""
    _needs_libtpu()
    spec = SPECS["ultramem_mcs_ive_bf16"]
    m = bench.aot_compile(spec, "v5e", grad=False, sharded=False).memory_analysis()
    assert m.temp_size_in_bytes <= spec.n_rows * 256 * 4 + (64 << 20)


@pytest.mark.slow
@pytest.mark.parametrize("chip", ["v5e", "v5p"])
def test_tpu_aot_compile_forward_backward_sharded(chip):
    """Forward + VJP (bag, gather-dot kernel, scatter-add, psum of the table gradient) compiles
    inside shard_map over 4 chips (table cut to 2^16 rows to keep the compile short)."""
    _needs_libtpu()
    for name in ("pkm_k32_f32", "ultramem_mcs_ive_bf16", "peer_row_dot_bf16"):
        spec = dataclasses.replace(SPECS[name], n_rows=1 << 16)
        bench.aot_compile(spec, chip, grad=True, sharded=True).memory_analysis()


@pytest.mark.slow
def test_compile_report_has_no_failures(tmp_path):
    """The full tier-3 report (every production spec x chip x fwd/fwd+bwd x 1/4 chips)."""
    _needs_libtpu()
    text = bench.compile_report(tmp_path / "report.md")
    assert "FAIL" not in text


# ----------------------------------------------------------------------- tier 4: hardware

@pytest.mark.skipif(jax.default_backend() != "tpu", reason="needs a TPU")
@pytest.mark.parametrize("name", ["pkm_k32_f32", "ultramem_mcs_ive_bf16", "peer_row_dot_bf16"])
def test_tpu_hardware_matches_reference(name):
    """On a real TPU: pallas_tpu forward and VJP equal the reference (1/8 of the tokens)."""
    spec = dataclasses.replace(SPECS[name], tokens=SPECS[name].tokens // 8)
    args = spec.make(0)
    out_k, g_k = _fwd_vjp(spec, args, "pallas_tpu")
    out_r, g_r = _fwd_vjp(spec, args, "xla", upcast=True)
    _assert_close(out_k, out_r, spec.dtype, "forward")
    for n in g_r:
        _assert_close(g_k[n], g_r[n], spec.dtype, f"d_{n}")
