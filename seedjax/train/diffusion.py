"""Diffusion objectives for the DiT (``config.task = "image_diffusion"``).

Time convention (both objectives): the model's time input s in [0, 1] is the signal level,
s = 0 pure noise, s = 1 clean data; "low timestep" in Race-DiT's Fig. 6 (fine detail) is s
near 1 here.

``train.objective = "flow"`` (rectified flow, the default; notes C.15): data x1, noise x0,
    x_s = s x1 + (1 - s) x0,  target v = x1 - x0,  loss = mean (model(x_s, s, y) - v)^2
    s ~ U(0, 1) (``t_sampling="uniform"``) or sigmoid(N(m, sd)) (``"logit_normal"``).
``train.objective = "ddpm"`` (epsilon prediction, DDPM linear betas 1e-4..0.02 over
``num_steps``): step n uniform in [0, N), x = sqrt(abar_n) x1 + sqrt(1 - abar_n) eps,
    target eps, model time s = 1 - (n + 1) / N.

Both: labels dropped to the null class with probability ``class_dropout`` (CFG training);
per-layer regularisation of Race-DiT (notes C.6): ``plr_weight`` sum_i mean (P_i - patch(target))^2
over the MoE layers' target-head predictions P_i (absent from inference); the model's
auxiliary losses (e.g. the router similarity loss, weighted in the MoE config) are added.

Eval (``diffusion_eval_sums``): each val image i gets its own noise and time from
fold_in(EVAL_KEY, index_i), so the val loss is deterministic and independent of the batch
composition; sums of per-image MSE overall and in ``TIME_BUCKETS`` bins of s.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from seedjax.nn.dit import patchify
from seedjax.validation import check_choice, dataclass_from_dict

DIFFUSION_OBJECTIVES = ("flow", "ddpm")
T_SAMPLINGS = ("uniform", "logit_normal")
TIME_BUCKETS = 4
EVAL_KEY = 20250320


def _check_unit(name: str, v: float, *, closed: bool = False) -> float:
    ok = isinstance(v, (int, float)) and (0 <= v <= 1 if closed else 0 <= v < 1)
    if not ok:
        raise ValueError(f"train.objective_kwargs.{name}={v!r} must be in [0, 1"
                         f"{']' if closed else ')'}")
    return float(v)


@dataclasses.dataclass(frozen=True)
class DiffusionObjective:
    """Fields: kind (DIFFUSION_OBJECTIVES), t_sampling, logit_mean, logit_std, class_dropout,
    plr_weight (per MoE layer), num_steps (ddpm)."""
    kind: str = "flow"
    t_sampling: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    class_dropout: float = 0.1
    plr_weight: float = 0.01
    num_steps: int = 1000
    uses_rng = True
    trainable_groups = None

    def __post_init__(self):
        check_choice("train.objective", self.kind, DIFFUSION_OBJECTIVES)
        check_choice("train.objective_kwargs.t_sampling", self.t_sampling, T_SAMPLINGS)
        _check_unit("class_dropout", self.class_dropout)
        if not (isinstance(self.plr_weight, (int, float)) and self.plr_weight >= 0):
            raise ValueError(f"train.objective_kwargs.plr_weight={self.plr_weight!r} must be >= 0")
        if not (isinstance(self.logit_std, (int, float)) and self.logit_std > 0):
            raise ValueError(f"train.objective_kwargs.logit_std={self.logit_std!r} must be > 0")
        if not (isinstance(self.num_steps, int) and self.num_steps >= 2):
            raise ValueError(f"train.objective_kwargs.num_steps={self.num_steps!r} must be an "
                             "integer >= 2")

    # ------------------------------------------------------------------ schedule
    def alpha_bar(self) -> jax.Array:
        betas = jnp.linspace(1e-4, 0.02, self.num_steps, dtype=jnp.float32)
        return jnp.cumprod(1.0 - betas)

    def sample_time(self, key: jax.Array, shape) -> jax.Array:
        """Flow: s in (0, 1); ddpm: the step index n (float) in [0, N)."""
        if self.kind == "ddpm":
            return jax.random.randint(key, shape, 0, self.num_steps).astype(jnp.float32)
        if self.t_sampling == "logit_normal":
            return jax.nn.sigmoid(self.logit_mean + self.logit_std * jax.random.normal(key, shape))
        return jax.random.uniform(key, shape)

    def corrupt(self, x1: jax.Array, noise: jax.Array, time: jax.Array
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(x_s, model time s [B], regression target)."""
        if self.kind == "ddpm":
            n = time.astype(jnp.int32)
            ab = self.alpha_bar()[n][:, None, None, None]
            x = jnp.sqrt(ab) * x1 + jnp.sqrt(1 - ab) * noise
            return x, 1.0 - (time + 1.0) / self.num_steps, noise
        s = time[:, None, None, None]
        return s * x1 + (1 - s) * noise, time, x1 - noise

    # ------------------------------------------------------------------ loss
    def loss(self, model, batch: dict, step: jax.Array, *, rng: jax.Array
             ) -> tuple[jax.Array, dict]:
        del step
        x1, y = batch["images"].astype(jnp.float32), batch["labels"]
        k_noise, k_time, k_drop = jax.random.split(rng, 3)
        noise = jax.random.normal(k_noise, x1.shape)
        x, s, target = self.corrupt(x1, noise, self.sample_time(k_time, x1.shape[:1]))
        null = model.config.num_classes
        y = jnp.where(jax.random.bernoulli(k_drop, self.class_dropout, y.shape), null, y)
        out = model(x, s, y)
        mse = jnp.mean(jnp.square(out.output - target))
        metrics = {"mse": mse}
        total = mse
        if out.predictions is not None:
            tgt = patchify(target, model.config.patch_size)
            per_layer = jnp.mean(jnp.square(out.predictions - tgt[None]), axis=(1, 2, 3))
            plr = jnp.sum(per_layer)
            metrics["plr"] = plr
            total = total + self.plr_weight * plr
        for k, v in out.aux_losses.items():
            v = jnp.asarray(v, jnp.float32)
            metrics[f"aux/{k}"] = v
            total = total + v
        metrics.update(routing_metrics(out.stats))
        return total, metrics

    # ------------------------------------------------------------------ eval
    def eval_sums(self, model, batch: dict) -> dict:
        x1, y = batch["images"].astype(jnp.float32), batch["labels"]
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(EVAL_KEY), i))(
            batch["index"])
        noise = jax.vmap(lambda k, im: jax.random.normal(jax.random.fold_in(k, 0), im.shape))(
            keys, x1)
        time = jax.vmap(lambda k: self.sample_time(jax.random.fold_in(k, 1), ()))(keys)
        x, s, target = self.corrupt(x1, noise, time)
        out = model(x, s, y)
        per_image = jnp.mean(jnp.square(out.output - target), axis=(1, 2, 3))
        bucket = jnp.clip((s * TIME_BUCKETS).astype(jnp.int32), 0, TIME_BUCKETS - 1)
        sums = {"se_sum": jnp.sum(per_image), "images": jnp.float32(x1.shape[0])}
        for b in range(TIME_BUCKETS):
            sel = bucket == b
            sums[f"bucket{b}_se"] = jnp.sum(jnp.where(sel, per_image, 0.0))
            sums[f"bucket{b}_n"] = jnp.sum(sel.astype(jnp.float32))
        for k, v in routing_metrics(out.stats).items():
            sums[f"{k}_sum"] = v * x1.shape[0]
        return sums


