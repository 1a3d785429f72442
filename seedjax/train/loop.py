"""The training loop: builds model, data, optimizer and mesh from a config, resumes from the
latest checkpoint, runs jitted steps with hooks (log, eval, checkpoint) and handles SIGTERM and
non-finite losses.

Guarantees: a crash loses at most the steps since the last checkpoint; resuming continues the same
run (bitwise on CPU: parameters, optimizer state, step, RNG and data-iterator position are saved).
SIGTERM finishes the current step, saves, and returns. A NaN/Inf loss raises
``NonFiniteLossError`` without saving, so the last good checkpoint stays the latest.
"""
from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import signal
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from seedjax.nn.partitioning import BATCH_AXES, activation_rules
from seedjax.sharding.mesh import make_mesh
from seedjax.sharding.multihost import global_batch
from seedjax.sharding.rules import get_rules, param_shardings
from seedjax.train.checkpoint import Checkpointer, CorruptCheckpoint, abstract_like
from seedjax.train.config_check import validate_config
from seedjax.train.hardware import peak_flops_per_device
from seedjax.train.hooks import Hook
from seedjax.train.metrics import MetricWriter, plot_loss_curve
from seedjax.train.optim import make_optimizer, trainable_of
from seedjax.train.state import (abstract_model, count_params, fresh_state, model_def,
                                 param_labels, param_shapes, state_shardings)
from seedjax.train.step import make_eval_step, make_train_step
from seedjax.train.tasks import make_task

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


def versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


