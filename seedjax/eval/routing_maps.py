"""Routing diagnostics of a Race-DiT (MoE DiT) on held-out images at a grid of time levels
(Race-DiT Fig. 5 / Fig. 6 / Table 2; notes C.11 items 3-6).

Time: the model's s in [0, 1] is the signal level, s = 0 pure noise, s = 1 clean data
(``seedjax.train.diffusion``); the paper's "low timestep index" (fine detail) is s near 1.
Each val image i gets one fixed noise draw, normal(fold_in(key, i)), reused at every level, so
only s differs between its items; x_s = s x1 + (1 - s) noise for the flow objective (the DDPM
objective maps s to its nearest step, ``objective_time``). Labels are the true classes.

Shapes: N images [N, H, W, C] in [-1, 1], S levels, M MoE layers (block indices
``moe_layers``), E experts, k experts per token, L = gh gw patch tokens.

* ``time_levels(n) -> [n]``: s = (i + 0.5) / n.
* ``stroke_mask(images, patch, threshold=-0.9) -> [N, L] bool``: the clean patch's mean pixel
  > threshold (stroke), else background.
* ``allocation(model, images, labels, levels, key=..., train=...) -> Allocation``: experts
  per token of every (image, level) item.
    train=False (eval mode: the EMA threshold of an Expert Race, else the router's rule):
      one level per forward batch, so per-level block-output norms are exact.
    train=True (training mode, the batch race): batches of ``batch_size`` items that mix the
      levels evenly (pass r of the images puts image i at level (i + r) mod S), i.e. the
      global top-K decides which timesteps get compute, as in training. Items beyond the last
      full batch are skipped (``Allocation.items``). The model's threshold is not updated.
* ``batch_one(model, images, labels, levels, key=...) -> BatchOne``: every item run alone
  (batch 1) with the threshold (eval mode) and with the batch race (training mode: a race
  over one image selects exactly L k pairs, so k per token on average).
* ``summary_rows(alloc) -> list[dict]``: one JSON-able row per MoE layer.

Statistics are computed from the per-token expert counts (``experts_per_token_map`` of the
DiT's MoE stats) and the per-forward ``expert_load`` / ``combination_usage``: expert load
pools the selected pairs of all forwards (counts = load x pairs per forward), MaxVio is taken
from the pooled counts, combination usage (the 95% rule) is the mean over forwards.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.nn.dit import patchify

STATS = ("expert_load", "combination_usage", "dropped")


# ----------------------------------------------------------------------------- model facts
def moe_layers(model) -> list[int]:
    """Block indices of the model's MoE layers; ValueError (one line) if it has none."""
    c = model.config
    layers = [i for i in range(c.n_layers) if c.is_moe_layer(i)]
    if not layers:
        raise ValueError(f"the model has no MoE layers (model.ffn={c.ffn!r}); routing "
                         "diagnostics need a Race-DiT run (model.ffn='moe')")
    return layers


def inference_rule(model) -> str:
    """How the model routes in eval mode, in words."""
    m = model.config.moe_config()
    if m.router == "expert_race":
        return ("EMA threshold" if m.uses_threshold else
                "batch race (the run keeps no threshold: inference races over the batch)")
    return {"token_choice": "token choice (k per token)",
            "expert_choice_image": "expert choice per image",
            "expert_choice_batch": "expert choice over the batch"}[m.router]


def thresholds(model) -> np.ndarray | None:
    """[M] float32 EMA thresholds tau of the MoE layers (None: the run keeps none)."""
    taus = [blk.ffn.threshold.tau[...] for i, blk in enumerate(model.blocks)
            if model.config.is_moe_layer(i) and blk.ffn.threshold is not None]
    return np.asarray(jax.device_get(taus), np.float32) if taus else None


