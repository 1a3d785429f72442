"""The image-diffusion task of the trainer (``config.task = "image_diffusion"``): a DiT
(``seedjax.models.dit``) on labelled images (``seedjax.data.images``) with a diffusion
objective (``seedjax.train.diffusion``). Interface: ``seedjax.train.lm_task``.

Throughput is in images per second; MFU counts 3 x the DiT's forward FLOPs per image. The val
"loss" is the mean per-image MSE against the objective's target on fixed noise (EMA weights
when ``train.ema_decay`` > 0), with per-time-bucket losses ``loss_s0..3``.
"""
from __future__ import annotations

import jax
from flax import nnx

from seedjax.data.images import ImageData
from seedjax.models.dit import DiT, DiTConfig, forward_flops_per_image
from seedjax.train.diffusion import diffusion_report, make_diffusion_objective


class DiffusionTask:
    unit = "images"

    def __init__(self, config, workdir: str):
        del workdir
        tc = config.train
        c = self.model_cfg = DiTConfig.from_dict(config.model)
        seed = int(tc.seed)
        self.data = ImageData(source=config.data.source, batch_size=int(config.data.batch_size),
                              seed=seed, val_fraction=float(config.data.val_fraction),
                              max_val_batches=int(config.data.max_val_batches),
                              process_index=jax.process_index(),
                              process_count=jax.process_count())
        want = (c.image_size, c.image_size, c.channels)
        if self.data.image_shape != want:
            raise ValueError(f"data.source={config.data.source!r} has images of shape "
                             f"{self.data.image_shape}; the model expects {want} "
                             "(model.image_size, model.channels)")
        if self.data.num_classes > c.num_classes:
            raise ValueError(f"data.source={config.data.source!r} has {self.data.num_classes} "
                             f"classes but model.num_classes={c.num_classes}")
        self.model_fn = lambda: DiT(c, rngs=nnx.Rngs(seed))
        self.objective = make_diffusion_objective(tc.get("objective", "flow"),
                                                  dict(tc.get("objective_kwargs") or {}))
        self.ema_decay = float(tc.get("ema_decay", 0.0))
        self.items_per_step = int(config.data.batch_size)
        self.flops_per_step = 3 * sum(forward_flops_per_image(c).values()) * self.items_per_step

    def eval_sums(self, model, batch: dict) -> dict:
        return self.objective.eval_sums(model, batch)

    report = staticmethod(diffusion_report)

    def data_diagnostics(self, total_steps: int) -> dict:
        return {}
