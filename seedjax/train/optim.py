"""Optimizer: AdamW with warmup + cosine, global-norm clipping, weight-decay masks and
per-parameter-group learning-rate multipliers. The optimizer state's tree structure depends
only on the parameters, never on optional settings (clipping on/off, group multipliers).

Groups come from each parameter's ``lr_group`` metadata (``seedjax.nn.params.param``) and decay
masks from its ``weight_decay`` metadata, so modules declare e.g. memory value tables as
``lr_group="memory_values"`` and the config sets ``train.lr_multipliers.memory_values = 4.0`` or
a decaying or absolute schedule (see ``group_lr``).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(peak_lr: float, warmup_steps: int, total_steps: int,
                  min_lr_ratio: float = 0.1) -> optax.Schedule:
    """Linear warmup 0 -> peak over ``warmup_steps``, cosine decay to ``min_lr_ratio * peak``."""
    if total_steps < 1:
        raise ValueError(f"train.steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"train.warmup_steps={warmup_steps} must be in [0, train.steps={total_steps}]")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * step / max(warmup_steps, 1)
        progress = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
        cos = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, peak_lr * cos)

    return schedule


def group_lr(spec: Mapping[str, Any] | float, base: optax.Schedule, total_steps: int) -> Callable:
    """Learning rate of one parameter group as a function of step.

    ``spec``:
    * a float m: ``m * base(step)`` (a constant multiplier of the base schedule);
    * ``{"start": a, "end": b, "decay_steps": n}``: the multiplier goes linearly from a to b over
      n steps, then stays b (UltraMem's decaying value-table multiplier, e.g. 4 -> 1);
    * ``{"lr": x}``: a constant absolute learning rate x, independent of the base schedule and its
      warmup (PKM trains its value table at a constant 1e-3).
    """
    if isinstance(spec, (int, float)):
        return lambda step: float(spec) * base(step)
    spec = dict(spec)
    if set(spec) == {"lr"}:
        return lambda step: jnp.float32(float(spec["lr"]))
    allowed = {"start", "end", "decay_steps"}
    if set(spec) - allowed or "start" not in spec:
        raise ValueError(f"train.lr_multipliers entry {spec} must be a number, {{'lr': x}} or use "
                         f"keys {sorted(allowed)} (start required)")
    start, end = float(spec["start"]), float(spec.get("end", spec["start"]))
    n = int(spec.get("decay_steps", total_steps))

    def lr(step):
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(n, 1), 0.0, 1.0)
        return (start + (end - start) * frac) * base(step)

    return lr


class GroupLRState(NamedTuple):
    count: jax.Array


def scale_by_group_lr(groups: Any, base: optax.Schedule,
                      group_lrs: Mapping[str, Callable]) -> optax.GradientTransformation:
    """Scales each update by ``-lr(step)`` of its group (``base`` for groups not listed).

    ``groups``: tree (same structure as params) of group names.
    """
    def init(params):
        return GroupLRState(jnp.zeros((), jnp.int32))

    def update(updates, state, params=None):
        lrs = {g: f(state.count) for g, f in group_lrs.items()}
        default = base(state.count)
        new = jax.tree.map(lambda u, g: -u * lrs.get(g, default), updates, groups)
        return new, GroupLRState(state.count + 1)

    return optax.GradientTransformation(init, update)


def trainable_of(train_cfg: Mapping[str, Any], default: Sequence[str] | None = None
                 ) -> tuple[str, ...] | None:
    """``train.trainable_groups`` ("a,b" or a sequence; None: every group, or ``default``, the
    objective's choice) as a tuple of group names, or None for all."""
    spec = train_cfg.get("trainable_groups")
    if spec is None:
        return None if default is None else tuple(default)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    return tuple(n.strip() for n in names if n.strip())


def make_optimizer(train_cfg: Mapping[str, Any], decay_mask: Any, groups: Any,
                   trainable: Sequence[str] | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW from the ``train`` config block. Returns (transformation, lr schedule).

    ``trainable``: parameter groups that learn (None: all); every other group gets learning
    rate 0 (no update, no weight decay; Ouro Stage II trains only "exit_gate"). The state's
    structure is the same either way, so a run can start from another's checkpoint."""
    lr = float(train_cfg["lr"])
    steps = int(train_cfg["steps"])
    schedule = warmup_cosine(lr, int(train_cfg.get("warmup_steps", 0)), steps,
                             float(train_cfg.get("min_lr_ratio", 0.1)))
    known = set(jax.tree.leaves(groups))
    mults = dict(train_cfg.get("lr_multipliers", {}) or {})
    unknown = sorted(set(mults) - known - {"default"})
    if unknown:
        raise ValueError(f"train.lr_multipliers names groups {unknown} that no parameter has; "
                         f"parameter groups: {sorted(known)}")
    group_lrs = {g: group_lr(spec, schedule, steps) for g, spec in mults.items()}
    if trainable is not None:
        bad = sorted(set(trainable) - known)
        if bad or not trainable:
            raise ValueError(f"train.trainable_groups={list(trainable)} must name parameter "
                             f"groups; allowed: {sorted(known)}")
        for g in known - set(trainable):
            group_lrs[g] = lambda step: jnp.float32(0.0)
    clip = float(train_cfg.get("grad_clip") or 0.0)
    if not clip >= 0:
        raise ValueError(f"train.grad_clip={clip} must be >= 0 (0 = off)")
    # The clip slot is always there (identity when off; both have an empty state), so the
    # optimizer state's structure does not depend on train.grad_clip: a run resumes across a
    # change of it, and runs with clipping on compute exactly what they did before.
    parts = [
        optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(),
        optax.scale_by_adam(b1=float(train_cfg.get("b1", 0.9)), b2=float(train_cfg.get("b2", 0.95)),
                            eps=float(train_cfg.get("eps", 1e-8))),
        optax.add_decayed_weights(float(train_cfg.get("weight_decay", 0.0)), mask=decay_mask),
        scale_by_group_lr(groups, schedule, group_lrs),
    ]
    return optax.chain(*parts), schedule
