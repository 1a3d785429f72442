"""Whole-train-step ahead-of-time compile on abstract inputs (nothing allocated).

``build_step(config, devices)`` assembles what ``seedjax.train.loop.Trainer`` trains, from the
same parts (the config's task without data, ``abstract_model``/``model_def``, ``make_optimizer``,
``param_shardings``/``state_shardings``, ``make_train_step``), on any device list: the devices
of a libtpu topology (``tpu_devices``), fake CPU devices, or an ``AbstractMesh`` for the planner
(``seedjax.train.planner``). The state and the batch are ``jax.ShapeDtypeStruct``s carrying
their shardings, so paper-scale models (billions of parameters) cost no memory.

``compile_step(program)`` traces the jitted step (forward, backward, optimizer update; the state
is donated as in the trainer), lowers and compiles it, and returns a ``CompileReport``: per-chip
``memory_analysis()`` fields, their total, whether it fits the chip's HBM, the collectives of the
optimized HLO and the wall times. ``export_step(program, "cuda")`` lowers the same step with
``jax.export`` for GPUs (lowering only: a CPU host cannot compile for CUDA).

Per-chip total = argument + output - alias + temp: the state (donated, so its output aliases its
input) and the batch, plus the metrics, plus XLA's temporaries (gradients, activations saved for
the backward, collective buffers). Generated code is reported but not counted.
"""
from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any, Sequence

import jax
from jax.sharding import NamedSharding, PartitionSpec

from seedjax.nn.partitioning import BATCH_AXES, activation_rules
from seedjax.sharding.mesh import make_mesh, resolve_mesh_shape
from seedjax.sharding.rules import get_rules, param_shardings
from seedjax.train.hardware import Chip
from seedjax.train.optim import make_optimizer, trainable_of
from seedjax.train.state import (abstract_model, fresh_state, model_def, param_labels,
                                 state_shardings)
from seedjax.train.step import make_train_step
from seedjax.train.tasks import make_task

BATCH_SPEC = PartitionSpec(BATCH_AXES)   # as the trainer: the batch over data x fsdp
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass
class StepProgram:
    """A config's train step on a mesh, abstract: ``state`` / ``batch`` are pytrees of
    ShapeDtypeStructs with shardings; ``jitted(state, batch) -> (state, metrics)``."""
    config: Any
    task: Any
    mesh: Any                    # jax.sharding.Mesh or AbstractMesh
    rules: dict
    abstract: Any                # the nnx module with ShapeDtypeStructs
    state: dict
    batch: dict
    jitted: Any

    @property
    def n_devices(self) -> int:
        return int(self.mesh.size)


def tpu_devices(topology: str) -> list:
    """The devices of a libtpu topology such as "v5e:2x2" on this host (compile-only client:
    no TPU needed; ``importlib.util.find_spec("libtpu")`` must find libtpu)."""
    import importlib.util
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError("libtpu is not installed: pip install 'jax[tpu]==0.10.2' (needed to "
                         "compile for a TPU topology on this host)")
    # a compile-only libtpu client takes /tmp/libtpu_lockfile like a TPU process: let several
    # compile checks on one host coexist (no TPU is driven)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)


def mesh_shape_of(config, override: dict | None, n_devices: int) -> dict:
    """The config's ``mesh.shape`` (or ``override``) resolved for ``n_devices``; ValueError
    (one line) when it does not divide them."""
    shape = dict(override if override is not None else config.mesh.shape)
    try:
        return resolve_mesh_shape(shape, n_devices)
    except ValueError as e:
        raise ValueError(f"{e} (this topology has {n_devices} devices)") from None


def build_step(config, devices: Sequence | None = None, *, mesh_shape: dict | None = None,
               rules: str | None = None, abstract_mesh: bool = False) -> StepProgram:
    """The jitted train step of ``config`` over ``devices`` (a list of devices, or with
    ``abstract_mesh`` an int: the device count of a ``jax.sharding.AbstractMesh``).
    ``mesh_shape`` / ``rules`` replace ``config.mesh.shape`` / ``config.mesh.rules``."""
    from seedjax.train.config_check import validate_config
    validate_config(config)
    n = devices if abstract_mesh else len(devices)
    sizes = mesh_shape_of(config, mesh_shape, n)
    if abstract_mesh:
        from seedjax.sharding.mesh import MESH_AXES
        mesh = jax.sharding.AbstractMesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                                         axis_types=(jax.sharding.AxisType.Auto,) * 5)
    else:
        mesh = make_mesh(sizes, devices=devices)
    rule_set = get_rules(rules or config.mesh.rules)
    task, abstract, mdef, tx, schedule, abstract_state = abstract_parts(config)
    shards = sizes["data"] * sizes["fsdp"]
    if task.batch_size % shards:
        raise ValueError(f"data.batch_size={task.batch_size} must be divisible by the mesh's "
                         f"data*fsdp size {shards}")
    tc = config.train
    p_sh = param_shardings(abstract, mesh, rule_set,
                           strict=bool(config.mesh.get("strict_sharding", False)))
    st_sh = state_shardings(abstract_state, mesh, p_sh)
    state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                         abstract_state, st_sh)
    batch_sh = NamedSharding(mesh, BATCH_SPEC)
    batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sh)
             for k, s in task.batch_shapes().items()}
    step = make_train_step(mdef, tx, schedule, int(tc.get("accum_steps", 1)), task.objective,
                           ema_decay=float(task.ema_decay))
    jitted = jax.jit(step, in_shardings=(st_sh, batch_sh), out_shardings=(st_sh, None),
                     donate_argnums=0)
    return StepProgram(config, task, mesh, rule_set, abstract, state, batch, jitted)


