"""Golden sharding dumps: every model family x every rule preset.

Each family's smoke-size model is built as the trainer builds it (the config's ``model`` block ->
``LM`` / ``DiT``), abstractly (``nnx.eval_shape``: nothing allocated), and its per-parameter
PartitionSpecs under each preset are compared with ``tests/sharding/golden/<family>__<preset>.txt``.
A change in how any parameter is sharded shows up as a diff there; rewrite the files with

    SEEDJAX_UPDATE_GOLDEN=1 JAX_PLATFORMS=cpu .venv/bin/python -m pytest \
        tests/sharding/test_golden_shardings.py -q -n 0

The mesh is an ``AbstractMesh`` with every axis of ``MESH_AXES`` at size 2 (32 virtual devices,
more than the 8 fake CPU devices, so that one mesh shows every preset's axes; specs depend only on
the axis sizes). Lines marked "not divisible" are the dimensions the lenient default replicates.

Also: every logical axis name of every sweep row of every config (and every ``constrain`` call)
is mapped by a preset or listed in ``REPLICATED``.
"""
import difflib
import functools
import importlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from experiments.overrides import apply_overrides
from seedjax.models import LM, LMConfig
from seedjax.models.dit import DiT, DiTConfig
from seedjax.sharding import (MAPPED, MESH_AXES, PRESETS, REPLICATED, get_rules, param_shardings,
                              sharding_rows, unknown_logical_names)

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("SEEDJAX_UPDATE_GOLDEN") == "1"
MESH = AbstractMesh((2,) * len(MESH_AXES), MESH_AXES,
                    axis_types=(AxisType.Auto,) * len(MESH_AXES))

# family -> (config module, variant, sweep row or None, extra model overrides)
FAMILIES = {
    "lm_dense": ("configs.lm", "smoke", None, {}),
    "lm_dense_scan": ("configs.lm", "smoke", None, {"model.scan_layers": True}),
    "lm_moe": ("configs.papers.ultramem_v2", "smoke", "moe", {}),
    "ultramem": ("configs.papers.ultramem", "smoke", "ultramem", {}),
    "ultramem_v2": ("configs.papers.ultramem_v2", "smoke", "ultramem_v2", {}),
    "hyper_connections": ("configs.papers.hyper_connections", "smoke", "dhc_n4", {}),
    "mhc": ("configs.papers.hyper_connections", "smoke", "mhc_n4", {}),
    "frac_connections": ("configs.papers.frac_connections", "smoke", "dfc_m2", {}),
    "seednorm": ("configs.papers.seednorm", "smoke", "seednorm", {}),
    "over_tokenized": ("configs.papers.over_tokenized", "smoke", "ot", {}),
    "ouro_looped": ("configs.papers.ouro", "smoke", "looped", {}),
    "dit_dense": ("configs.papers.race_dit", "smoke", "dense", {}),
    "dit_race_moe": ("configs.papers.race_dit", "smoke", "expert_race", {}),
    "combined": ("configs.combined", "smoke", None, {}),
}
SWEEP_CONFIGS = ("hyper_connections", "frac_connections", "seednorm", "representation_collapse",
                 "ultramem", "ultramem_v2", "ouro", "over_tokenized", "over_tokenized_cfg",
                 "race_dit")


def build_abstract(cfg) -> nnx.Module:
    """The trainer's model for ``cfg`` (seedjax.train.tasks), shapes only."""
    if cfg.get("task", "lm") == "image_diffusion":
        c = DiTConfig.from_dict(cfg.model)
        return nnx.eval_shape(lambda: DiT(c, rngs=nnx.Rngs(0)))
    c = LMConfig.from_dict(cfg.model)
    return nnx.eval_shape(lambda: LM(c, rngs=nnx.Rngs(0)))


def family_config(family: str):
    module, variant, row, extra = FAMILIES[family]
    mod = importlib.import_module(module)
    cfg = mod.get_config(variant)
    if row is not None:
        rows = {r["name"]: r for r in mod.get_sweep(variant)}
        cfg = apply_overrides(cfg, rows[row]["overrides"])
    return apply_overrides(cfg, extra)


@functools.lru_cache(maxsize=None)
def family_model(family: str) -> nnx.Module:
    return build_abstract(family_config(family))


def _fmt_axes(axes) -> str:
    return "(" + ", ".join("-" if a is None else a for a in axes) + ")"


def dump(family: str, preset: str) -> str:
    """The golden text of ``family`` under ``preset`` on ``MESH``."""
    module, variant, row, extra = FAMILIES[family]
    mesh = ", ".join(f"{a}={s}" for a, s in MESH.shape.items())
    lines = [f"# family {family}: {module}:{variant}"
             + (f" row {row}" if row else "") + (f" {extra}" if extra else ""),
             f"# preset {preset}; AbstractMesh {mesh}",
             "# path  shape  logical axes  ->  PartitionSpec"]
    for r in sharding_rows(family_model(family), MESH, get_rules(preset)):
        shape = "x".join(map(str, r.shape)) or "scalar"
        note = "".join(f"  # dim {i} not divisible by {'*'.join(a)}={n}" for i, a, n in r.dropped)
        lines.append(f"{r.path}  {shape}  {_fmt_axes(r.axes)}  ->  {r.spec}{note}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_golden_shardings(family):
    """Each preset's dump equals its golden file (SEEDJAX_UPDATE_GOLDEN=1 rewrites them)."""
    failures = []
    for preset in sorted(PRESETS):
        path = GOLDEN / f"{family}__{preset}.txt"
        got = dump(family, preset)
        if UPDATE:
            GOLDEN.mkdir(exist_ok=True)
            path.write_text(got)
            continue
        want = path.read_text() if path.exists() else ""
        if got != want:
            diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                str(path), "now", n=1))
            failures.append(f"{path.name} {'differs' if want else 'is missing'}:\n"
                            + "\n".join(diff.splitlines()[:60]))
    assert not failures, (
        "sharding changed; if intended, rewrite the golden files with SEEDJAX_UPDATE_GOLDEN=1 "
        "JAX_PLATFORMS=cpu .venv/bin/python -m pytest tests/sharding/test_golden_shardings.py "
        "-n 0 and commit them\n" + "\n".join(failures))


