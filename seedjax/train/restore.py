"""Load a trained model from a run directory (for generation and evaluation), for every task of
``seedjax.train.tasks``.

* ``load_run(workdir, step=None, *, use_ema=None, train=False) -> LoadedRun``: the run's model
  (LM or DiT) with the parameters named by ``use_ema`` and the run's model state (e.g. the
  Expert Race EMA threshold), plus the config, step and the functional pieces (``mdef``,
  ``params``, ``model_state``) to rebuild it inside ``jax.jit``.
* ``load_model(workdir, step=None) -> (model, config, step)``: the raw trained params (never the
  EMA), training mode, as the LM tools (generation, diagnostics) have always used it.
* ``run_config(workdir, step=None) -> (config, step)``: the saved config only (nothing restored).

Which parameters (``use_ema``): None (default) the EMA of the weights when the run keeps one
(``train.ema_decay`` > 0, what the trainer evaluates and samples with), else the raw params;
True: the EMA, a ValueError if the run has none; False: the raw params. ``LoadedRun.params_used``
says which ("ema" | "params").

Everything is restored onto one local device whatever topology saved it: the checkpoint's own
sharding metadata names the saving run's devices (e.g. 8 fake CPU devices, or another process's
device ids after a multi-process run), which need not exist here.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
from flax import nnx

from seedjax.train.checkpoint import Checkpointer
from seedjax.train.optim import make_optimizer
from seedjax.train.state import (ModelDef, abstract_model, fresh_state, model_def, param_labels,
                                 param_shapes)
from seedjax.train.tasks import task_name


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRun:
    """A restored run. ``model``: the module with ``params`` and ``model_state`` merged, in eval
    mode unless loaded with ``train=True``; ``params_used``: "ema" | "params"; ``has_ema``:
    whether the checkpoint holds an EMA; ``model_state``: pure dict of the model's statistics
    (None when the model has none); ``mdef.merge(params, model_state, train=...)`` rebuilds the
    module (e.g. inside ``jax.jit``)."""

    model: nnx.Module
    config: ml_collections.ConfigDict
    step: int
    task: str
    params_used: str
    has_ema: bool
    params: dict
    model_state: dict | None
    mdef: ModelDef


def _checkpointer(workdir: str) -> Checkpointer:
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise ValueError(f"--workdir {workdir!r} has no checkpoints/ directory (train first)")
    return Checkpointer(ckpt_dir)


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the checkpoints kept in ``workdir``/checkpoints, ascending (ValueError when
    the run has no checkpoints/ directory)."""
    return sorted(_checkpointer(workdir).manager.all_steps())


def _pick_step(ckpt: Checkpointer, step: int | None) -> int:
    available = sorted(ckpt.manager.all_steps())
    if not available:
        raise ValueError(f"no checkpoint found in {ckpt.directory}")
    step = available[-1] if step is None else step
    if step not in available:
        raise ValueError(f"step={step}: no checkpoint at step {step} in {ckpt.directory}; "
                         f"allowed: {available}")
    ckpt.check(step)  # CorruptCheckpoint (a ValueError) naming the bad file
    return step


def run_config(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, int]:
    """(the config saved with the checkpoint, its step), without restoring any array."""
    ckpt = _checkpointer(workdir)
    try:
        step = _pick_step(ckpt, step)
        return ml_collections.ConfigDict(ckpt.read_meta(step)["config"]), step
    finally:
        ckpt.close()


def model_fn_of(config) -> Any:
    """``() -> module`` building the run's model (weights from a fixed seed; restore replaces
    them) without loading its data."""
    if task_name(config) == "lm":
        from seedjax.models import LM, LMConfig
        cfg = LMConfig.from_dict(config.model)
        return lambda: LM(cfg, rngs=nnx.Rngs(0))
    from seedjax.models.dit import DiT, DiTConfig
    cfg = DiTConfig.from_dict(config.model)
    return lambda: DiT(cfg, rngs=nnx.Rngs(0))


def _restore(workdir: str, step: int | None) -> tuple[dict, ml_collections.ConfigDict, int,
                                                       ModelDef]:
    """(train state restored onto one local device, config, step, model def)."""
    ckpt = _checkpointer(workdir)
    try:
        step = _pick_step(ckpt, step)
        config = ml_collections.ConfigDict(ckpt.read_meta(step)["config"])
        model_fn = model_fn_of(config)
        abstract = abstract_model(model_fn)
        mdef = model_def(abstract)
        tx, _ = make_optimizer(config.train, *param_labels(abstract))
        ema = float(config.train.get("ema_decay", 0.0)) > 0

        fresh = lambda: fresh_state(model_fn(), mdef, tx, 0, ema)  # the trainer's layout

        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                              jax.eval_shape(fresh))
        state, _, _ = ckpt.restore(step, target, param_shapes(abstract))
    finally:
        ckpt.close()
    return state, config, step, mdef


def load_run(workdir: str, step: int | None = None, *, use_ema: bool | None = None,
             train: bool = False) -> LoadedRun:
    """The run in ``workdir`` at checkpoint ``step`` (default: the latest); ``use_ema`` and the
    device placement: module doc. ValueErrors (one line) for a missing directory, an unknown
    step, a corrupt checkpoint, or ``use_ema=True`` on a run without an EMA."""
    state, config, step, mdef = _restore(workdir, step)
    has_ema = "ema" in state
    if use_ema and not has_ema:
        raise ValueError(f"use_ema=True but the run in {workdir!r} keeps no EMA of its weights "
                         "(train.ema_decay = 0); load its params instead")
    used = "ema" if has_ema and use_ema is not False else "params"
    params = state[used]
    model_state = state.get("model_state")
    model = mdef.merge(params, model_state, train=train)
    return LoadedRun(model=model, config=config, step=step, task=task_name(config),
                     params_used=used, has_ema=has_ema, params=params,
                     model_state=model_state, mdef=mdef)


def load_model(workdir: str, step: int | None = None) -> tuple[nnx.Module,
                                                               ml_collections.ConfigDict, int]:
    """(model with the trained params, not the EMA, in training mode; the run's config;
    checkpoint step) from ``workdir``. The model state (e.g. an Expert Race threshold) is the
    run's when it has one."""
    run = load_run(workdir, step, use_ema=False, train=True)
    return run.model, run.config, run.step
