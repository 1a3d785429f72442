"""Load a trained model from a run directory (for generation and evaluation)."""
from __future__ import annotations

import os

import jax
import ml_collections
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.train.checkpoint import Checkpointer
from seedjax.train.optim import make_optimizer
from seedjax.train.state import abstract_model, model_def, param_labels, param_shapes


def load_model(workdir: str, step: int | None = None) -> tuple[LM, ml_collections.ConfigDict, int]:
    """(model with trained params, the run's config, checkpoint step) from ``workdir``."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise ValueError(f"--workdir {workdir!r} has no checkpoints/ directory (train first)")
    ckpt = Checkpointer(ckpt_dir)
    available = sorted(ckpt.manager.all_steps())
    if not available:
        raise ValueError(f"no checkpoint found in {ckpt_dir}")
    step = available[-1] if step is None else step
    if step not in available:
        raise ValueError(f"step={step}: no checkpoint at step {step} in {ckpt_dir}; "
                         f"allowed: {available}")
    ckpt.check(step)  # CorruptCheckpoint (a ValueError) naming the bad file
    config = ml_collections.ConfigDict(ckpt.read_meta(step)["config"])
    model_cfg = LMConfig.from_dict(config.model)
    model_fn = lambda: LM(model_cfg, rngs=nnx.Rngs(0))
    abstract = abstract_model(model_fn)
    tx, _ = make_optimizer(config.train, *param_labels(abstract))

    def fresh():
        params = nnx.to_pure_dict(nnx.state(model_fn(), nnx.Param))
        return {"step": jax.numpy.zeros((), "int32"), "params": params, "opt_state": tx.init(params),
                "rng": jax.random.key_data(jax.random.key(0))}

    # Restore onto one local device whatever topology saved it: the checkpoint's own sharding
    # metadata names the saving run's devices (e.g. 8 fake CPU devices, or another process's
    # device ids after a multi-process run), which need not exist here.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(fresh))
    state, _, _ = ckpt.restore(step, target, param_shapes(abstract))
    ckpt.close()
    model = model_def(abstract).merge(state["params"])
    return model, config, step