def test_no_stale_golden_files():
    """Every golden file belongs to a (family, preset) the test still dumps."""
    want = {f"{f}__{p}.txt" for f in FAMILIES for p in PRESETS}
    stale = sorted(p.name for p in GOLDEN.glob("*.txt") if p.name not in want)
    if UPDATE:
        for name in stale:
            (GOLDEN / name).unlink()
        return
    assert not stale, f"golden files of no family/preset (delete them): {stale}"


@pytest.mark.parametrize("family", ["lm_dense_scan", "ultramem_v2", "dit_race_moe"])
def test_trainer_shardings_match_dump(family):
    """``param_shardings`` (what the trainer places parameters with) gives the dumped specs."""
    model = family_model(family)
    for preset in PRESETS:
        rows = sharding_rows(model, MESH, get_rules(preset))
        flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
        shardings = param_shardings(model, MESH, get_rules(preset))
        for r, (path, _) in zip(rows, flat):
            node = shardings
            for k in path:
                node = node[k]
            assert node.spec == r.spec, (family, preset, r.path)


def _all_configs():
    for name in SWEEP_CONFIGS:
        mod = importlib.import_module(f"configs.papers.{name}")
        base = mod.get_config("smoke")
        for r in mod.get_sweep("smoke"):
            yield f"{name}:{r['name']}", apply_overrides(base, r["overrides"])
    for f in FAMILIES:
        yield f, family_config(f)


def _activation_names() -> set:
    """Logical names of the ``constrain(x, (...))`` calls in seedjax."""
    root = Path(__file__).resolve().parents[2] / "seedjax"
    names = set()
    for f in root.rglob("*.py"):
        for tup in re.findall(r"constrain\([^,]+,\s*\(([^)]*)\)", f.read_text()):
            names.update(re.findall(r'"([a-z_]+)"', tup))
    return names


def test_every_logical_name_is_mapped_or_replicated_on_purpose():
    """Every parameter of every smoke sweep row and family names each dimension, and each
    logical name is in some preset or in ``REPLICATED`` (add new names to one of them); no name
    is both, and ``REPLICATED`` lists no name that nothing uses."""
    assert not MAPPED & set(REPLICATED), sorted(MAPPED & set(REPLICATED))
    seen: dict[str, str] = {}
    for where, cfg in _all_configs():
        model = build_abstract(cfg)
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            axes = tuple(var.get_metadata().get("out_sharding", ()) or ())
            name = f"{where} {'/'.join(map(str, path))}"
            assert len(axes) == len(var.get_value().shape), f"{name}: axes {axes} vs shape"
            for a in axes:
                seen.setdefault(a, name)
    unknown = unknown_logical_names(seen)
    assert not unknown, ("logical axis names neither mapped by a preset nor in REPLICATED "
                         f"(seedjax/sharding/rules.py): {[(u, seen[u]) for u in unknown]}")
    unused = set(REPLICATED) - set(seen) - _activation_names()
    assert not unused, f"REPLICATED names no model or constrain call uses: {sorted(unused)}"


def test_every_constrained_activation_name_is_known():
    """The logical names of ``constrain(x, (...))`` calls in seedjax are known names too."""
    names = _activation_names()
    assert {"batch", "length", "embed"} <= names
    assert not unknown_logical_names(names), unknown_logical_names(names)


def test_unknown_name_is_reported():
    assert unknown_logical_names(["embed", None, "brand_new_axis"]) == ["brand_new_axis"]


def test_print_sharding_table(capsys):
    """Rows carry path, shape, axes, spec and bytes per device; the totals row sums them."""
    from seedjax.sharding import print_sharding_table
    model = family_model("lm_dense")
    mesh = AbstractMesh((1, 2, 2, 1, 1), MESH_AXES)
    text = print_sharding_table(model, mesh, "fsdp_tp")
    assert capsys.readouterr().out.strip() == text
    lines = text.splitlines()
    # vocab 256 x embed 64 float32 over model x fsdp: 64 KiB / 4
    assert "| embed/table | (256, 64) | ('vocab', 'embed') | P('model', 'fsdp') | 16.00 KiB |" \
        in lines
    rows = sharding_rows(model, mesh, get_rules("fsdp_tp"))
    assert len(lines) == len(rows) + 3
    for r in rows:     # each named mesh axis has size 2 and halves the bytes
        assert r.bytes_per_device * 2 ** sum(e is not None for e in r.spec) == r.nbytes, r
    assert any(e is None for r in rows for e in r.spec)    # replicated dims count in full
    params = sum(int(np.prod(r.shape)) for r in rows)
    assert lines[-1].startswith(f"| total: {len(rows)} arrays | {params:,} params | mesh "
                                "fsdp=2, model=2 |")
    per = sum(r.bytes_per_device for r in rows)
    assert lines[-1].endswith(f"| {per / 1024:.2f} KiB |")
