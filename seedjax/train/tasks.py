"""``config.task`` -> the task object the trainer runs (interface: ``seedjax.train.lm_task``).

* ``"lm"`` (default): decoder LM on token windows (``LMTask``).
* ``"image_diffusion"``: class-conditional DiT on images (``seedjax.train.diffusion_task``).
"""
from __future__ import annotations

TASKS = ("lm", "image_diffusion")


def task_name(config) -> str:
    name = config.get("task", "lm") if hasattr(config, "get") else "lm"
    if name not in TASKS:
        raise ValueError(f"task={name!r} is not allowed; allowed: {list(TASKS)}")
    return name


def make_task(config, workdir: str, *, data: bool = True):
    """The task of ``config``; ``data=False`` builds no data pipeline (model, objective, FLOPs
    and ``batch_shapes()`` only: compile checks and plans)."""
    name = task_name(config)
    if name == "lm":
        from seedjax.train.lm_task import LMTask
        return LMTask(config, workdir, data=data)
    from seedjax.train.diffusion_task import DiffusionTask
    return DiffusionTask(config, workdir, data=data)