def routing_metrics(stats: list) -> dict:
    """Scalars logged from the MoE layers' statistics: means over layers of every scalar
    statistic (e.g. ``moe/max_violation``, ``moe/tau``)."""
    if not stats:
        return {}
    out = {}
    for name in stats[0]:
        vals = [jnp.asarray(s[name], jnp.float32) for s in stats]
        if vals[0].ndim == 0:
            out[f"moe/{name}"] = jnp.mean(jnp.stack(vals))
    return out


def diffusion_report(sums: dict) -> dict:
    """Val metrics from summed eval sums: "loss" (mean per-image MSE), per time bucket
    ``loss_s<k>`` (s in [k/4, (k+1)/4)), routing statistics averaged over images."""
    n = max(sums.get("images", 0.0), 1.0)
    out = {"loss": sums.get("se_sum", 0.0) / n, "images": sums.get("images", 0.0)}
    for b in range(TIME_BUCKETS):
        cnt = sums.get(f"bucket{b}_n", 0.0)
        if cnt:
            out[f"loss_s{b}"] = sums[f"bucket{b}_se"] / cnt
    for k, v in sums.items():
        if k.startswith("moe/") and k.endswith("_sum"):
            out[k[:-4]] = v / n
    return out


def make_diffusion_objective(name: str, kwargs: dict | None = None) -> DiffusionObjective:
    return dataclass_from_dict(DiffusionObjective, kwargs or {}, "train.objective_kwargs",
                               kind=name)