class Trainer:
    """``Trainer(config, workdir).run()`` -> summary dict. ``config`` is the ml_collections config;
    ``config.task`` ("lm" by default, "image_diffusion") picks what is trained
    (``seedjax.train.tasks``): model, data, objective, eval metrics and throughput unit."""

    def __init__(self, config, workdir: str, *, progress: bool = True):
        validate_config(config)
        self.config, self.workdir, self.progress = config, workdir, progress
        tc = config.train
        self.task = make_task(config, workdir)
        self.model_cfg = self.task.model_cfg
        self.batch_size = int(config.data.batch_size)
        self.total_steps = int(tc.steps)
        self.mesh = make_mesh(dict(config.mesh.shape))
        self.rules = get_rules(config.mesh.rules)
        n_batch_shards = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if self.batch_size % n_batch_shards:
            raise ValueError(f"data.batch_size={self.batch_size} must be divisible by the mesh's "
                             f"data*fsdp size {n_batch_shards}")

        self.model_fn = self.task.model_fn
        abstract = abstract_model(self.model_fn)
        self.mdef = model_def(abstract)
        self.param_shapes = param_shapes(abstract)
        decay_mask, groups = param_labels(abstract)
        self.objective = self.task.objective
        self.ema_decay = float(self.task.ema_decay)
        self.tx, self.schedule = make_optimizer(
            tc, decay_mask, groups, trainable_of(tc, self.objective.trainable_groups))
        strict = bool(config.mesh.get("strict_sharding", False))  # non-dividing dim: ValueError
        self.p_shardings = param_shardings(abstract, self.mesh, self.rules, strict=strict)

        self.data = self.task.data
        self.batch_spec = PartitionSpec(BATCH_AXES)
        eval_seen = tc.get("eval_seen")   # None: auto, on when the run repeats its data
        self.eval_seen = (self.total_steps > self.data.steps_per_epoch if eval_seen is None
                          else bool(eval_seen)) and hasattr(self.task, "seen_batches")
        self._seen = None
        # repair=True: a corrupt latest step is moved aside (never deleted), see checkpoint.py
        self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=int(tc.get("keep_checkpoints", 2)), repair=True)
        self.writer = MetricWriter(workdir)
        self.hooks: list[Hook] = []
        self._stop_signal = False
        self._interval: list[dict] = []
        self._interval_t0, self._interval_first, self._untimed = None, None, 0

        self.flops_per_step = self.task.flops_per_step
        self.peak, self.peak_source = peak_flops_per_device()
        self.add_hook(self._log_hook, every=int(tc.log_every), name="log")
        self.add_hook(self._eval_hook, every=int(tc.eval_every), name="eval")
        self.add_hook(self._ckpt_hook, every=int(tc.checkpoint_every), name="checkpoint")

    # ----------------------------------------------------------------- setup
    def add_hook(self, fn: Callable, every: int, name: str = "") -> None:
        self.hooks.append(Hook(fn, every, name))

    def _meta(self) -> dict:
        return {"param_shapes": self.param_shapes, "config": self.config.to_dict(),
                "versions": versions()}

    def _init_or_restore(self):
        with jax.set_mesh(self.mesh):
            abstract_state = jax.eval_shape(self._fresh_state)
        self.state_shardings = state_shardings(abstract_state, self.mesh, self.p_shardings)
        target = abstract_like(abstract_state, self.state_shardings)
        while True:  # newest step first; a corrupt one is moved aside and the next one tried
            latest = self.ckpt.latest_step()
            if latest is None:
                break
            try:
                state, data_state, _ = self.ckpt.restore(latest, target, self.param_shapes,
                                                         config=self.config.to_dict())
            except CorruptCheckpoint as e:
                self.ckpt.move_aside(e)
                continue
            self.data.set_state(data_state)
            log.info("resumed from step %d in %s", latest, self.ckpt.directory)
            return state, latest
        if self.ckpt.corrupt_dirs():  # never silently restart a run whose checkpoints all failed
            raise ValueError(
                f"no usable checkpoint in {self.workdir}: every step failed verification and was "
                f"moved aside ({', '.join(self.ckpt.corrupt_dirs())} in {self.ckpt.directory}); "
                "inspect them, or use a new --workdir to start over")
        with jax.set_mesh(self.mesh):
            state = jax.jit(self._fresh_state, out_shardings=self.state_shardings)()
        if self.config.train.get("init_from"):
            state = {**state, "params": self._params_from_run(target)}
        return state, 0

    def _params_from_run(self, target) -> dict:
        """``train.init_from``: the parameters of another run's checkpoint (its latest step, or
        ``train.init_from_step``); this run starts at step 0 with a fresh optimizer state."""
        tc = self.config.train
        directory = os.path.join(tc.init_from, "checkpoints")
        src = Checkpointer(directory)
        steps = sorted(src.manager.all_steps())
        step = steps[-1] if steps and tc.get("init_from_step") is None else tc.get("init_from_step")
        if step not in steps:
            raise ValueError(f"train.init_from={tc.init_from!r}: no checkpoint"
                             f"{'' if step is None else f' at step {step}'} in {directory}; "
                             f"allowed steps: {steps}")
        state, _, _ = src.restore(step, target, self.param_shapes)
        src.close()
        log.info("initialised parameters from step %d of %s", step, tc.init_from)
        return state["params"]

    def _fresh_state(self):
        return fresh_state(self.model_fn(), self.mdef, self.tx, int(self.config.train.seed),
                           self.ema_decay > 0)

    def eval_params(self, state: dict | None = None) -> dict:
        """The params evaluation and sampling use: the EMA when the run keeps one."""
        state = self.state if state is None else state
        return state.get("ema", state["params"])

    def _compile(self):
        step_fn = make_train_step(self.mdef, self.tx, self.schedule,
                                  int(self.config.train.get("accum_steps", 1)), self.objective,
                                  ema_decay=self.ema_decay)
        batch_sh = NamedSharding(self.mesh, self.batch_spec)
        self._train_step = jax.jit(step_fn, in_shardings=(self.state_shardings, batch_sh),
                                   out_shardings=(self.state_shardings, None), donate_argnums=0)
        mstate_sh = self.state_shardings.get("model_state")
        self._eval_step = jax.jit(make_eval_step(self.mdef, self.task.eval_sums),
                                  in_shardings=(self.p_shardings, mstate_sh, batch_sh))

    def _global(self, batch: dict) -> dict:
        return global_batch(batch, self.mesh, self.batch_spec)

    # ----------------------------------------------------------------- hooks
    def _log_hook(self, trainer, step: int) -> None:
        if not self._interval:
            return
        rows = jax.device_get(self._interval)
        avg = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        avg["first_step"] = self._interval_first  # the row averages steps first_step..step
        timed = len(rows) - self._untimed  # the compile step after a resume is not timed
        if timed:
            dt = (time.perf_counter() - self._interval_t0) / timed
            flops_per_dev = self.flops_per_step / dt / jax.device_count()
            avg.update({"step_time_s": dt, f"{self.task.unit}_per_s": self.task.items_per_step / dt,
                        "tflops_per_device": flops_per_dev / 1e12, "mfu": flops_per_dev / self.peak})
        self.last_train_metrics = avg
        self.writer.write(step, avg)
        if self._bar is not None:
            rate = avg.get(f"{self.task.unit}_per_s", float("nan"))
            self._bar.set_postfix({"loss": f"{avg['loss']:.3f}", f"{self.task.unit}/s": f"{rate:.0f}"})
        self._interval, self._interval_t0, self._untimed = [], time.perf_counter(), 0

    def evaluate(self, params, batches: list | None = None, model_state: dict | None = None
                 ) -> dict:
        """Validation metrics of the task (``task.report``; LM: mean CE per token "loss",
        bits/byte, token count, and every other eval sum, e.g. a looped model's ``loop_ce/t``,
        per token). ``batches``: other batches than the val set (e.g. ``data.seen_batches``);
        ``model_state``: default the train state's (the model runs in eval mode)."""
        if model_state is None and hasattr(self, "state"):
            model_state = self.state.get("model_state")
        sums: dict = {}
        with jax.set_mesh(self.mesh), activation_rules(self.mesh, self.rules):
            for batch in (self.data.val_batches() if batches is None else batches):
                out = jax.device_get(self._eval_step(params, model_state, self._global(batch)))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
        return self.task.report(sums)

    def _seen_metrics(self, step: int, val_loss: float) -> dict:
        """Loss on the run's first train batches (seen once step >= their count) beside the val
        loss: ``seen_loss`` and ``seen_minus_val`` (train.eval_seen; auto: when data repeats)."""
        n = len(self.data.val_batches())
        if not self.eval_seen or step < n:
            return {}
        if self._seen is None:
            self._seen = self.task.seen_batches(n)
        seen = self.evaluate(self.eval_params(), self._seen)["loss"]
        return {"seen_loss": seen, "seen_minus_val": seen - val_loss}

    def _eval_hook(self, trainer, step: int) -> None:
        t0 = time.perf_counter()
        self.last_eval = self.evaluate(self.eval_params())
        self.last_eval.update(self._seen_metrics(step, self.last_eval["loss"]))
        self.writer.write(step, {**self.last_eval, "eval_time_s": time.perf_counter() - t0},
                          split="val")
        if self._bar is not None:
            extra = "".join(f", {k} {self.last_eval[k]:.4f}" for k in ("bits_per_byte",)
                            if k in self.last_eval)
            self._bar.write(f"step {step}: val loss {self.last_eval['loss']:.4f}{extra}")
        if self._interval_t0 is not None:  # keep eval time out of the step-time average
            self._interval_t0 += time.perf_counter() - t0

    def _data_diagnostics(self) -> dict:
        """At a fresh start: the task's data diagnostics (LM: the embed factory's, e.g.
        over-encoding's table hits and collisions), logged at step 0 under split "diagnostics"."""
        metrics = self.task.data_diagnostics(self.total_steps)
        if metrics:
            self.writer.write(0, metrics, split="diagnostics")
        return metrics

    def _ckpt_hook(self, trainer, step: int) -> None:
        self.ckpt.save(step, self.state, self.data.get_state(), self._meta())

    # ----------------------------------------------------------------- run
    def _on_sigterm(self, signum, frame) -> None:
        self._stop_signal = True

    def run(self) -> dict:
        state, start = self._init_or_restore()
        self.state = state
        dropped = self.writer.start(start)  # forget rows/events a killed attempt logged after start
        self._compile()
        n_params = count_params(state["params"])
        log.info("model: %d parameters; mesh %s; peak %.1f GFLOP/s/device (%s)",
                 n_params, dict(self.mesh.shape), self.peak / 1e9, self.peak_source)
        old_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._bar = None
        if self.progress and jax.process_index() == 0:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=self.total_steps, initial=start, desc="train", dynamic_ncols=True,
                             file=sys.stdout)
        if start and jax.process_index() == 0:
            msg = (f"resumed from step {start} ({self.ckpt.directory}); dropped {dropped['rows']} "
                   f"metrics.jsonl rows and {dropped['events']} TensorBoard events after it")
            log.info(msg)
            if self._bar is not None:
                self._bar.write(msg)
            else:
                print(msg, flush=True)
        self.data_diagnostics = self._data_diagnostics() if start == 0 else {}
        status, step = "completed", start
        try:
            self._interval_t0 = time.perf_counter()
            with jax.set_mesh(self.mesh), activation_rules(self.mesh, self.rules):
                for step in range(start + 1, self.total_steps + 1):
                    batch = self._global(next(self.data.train_iter))
                    self.state, metrics = self._train_step(self.state, batch)
                    loss, pnorm = (float(metrics["loss"]), float(metrics["param_norm"]))
                    if not (np.isfinite(loss) and np.isfinite(pnorm)):
                        raise NonFiniteLossError(
                            f"non-finite training state at step {step} (loss {loss}, parameter "
                            f"norm {pnorm}); stopping without saving. The last good checkpoint is "
                            f"step {self.ckpt.latest_step()} in {self.ckpt.directory}. Lower "
                            "train.lr or enable train.grad_clip.")
                    if step == start + 1:  # exclude compilation from the step-time average
                        self._interval_t0 = time.perf_counter()
                    if step > start + 1 or start:  # a fresh run's first row starts at step 2
                        if not self._interval:
                            self._interval_first = step
                        self._interval.append(metrics)
                        self._untimed += step == start + 1
                    if self._bar is not None:
                        self._bar.update(1)
                    stopping = self._stop_signal
                    for hook in self.hooks:
                        if hook.due(step, self.total_steps) or (stopping and hook.name == "checkpoint"):
                            hook.fn(self, step)
                    if stopping:
                        status = "preempted"
                        break
                    if step == int(self.config.train.get("debug_kill_at_step", -1)):
                        self.ckpt.wait()  # fault injection for the resume tests: die like a crash
                        os.kill(os.getpid(), signal.SIGKILL)
        finally:
            signal.signal(signal.SIGTERM, old_handler)
            self.ckpt.wait()
            if self._bar is not None:
                self._bar.close()
        if status == "completed" and start == self.total_steps:
            # resumed at the final step (killed after its last checkpoint, before reporting):
            # nothing left to train, but the summary still carries the final evaluation
            with jax.set_mesh(self.mesh), activation_rules(self.mesh, self.rules):
                self.last_eval = self.evaluate(self.eval_params())
        self.writer.close()
        png = None
        if jax.process_index() == 0 and os.path.exists(self.writer.path):
            png = plot_loss_curve(self.writer.path, os.path.join(self.workdir, "loss.png"),
                                  title=f"{self.config.get('name', 'lm')} ({n_params / 1e6:.2f}M params)")
        return {"status": status, "step": step, "n_params": n_params,
                "data_diagnostics": self.data_diagnostics,
                "val": getattr(self, "last_eval", None),
                "train": getattr(self, "last_train_metrics", None), "loss_png": png}
