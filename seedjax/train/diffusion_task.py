"""The image-diffusion task of the trainer (``config.task = "image_diffusion"``): a DiT
(``seedjax.models.dit``) on labelled images (``seedjax.data.images``) with a diffusion
objective (``seedjax.train.diffusion``). Interface: ``seedjax.train.lm_task``.

Throughput is in images per second; MFU counts 3 x the DiT's forward FLOPs per image. The val
"loss" is the mean per-image MSE against the objective's target on fixed noise (EMA weights
when ``train.ema_decay`` > 0), with per-time-bucket losses ``loss_s0..3``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.data.images import ImageData
from seedjax.models.dit import DiT, DiTConfig, forward_flops_per_image
from seedjax.train.diffusion import diffusion_report, make_diffusion_objective


class DiffusionTask:
    unit = "images"

    def __init__(self, config, workdir: str, *, data: bool = True):
        """``data=False``: no images loaded (``self.data`` None), for compile checks and plans."""
        del workdir
        tc = config.train
        c = self.model_cfg = DiTConfig.from_dict(config.model)
        seed = int(tc.seed)
        self.batch_size = int(config.data.batch_size)
        self.model_fn = lambda: DiT(c, rngs=nnx.Rngs(seed))
        self.objective = make_diffusion_objective(tc.get("objective", "flow"),
                                                  dict(tc.get("objective_kwargs") or {}))
        self.ema_decay = float(tc.get("ema_decay", 0.0))
        self.items_per_step = self.batch_size
        self.flops_per_step = 3 * sum(forward_flops_per_image(c).values()) * self.items_per_step
        self.data = None
        if data:
            self._load_data(config, c)

    def _load_data(self, config, c: DiTConfig) -> None:
        self.data = ImageData(source=config.data.source, batch_size=int(config.data.batch_size),
                              seed=int(config.train.seed), val_fraction=float(config.data.val_fraction),
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

    def batch_shapes(self) -> dict:
        """The global train batch as ShapeDtypeStructs: images float32 [B, H, W, C], labels
        and index int32 [B]."""
        c, b = self.model_cfg, self.batch_size
        return {"images": jax.ShapeDtypeStruct((b, c.image_size, c.image_size, c.channels),
                                               jnp.float32),
                "labels": jax.ShapeDtypeStruct((b,), jnp.int32),
                "index": jax.ShapeDtypeStruct((b,), jnp.int32)}

    def eval_sums(self, model, batch: dict) -> dict:
        return self.objective.eval_sums(model, batch)

    report = staticmethod(diffusion_report)

    def data_diagnostics(self, total_steps: int) -> dict:
        return {}