def time_levels(n: int = 8) -> np.ndarray:
    """[n] float32 levels s = (i + 0.5) / n (no pure noise, no clean image)."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"number of time levels {n!r} must be an integer >= 1")
    return ((np.arange(n) + 0.5) / n).astype(np.float32)


def stroke_mask(images: np.ndarray, patch: int, threshold: float = -0.9) -> np.ndarray:
    """[N, L] bool: mean pixel of the clean patch > ``threshold`` (pixels in [-1, 1])."""
    return np.asarray(jnp.mean(patchify(jnp.asarray(images, jnp.float32), patch), -1)
                      > threshold)


def objective_time(objective, s: np.ndarray) -> np.ndarray:
    """The ``objective.corrupt`` time argument for model time ``s``: s itself (flow), else the
    DDPM step n whose model time 1 - (n + 1) / N is nearest."""
    if objective is None or objective.kind == "flow":
        return np.asarray(s, np.float32)
    n = objective.num_steps
    return np.clip(np.round((1.0 - np.asarray(s)) * n - 1), 0, n - 1).astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _noised(objective, x1, time, index, key):
    noise = jax.vmap(lambda i, im: jax.random.normal(jax.random.fold_in(key, i), im.shape))(
        index, x1)
    if objective is None:
        s = time[:, None, None, None]
        return s * x1 + (1 - s) * noise, time
    x, s, _ = objective.corrupt(x1, noise, time)
    return x, s


# ----------------------------------------------------------------------------- forwards
def _summaries(out) -> dict:
    st = out.stats
    res = {"maps": jnp.stack([d["experts_per_token_map"] for d in st]),     # [M, B, L]
           "branch_norms": out.branch_norms,                              # [n_layers, 2]
           "output": out.output}                                          # [B, H, W, C]
    for k in STATS:
        if k in st[0]:
            res[k] = jnp.stack([jnp.asarray(d[k], jnp.float32) for d in st])
    return res


def _run(graphdef, state, x, s, y, train: bool) -> dict:
    model = nnx.merge(graphdef, jax.tree.map(lambda v: v, state))  # fresh Variables here
    if train:
        model.train()
    else:
        model.eval()
    return _summaries(model(x, s, y))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _forward(graphdef, state, x, s, y, train):
    return _run(graphdef, state, x, s, y, train)


@functools.partial(jax.jit, static_argnums=0)
def _forward_each(graphdef, state, x, s, y):
    def one(a):
        xi, si, yi = (v[None] for v in a)
        return {mode: _run(graphdef, state, xi, si, yi, train)["maps"][:, 0]
                for mode, train in (("eval", False), ("train", True))}
    return jax.lax.map(one, (x, s, y))


def forward(model, x, s, y, *, train: bool) -> dict:
    """One jitted forward (compiled once per model structure, mode and shape; the model's
    own state is left as it was, so a training-mode race does not move the threshold):
    {"maps" [M, B, L] int32 experts per token, "branch_norms" [n_layers, 2], "output"
    [B, H, W, C] the model's prediction, "expert_load" [M, E], "combination_usage" [M],
    "dropped" [M]}."""
    graphdef, state = nnx.split(model)
    return jax.device_get(_forward(graphdef, state, jnp.asarray(x), jnp.asarray(s),
                                   jnp.asarray(y), bool(train)))


def forward_each(model, x, s, y) -> dict:
    """Every row alone (batch 1; ``lax.map`` in one compiled call) in both modes:
    {"eval": [B, M, L], "train": [B, M, L]} int32 experts per token."""
    graphdef, state = nnx.split(model)
    return jax.device_get(_forward_each(graphdef, state, jnp.asarray(x), jnp.asarray(s),
                                        jnp.asarray(y)))


# ----------------------------------------------------------------------------- allocation
@dataclasses.dataclass
class Allocation:
    """Experts per token over the (image, level) items of one routing mode.

    train        True: training mode (batch race over mixed-level batches); False: eval mode
    levels       [S] model time s (1 = data)
    k, n_experts routing budget k and E
    layers       [M] block indices of the MoE layers
    maps         [M, S, N, L] int32 experts per token of each item; -1 where not run
    stroke       [N, L] bool stroke patches (``stroke_mask``)
    per_level    [M, S] mean experts per token (Fig. 6 temporal allocation)
    spatial      [M, S, gh, gw] mean over images per patch position
    content      [M, S, 2] mean over (background, stroke) patches (NaN where none)
    histogram    [M, S, E + 1] tokens with 0..E experts
    expert_load  [M, E] fraction of all selected pairs (pooled over forwards)
    max_violation [M] (max - mean) / mean of the pooled per-expert counts
    combination_usage [M] fraction of the E(E-1)/2 pairs holding 95% of co-activations (mean
                 over forwards)
    dropped      [M] pairs beyond the static pair bound, summed (0 expected)
    tau          [M] the layers' EMA thresholds (``thresholds``), or None
    branch_norms [S, n_layers, 2] | None  RMS of each block's gated attention / FFN output per
                 level (eval mode only: its batches hold one level each)
    items, batches  items run and forward batches
    """

    train: bool
    levels: np.ndarray
    k: int
    n_experts: int
    layers: list
    maps: np.ndarray
    stroke: np.ndarray
    expert_load: np.ndarray
    max_violation: np.ndarray
    combination_usage: np.ndarray
    dropped: np.ndarray
    tau: np.ndarray | None
    branch_norms: np.ndarray | None
    items: int
    batches: int

    @property
    def valid(self) -> np.ndarray:
        return self.maps >= 0

    @property
    def per_level(self) -> np.ndarray:
        return _masked_mean(self.maps, self.valid, axis=(2, 3))

    @property
    def per_layer(self) -> np.ndarray:
        """[M] mean experts per token over every item run."""
        return _masked_mean(self.maps, self.valid, axis=(1, 2, 3))

    @property
    def spatial(self) -> np.ndarray:
        m, s, _, length = self.maps.shape
        g = int(round(np.sqrt(length)))
        return _masked_mean(self.maps, self.valid, axis=2).reshape(m, s, g, g)

    @property
    def content(self) -> np.ndarray:
        out = [_masked_mean(self.maps, self.valid & (self.stroke == part), axis=(2, 3))
               for part in (False, True)]
        return np.stack(out, -1)

    @property
    def histogram(self) -> np.ndarray:
        m, s = self.maps.shape[:2]
        hist = np.zeros((m, s, self.n_experts + 1), np.int64)
        for i in range(m):
            for j in range(s):
                v = self.maps[i, j][self.valid[i, j]]
                hist[i, j] = np.bincount(v, minlength=self.n_experts + 1)
        return hist


def _masked_mean(a: np.ndarray, mask: np.ndarray, axis) -> np.ndarray:
    a, mask = np.broadcast_arrays(a, mask)
    n = np.sum(mask, axis=axis)
    tot = np.sum(np.where(mask, a, 0), axis=axis, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, tot / np.maximum(n, 1), np.nan)


def _items(n: int, s: int, train: bool, batch_size: int) -> list[np.ndarray]:
    """Forward batches as arrays of (image, level) rows."""
    if not train:  # one level per batch (chunks of batch_size images)
        return [np.stack([np.arange(a, min(a + batch_size, n)), np.full(min(batch_size, n - a),
                                                                         j)], 1)
                for j in range(s) for a in range(0, n, batch_size)]
    img = np.tile(np.arange(n), s)
    lvl = (img + np.repeat(np.arange(s), n)) % s
    rows = np.stack([img, lvl], 1)
    full = len(rows) // batch_size * batch_size
    return list(rows[:full].reshape(-1, batch_size, 2))


def allocation(model, images: np.ndarray, labels: np.ndarray, levels: np.ndarray, *,
               key: jax.Array, train: bool, batch_size: int | None = None, objective=None,
               stroke_threshold: float = -0.9, progress: Any = None) -> Allocation:
    """Runs every (image, level) item (module doc) and collects ``Allocation``. ``batch_size``:
    items per forward (train: required, the run's training batch; eval: default all images of
    a level at once). ``objective``: the run's ``DiffusionObjective`` (None: flow).
    ``progress``: optional callable(done, total) after each forward."""
    layers = moe_layers(model)
    mc = model.config.moe_config()
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int32)
    levels = np.asarray(levels, np.float32)
    n, s = len(images), len(levels)
    if train and not batch_size:
        raise ValueError("allocation(train=True) needs batch_size (the training batch)")
    bs = int(batch_size or n)
    if bs < 1 or n < 1 or s < 1:
        raise ValueError(f"need images ({n}), levels ({s}) and batch_size ({bs}) >= 1")
    if train and n * s < bs:
        raise ValueError(f"{n} images x {s} levels = {n * s} items are fewer than one training "
                         f"batch of {bs}")
    length = model.config.tokens
    maps = np.full((len(layers), s, n, length), -1, np.int32)
    pooled = np.zeros((len(layers), mc.n_experts))
    comb, dropped = [], np.zeros(len(layers))
    norms_sq = np.zeros((s, model.config.n_layers, 2))
    norms_n = np.zeros(s)
    batches = _items(n, s, train, bs)
    for b, rows in enumerate(batches):
        img, lvl = rows[:, 0], rows[:, 1]
        x, t = _noised(objective, jnp.asarray(images[img]),
                       jnp.asarray(objective_time(objective, levels[lvl])), jnp.asarray(img),
                       key)
        out = forward(model, x, t, labels[img], train=train)
        maps[:, lvl, img] = out["maps"]
        pairs = out["maps"].sum(axis=(1, 2))
        pooled += out["expert_load"] * pairs[:, None]
        comb.append(out["combination_usage"])
        dropped += out["dropped"]
        if not train:
            norms_sq[lvl[0]] += len(rows) * np.square(out["branch_norms"])
            norms_n[lvl[0]] += len(rows)
        if progress is not None:
            progress(b + 1, len(batches))
    counts = pooled
    mean = counts.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        maxvio = np.where(mean[:, 0] > 0, (counts.max(-1) - mean[:, 0]) / mean[:, 0], 0.0)
        load = np.where(counts.sum(-1, keepdims=True) > 0,
                        counts / counts.sum(-1, keepdims=True), 0.0)
    return Allocation(
        train=bool(train), levels=levels, k=mc.top_k, n_experts=mc.n_experts, layers=layers,
        maps=maps, stroke=stroke_mask(images, model.config.patch_size, stroke_threshold),
        expert_load=load, max_violation=maxvio, combination_usage=np.mean(comb, 0),
        dropped=dropped, tau=thresholds(model),
        branch_norms=None if train else np.sqrt(norms_sq / norms_n[:, None, None]),
        items=sum(len(r) for r in batches), batches=len(batches))


# ----------------------------------------------------------------------------- batch size 1
@dataclasses.dataclass
class BatchOne:
    """Every item alone (batch 1). ``threshold`` / ``race``: [M, S, N] mean experts per token of
    each image in eval mode (``rule``: the EMA threshold for a threshold run, else the batch
    race) and in training mode (the batch race over one image); ``k``."""

    levels: np.ndarray
    k: int
    layers: list
    rule: str
    threshold: np.ndarray
    race: np.ndarray

    def stats(self) -> dict:
        """{"threshold"|"race": {"mean", "mean_dev" (mean - k), "mean_abs_dev", "max_abs_dev",
        "per_level" [S] mean over images and layers}}."""
        out = {}
        for name in ("threshold", "race"):
            a = getattr(self, name)
            out[name] = {"mean": float(a.mean()), "mean_dev": float(a.mean() - self.k),
                         "mean_abs_dev": float(np.abs(a - self.k).mean()),
                         "max_abs_dev": float(np.abs(a - self.k).max()),
                         "per_level": a.mean(axis=(0, 2)).tolist()}
        return out


def batch_one(model, images: np.ndarray, labels: np.ndarray, levels: np.ndarray, *,
              key: jax.Array, objective=None) -> BatchOne:
    """Runs each (image, level) item alone in eval and in training mode (module doc)."""
    layers = moe_layers(model)
    images = np.asarray(images, np.float32)
    levels = np.asarray(levels, np.float32)
    n, s = len(images), len(levels)
    img, lvl = np.tile(np.arange(n), s), np.repeat(np.arange(s), n)
    x, t = _noised(objective, jnp.asarray(images[img]),
                   jnp.asarray(objective_time(objective, levels[lvl])), jnp.asarray(img), key)
    y = np.asarray(labels, np.int32)[img]
    maps = forward_each(model, x, t, y)                                 # [S N, M, L] each
    res = {name: maps[mode].mean(-1).T.reshape(len(layers), s, n)
           for name, mode in (("threshold", "eval"), ("race", "train"))}
    return BatchOne(levels=levels, k=model.config.moe_config().top_k, layers=layers,
                    rule=inference_rule(model), **res)


# ----------------------------------------------------------------------------- tables
def summary_rows(alloc: Allocation) -> list[dict]:
    """Per MoE layer: block, experts_per_token (mean), tokens_without_expert (fraction),
    stroke / background means, max_violation, combination_usage (%), load_min / load_max
    (fraction of pairs), histogram (fractions of tokens with 0..E experts), dropped, tau."""
    hist = alloc.histogram.sum(1)
    content = _masked_mean(alloc.maps[..., None], (alloc.valid[..., None] & np.stack(
        [~alloc.stroke, alloc.stroke], -1)[None, None]), axis=(1, 2, 3))
    rows = []
    for i, block in enumerate(alloc.layers):
        h = hist[i] / max(hist[i].sum(), 1)
        rows.append({"block": block, "experts_per_token": float(alloc.per_layer[i]),
                     "tokens_without_expert": float(h[0]),
                     "background": float(content[i, 0]), "stroke": float(content[i, 1]),
                     "max_violation": float(alloc.max_violation[i]),
                     "combination_usage": 100 * float(alloc.combination_usage[i]),
                     "load_min": float(alloc.expert_load[i].min()),
                     "load_max": float(alloc.expert_load[i].max()),
                     "histogram": h.tolist(), "dropped": float(alloc.dropped[i]),
                     "tau": None if alloc.tau is None else float(alloc.tau[i])})
    return rows
