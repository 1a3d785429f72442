"""Whole-train-step AOT compile (seedjax/train/aot.py, experiments/compile_step.py) and the
planner (seedjax/train/planner.py, experiments/plan.py) against it.

TPU compiles use libtpu's compile-only topology devices, which ``get_topology_desc`` gives while
JAX_PLATFORMS=cpu (as tests/kernels' tier-3 tests); they are skipped without libtpu.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from experiments.overrides import load_config
from seedjax.train import aot, hardware, planner

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU,
                                  reason="libtpu not installed (pip install 'jax[tpu]==0.10.2')")
TOPO = "v5e:2x2"


def _compile(spec: str, **model):
    config = load_config(spec, [])
    config.model.update(**model)
    program = aot.build_step(config, aot.tpu_devices(TOPO))
    report, compiled = aot.compile_step(program, hardware.CHIPS["v5e"])
    return config, program, report, compiled


@pytest.fixture(scope="module")
def smoke_step():
    if not HAS_LIBTPU:
        pytest.skip("libtpu not installed (pip install 'jax[tpu]==0.10.2')")
    return _compile("configs/lm.py:smoke")


@needs_libtpu
def test_report_equals_memory_analysis(smoke_step):
    _, program, report, compiled = smoke_step
    mem = compiled.memory_analysis()
    assert (report.argument, report.output, report.alias, report.temp, report.code) == (
        mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.alias_size_in_bytes,
        mem.temp_size_in_bytes, mem.generated_code_size_in_bytes)
    assert report.total == (mem.argument_size_in_bytes + mem.output_size_in_bytes
                            - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    assert report.fits and report.hbm == 16 * 2 ** 30
    assert report.n_devices == 4 and report.device_kind.startswith("TPU v5")
    # the donated state aliases: the whole state comes back in place
    assert report.alias >= planner.tree_bytes(program.state) * 0.99
    # data parallel over 4 chips: the gradients are all-reduced
    assert report.collectives["all-reduce"] >= 1
    assert report.collectives == aot.collective_counts(compiled.as_text())


@needs_libtpu
def test_fsdp_mesh_gathers_params(smoke_step):
    """The same step with the params sharded over fsdp all-gathers them (and the gradients are
    reduce-scattered or all-reduced): the mesh and rules reach the compiled program."""
    config = load_config("configs/lm.py:smoke", [])
    program = aot.build_step(config, aot.tpu_devices(TOPO), mesh_shape={"fsdp": -1},
                             rules="fsdp")
    report, _ = aot.compile_step(program, hardware.CHIPS["v5e"])
    assert report.collectives["all-gather"] >= 1
    assert report.argument < smoke_step[2].argument  # state split 4 ways instead of replicated


@needs_libtpu
@pytest.mark.parametrize("spec, model", [
    pytest.param("configs/lm.py:tiny", {}, marks=pytest.mark.slow),   # 30 s: suite time
    pytest.param("configs/lm.py:tiny", {"scan_layers": True, "remat": True},
                 marks=pytest.mark.slow),
    pytest.param("configs/lm.py:small", {}, marks=pytest.mark.slow),
    pytest.param("configs/lm.py:small", {"scan_layers": True, "remat": True},
                 marks=pytest.mark.slow)],
    ids=["tiny", "tiny-scan-remat", "small", "small-scan-remat"])
def test_planner_within_25_percent_of_compile(spec, model):
    config, program, report, _ = _compile(spec, **model)
    plan = planner.plan_of(aot.build_step(config, 4, abstract_mesh=True), "v5e-4",
                           hardware.CHIPS["v5e"], config.mesh.rules)
    assert abs(plan.total / report.total - 1) <= 0.25, (plan.to_dict(), report.to_dict())
    # the state bytes are exact (no layout padding at these widths)
    assert plan.state == pytest.approx(report.alias, rel=0.01)


def test_unknown_topology_lists_allowed():
    with pytest.raises(ValueError, match=r"--topology='v9-8' unknown; allowed: .*v5e-8.*v5p-16"):
        hardware.resolve_topology("v9-8")
    assert hardware.n_devices("v5p-16") == 8 and hardware.n_devices("v5e:2x4") == 8
    assert hardware.resolve_topology("v5e:2x2")[0] == "v5e-4"


def test_mesh_must_divide_devices():
    config = load_config("configs/lm.py:smoke", [])
    with pytest.raises(ValueError, match="has 3 devices but 8 devices are available.*8 devices"):
        aot.build_step(config, 8, mesh_shape={"model": 3}, abstract_mesh=True)
    with pytest.raises(ValueError, match="data.batch_size=8 must be divisible.*16"):
        aot.build_step(config, 16, abstract_mesh=True)


def test_planner_state_bytes_and_suggestion():
    """fsdp=4 holds a quarter of the data-parallel state; a 1.2B model whose replicated state
    does not fit a v5e chip gets a suggested mesh that does."""
    config = load_config("configs/lm.py:small", [])
    dp = planner.plan_for(config, "v5e:2x2")
    fsdp = planner.plan_for(config, "v5e:2x2", mesh_shape={"fsdp": -1}, rules="fsdp")
    assert fsdp.params < dp.params / 3 and dp.opt_state == pytest.approx(2 * dp.params, rel=0.01)
    assert dp.flops_per_step > 0 and 0 < dp.mfu <= 1
    big = load_config("configs/papers/ultramem_v2.py:paper_227m_v2", [])
    plan = planner.plan_for(big, "v5e-8")
    assert not plan.fits
    mesh, sp = planner.suggest_mesh(big, "v5e-8", rules="fsdp_tp_mem")
    assert mesh is not None and sp.fits and mesh["data"] < 8


def test_cuda_export_of_train_step():
    """The same step lowers for CUDA with jax.export on the 8 fake CPU devices."""
    config = load_config("configs/lm.py:smoke", [])
    program = aot.build_step(config, jax.devices()[:8])
    exported = aot.export_step(program, "cuda")
    assert exported.platforms == ("cuda",) and exported.nr_devices == 8


def _cli(module: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.parametrize("module", ["experiments.compile_step", "experiments.plan"])
@pytest.mark.parametrize("args, message", [
    (["--config=configs/lm.py:smoke", "--topology=v9-8"], "--topology='v9-8' unknown; allowed"),
    (["--config=configs/lm.py:smoke", "--topology=v5e-8", "--mesh=model=3"],
     "has 3 devices but 8 devices are available"),
    (["--config=configs/lm.py:smoke", "--mesh=fsdp"], "expected axis=size pairs")],
    ids=["topology", "mesh", "mesh-syntax"])
def test_cli_errors_are_one_line(module, args, message):
    proc = _cli(module, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_plan_cli_prints_every_part():
    proc = _cli("experiments.plan", "--config=configs/lm.py:smoke", "--topology=v5e:2x2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for part in ("parameters", "optimizer state", "activations", "total", "FLOPs per step",
                 "roofline step time", "suggested mesh"):
        assert part in proc.stdout


PAPER_ROWS = sorted((Path(__file__).parents[2] / "results/compile/train_steps").glob("*.json"))


# Compiled rows the planner misses by more than 25%, with the reason (the test fails when the
# set changes either way, so a fix or a new miss shows up here). Empty since the UltraMem
# value-row term (planner.memory_rows_bytes; UltraMem-680M was -35% without it).
KNOWN_MISSES: dict[str, str] = {}


def test_committed_paper_rows_planner_within_25_percent():
    """Every compiled paper-scale row of results/compile/train_steps: the planner's per-chip
    total (stored by --replan) is within 25% of the compiled total (the issue's bound), except
    the listed ``KNOWN_MISSES``."""
    import json
    rows = [json.loads(p.read_text()) for p in PAPER_ROWS]
    compiled = [r for r in rows if "compiled" in r]
    assert len(compiled) >= 20
    assert not [r["config"] for r in rows if "compiled" not in r]   # every paper config
    assert all(r["compiled"]["fits"] for r in compiled)
    off = {r["config"]: round(r["plan"]["total"] / r["compiled"]["total"] - 1, 3)
           for r in compiled if abs(r["plan"]["total"] / r["compiled"]["total"] - 1) > 0.25}
    assert set(off) == set(KNOWN_MISSES), off


def test_replan_reproduces_a_committed_row(tmp_path):
    """--replan rebuilds a row's target from its recorded command; the committed planner column
    is what the current planner computes (so the table is not stale)."""
    import json
    import shutil

    from experiments import compile_step
    src = next(p for p in PAPER_ROWS if p.name == "race_dit__paper_b2_dense.json")
    shutil.copy(src, tmp_path / src.name)
    assert compile_step.replan_rows(str(tmp_path)) == 1
    new, old = (json.loads(p.read_text())["plan"] for p in (tmp_path / src.name, src))
    assert new == old
