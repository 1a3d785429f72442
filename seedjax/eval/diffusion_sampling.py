"""Samplers for a DiT trained with ``seedjax.train.diffusion`` (time s: 0 noise -> 1 data).

* ``"euler"`` / ``"heun"`` (flow objective): integrate dx/ds = v(x, s) from s = 0 (Gaussian
  noise) to s = 1 in ``steps`` uniform steps; Heun adds the trapezoid correction (2 model calls
  per step, the last step Euler).
* ``"ddim"`` (ddpm objective, eta = 0): ``steps`` evenly spaced DDPM steps from N - 1 to 0,
  x0_hat = (x - sqrt(1 - abar) eps) / sqrt(abar), x <- sqrt(abar') x0_hat + sqrt(1 - abar') eps.

Classifier-free guidance on all channels: pred = u + w (c - u) with c the conditional and u
the null-class prediction, evaluated as one batch of 2B; w = 1 calls the conditional model
only (identical to it). In eval mode the Race-DiT layers route by their threshold, so the
conditional and unconditional halves do not compete and a sample does not depend on the
others in the batch. Deterministic for a key: noise comes from ``key`` only.

``make_sampler(mdef, objective, ...)`` -> jitted ``f(params, model_state, labels [B], key) ->
images [B, H, W, C]`` in [-1, 1] (clipped).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from seedjax.validation import check_choice, check_int

SAMPLERS = ("euler", "heun", "ddim")


def guided(model, x: jax.Array, s: jax.Array, y: jax.Array, cfg_scale: float) -> jax.Array:
    """The (guided) prediction at x [B, H, W, C], time s [B], labels y [B]."""
    if cfg_scale == 1.0:
        return model(x, s, y).output
    null = jnp.full_like(y, model.config.num_classes)
    out = model(jnp.concatenate([x, x]), jnp.concatenate([s, s]),
                jnp.concatenate([y, null])).output
    cond, uncond = jnp.split(out, 2)
    return uncond + cfg_scale * (cond - uncond)


def check_sampler(sampler: str, objective_kind: str, steps: int, cfg_scale: float) -> None:
    check_choice("sample.sampler", sampler, SAMPLERS)
    check_int("sample.steps", steps)
    want = "ddpm" if sampler == "ddim" else "flow"
    if objective_kind != want:
        raise ValueError(f"sample.sampler={sampler!r} needs train.objective={want!r} (got "
                         f"{objective_kind!r}); allowed for it: "
                         f"{['ddim'] if objective_kind == 'ddpm' else ['euler', 'heun']}")
    if not (isinstance(cfg_scale, (int, float)) and cfg_scale >= 0):
        raise ValueError(f"sample.cfg_scale={cfg_scale!r} must be a number >= 0")


def sample_images(model, objective, labels: jax.Array, key: jax.Array, *, steps: int = 50,
                  sampler: str = "euler", cfg_scale: float = 1.0) -> jax.Array:
    """Images [B, H, W, C] in [-1, 1] for ``labels`` (model in eval mode)."""
    check_sampler(sampler, objective.kind, steps, cfg_scale)
    c = model.config
    x = jax.random.normal(key, (labels.shape[0], c.image_size, c.image_size, c.channels))
    b = labels.shape[0]
    f = lambda x, s: guided(model, x, jnp.full((b,), s, jnp.float32), labels, cfg_scale)
    if sampler == "ddim":
        ab = objective.alpha_bar()
        n_total = objective.num_steps
        idx = jnp.round(jnp.linspace(n_total - 1, 0, steps)).astype(jnp.int32)

        def ddim(i, x):
            n = idx[i]
            prev = jnp.where(i + 1 < steps, ab[idx[jnp.minimum(i + 1, steps - 1)]], 1.0)
            eps = f(x, 1.0 - (n + 1.0) / n_total)
            x0 = (x - jnp.sqrt(1 - ab[n]) * eps) / jnp.sqrt(ab[n])
            return jnp.sqrt(prev) * x0 + jnp.sqrt(1 - prev) * eps
        x = jax.lax.fori_loop(0, steps, ddim, x)
    else:
        dt = 1.0 / steps

        def euler(i, x):
            s = i * dt
            v = f(x, s)
            if sampler == "euler":
                return x + dt * v
            x_next = x + dt * v
            v2 = f(x_next, s + dt)
            return jnp.where(i + 1 < steps, x + dt * 0.5 * (v + v2), x_next)
        x = jax.lax.fori_loop(0, steps, euler, x)
    return jnp.clip(x, -1.0, 1.0)


def make_sampler(mdef, objective, *, steps: int, sampler: str, cfg_scale: float) -> Callable:
    """Jitted ``f(params, model_state, labels, key) -> images`` (eval mode)."""
    check_sampler(sampler, objective.kind, steps, cfg_scale)

    def run(params, model_state, labels, key):
        model = mdef.merge(params, model_state, train=False)
        return sample_images(model, objective, labels, key, steps=steps, sampler=sampler,
                             cfg_scale=cfg_scale)
    return jax.jit(run)


def generate_per_class(trainer, per_class: int, *, seed: int | None = None,
                       steps: int | None = None) -> tuple:
    """(images [C per_class, H, W, C] numpy, labels) from a trained ``Trainer``'s eval params
    (EMA when kept), ``per_class`` images of every class in order, with the config's sampler,
    CFG scale and (unless given) steps and seed."""
    import numpy as np

    from seedjax.eval.image_grid import class_grid_labels
    s = trainer.config.sample
    f = make_sampler(trainer.mdef, trainer.objective,
                     steps=int(s.steps if steps is None else steps), sampler=s.sampler,
                     cfg_scale=float(s.cfg_scale))
    labels = class_grid_labels(trainer.model_cfg.num_classes, per_class)
    state = jax.device_get(trainer.state)
    images = f(trainer.eval_params(state), state.get("model_state"), jnp.asarray(labels),
               jax.random.key(int(s.seed if seed is None else seed)))
    return np.asarray(images), labels


def write_class_grid(trainer, path: str) -> str:
    """``sample.per_class`` images of every class (``generate_per_class``) as a PNG grid, one
    row per class."""
    from seedjax.eval.image_grid import save_grid
    images, _ = generate_per_class(trainer, int(trainer.config.sample.per_class))
    return save_grid(images, path, rows=trainer.model_cfg.num_classes)