_PARTS: dict = {}


def _abstract_parts(config):
    tc = config.train
    task = make_task(config, "", data=False)
    abstract = abstract_model(task.model_fn)
    mdef = model_def(abstract)
    decay_mask, groups = param_labels(abstract)
    tx, schedule = make_optimizer(tc, decay_mask, groups,
                                  trainable_of(tc, task.objective.trainable_groups))
    ema = float(task.ema_decay) > 0
    abstract_state = jax.eval_shape(
        lambda: fresh_state(task.model_fn(), mdef, tx, int(tc.seed), ema))
    return task, abstract, mdef, tx, schedule, abstract_state


def abstract_parts(config):
    """(task without data, abstract module, ModelDef, optimizer, schedule, abstract train
    state): the mesh-independent parts, cached per config content (the planner's mesh search
    builds them once)."""
    key = repr(config.to_dict())
    if key not in _PARTS:
        if len(_PARTS) >= 4:
            _PARTS.pop(next(iter(_PARTS)))
        _PARTS[key] = _abstract_parts(config)
    return _PARTS[key]


def lower_step(program: StepProgram, platforms: Sequence[str] | None = None):
    """``jitted.trace(state, batch).lower()`` under the mesh and the activation rules."""
    with jax.set_mesh(program.mesh), activation_rules(program.mesh, program.rules):
        traced = program.jitted.trace(program.state, program.batch)
        return traced.lower(lowering_platforms=tuple(platforms)) if platforms else traced.lower()


def collective_counts(hlo: str) -> dict[str, int]:
    """Collective ops in an optimized HLO text (async ``-start`` forms counted once)."""
    return {op: len(re.findall(rf" {op}(?:-start)?\(", hlo)) for op in COLLECTIVES}


@dataclasses.dataclass
class CompileReport:
    """Per-chip bytes from ``compiled.memory_analysis()`` and what the optimized HLO holds."""
    argument: int
    output: int
    alias: int
    temp: int
    code: int
    hbm: int                     # the chip's HBM bytes (``seedjax.train.hardware.CHIPS``)
    collectives: dict
    lower_s: float
    compile_s: float
    n_devices: int
    device_kind: str

    @property
    def total(self) -> int:
        """argument + output - alias + temp (bytes one chip holds at the peak)."""
        return self.argument + self.output - self.alias + self.temp

    @property
    def fits(self) -> bool:
        return self.total <= self.hbm

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "total": self.total, "fits": self.fits}


def compile_step(program: StepProgram, chip: Chip) -> tuple[CompileReport, Any]:
    """AOT-compiles ``program`` (its mesh must hold real or topology devices); returns the
    report and the ``Compiled`` object."""
    t0 = time.perf_counter()
    lowered = lower_step(program)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    mem = compiled.memory_analysis()
    report = CompileReport(
        argument=int(mem.argument_size_in_bytes), output=int(mem.output_size_in_bytes),
        alias=int(mem.alias_size_in_bytes), temp=int(mem.temp_size_in_bytes),
        code=int(mem.generated_code_size_in_bytes), hbm=int(chip.hbm_bytes),
        collectives=collective_counts(compiled.as_text()), lower_s=t1 - t0, compile_s=t2 - t1,
        n_devices=program.n_devices, device_kind=str(program.mesh.devices.flat[0].device_kind))
    return report, compiled


def export_step(program: StepProgram, platform: str = "cuda"):
    """``jax.export`` of the train step for ``platform`` (lowering only); returns the
    ``Exported`` (``nr_devices`` = the mesh's devices; ``mlir_module()`` the StableHLO)."""
    from jax import export
    with jax.set_mesh(program.mesh), activation_rules(program.mesh, program.rules):
        return export.export(program.jitted, platforms=[platform])(program.state, program.batch)
