"""Depth and exit-rule curves of a trained looped LM (Ouro secs. 3.2, 5; spec B.10 items 1, 3).

On teacher-forced batches, one forward pass with ``max_loops`` loops (the trained T or more:
loops past T extrapolate the depth) gives every loop's per-token CE; from it:

* ``depth_ce[m]``: mean CE of loop m + 1, m < max_loops (the per-loop loss ordering and the
  extrapolation beyond the trained depth);
* Q-exit with the learned gate (over the trained T loops): for each q, per token the first loop
  whose exit CDF >= q; the CE there and the mean loops executed (exit index + 1);
* static exit: every token at loop k (= ``depth_ce[:T]`` at k + 1 loops);
* the hidden-state-difference rule (a baseline without a gate): per token the first loop t >= 2
  (1-based) whose relative change ||x_t - x_{t-1}|| / ||x_{t-1}|| of the normed state is below
  tau, else the last; the CE there and the mean loops executed.

Mean loops executed is the compute a per-token physical exit spends on the body (without the
K/V that later tokens might need from deeper loops; see ``seedjax.eval.looped_decode``).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from seedjax.nn.looped import loop_token_ce, threshold_exit_steps

Q_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TAU_GRID = tuple(float(x) for x in np.geomspace(1e-3, 1.0, 13))


def _gather(ce: jax.Array, steps: jax.Array) -> jax.Array:
    return jnp.take_along_axis(ce, steps[None], axis=0)[0]


def hidden_diff_steps(states: jax.Array, tau: float) -> jax.Array:
    """states [T, B, S, D] -> int32 [B, S]: first 0-based loop t >= 1 with relative change
    ||x_t - x_{t-1}|| / ||x_{t-1}|| < tau, else T - 1."""
    x = states.astype(jnp.float32)
    rel = (jnp.linalg.norm(x[1:] - x[:-1], axis=-1)
           / jnp.maximum(jnp.linalg.norm(x[:-1], axis=-1), 1e-30))      # [T-1, B, S]
    hit = rel < tau
    first = jnp.argmax(hit, axis=0).astype(jnp.int32) + 1
    return jnp.where(jnp.any(hit, axis=0), first, jnp.int32(states.shape[0] - 1))


def curve_sums(model, inputs: jax.Array, targets: jax.Array, *, max_loops: int,
               q_grid: Sequence[float] = Q_GRID, tau_grid: Sequence[float] = TAU_GRID) -> dict:
    """Sums over the tokens of one batch (inputs, targets int [B, S]); divide by ``tokens``.

    Keys: depth_ce [max_loops]; q_ce, q_loops [len(q_grid)]; diff_ce, diff_loops
    [len(tau_grid)]; tokens (scalar). Gate rules use the trained T = the config's loops."""
    loops = model.layers.config.loops
    if max_loops < loops:
        raise ValueError(f"max_loops={max_loops} must be >= the trained loops={loops}")
    out = model.loop_states(inputs, loops=max_loops)
    ce, _ = loop_token_ce(model, out.states, targets, remat=False)      # [M, B, S]
    trained = ce[:loops]
    q_ce, q_loops = [], []
    for q in q_grid:
        if out.gate_logits is None:
            steps = jnp.full(targets.shape, loops - 1, jnp.int32)
        else:
            steps = threshold_exit_steps(jnp.moveaxis(out.gate_logits[:loops], 0, -1), q)
        q_ce.append(jnp.sum(_gather(trained, steps)))
        q_loops.append(jnp.sum(steps + 1))
    d_ce, d_loops = [], []
    for tau in tau_grid:
        steps = hidden_diff_steps(out.states[:loops], tau)
        d_ce.append(jnp.sum(_gather(trained, steps)))
        d_loops.append(jnp.sum(steps + 1))
    return {"depth_ce": jnp.sum(ce, axis=(1, 2)), "q_ce": jnp.stack(q_ce),
            "q_loops": jnp.stack(q_loops).astype(jnp.float32), "diff_ce": jnp.stack(d_ce),
            "diff_loops": jnp.stack(d_loops).astype(jnp.float32),
            "tokens": jnp.float32(targets.size)}


def exit_curves(model, batches: Sequence[dict], *, max_loops: int,
                q_grid: Sequence[float] = Q_GRID, tau_grid: Sequence[float] = TAU_GRID
                ) -> dict:
    """Means over ``batches`` ({"inputs", "targets"} int [B, S]) of :func:`curve_sums` (numpy
    arrays; ``tokens`` is the total), plus ``loops`` (the trained T) and the grids."""
    from flax import nnx
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda st, x, y: curve_sums(nnx.merge(graphdef, st), x, y, max_loops=max_loops,
                                             q_grid=q_grid, tau_grid=tau_grid))
    total: dict = {}
    for b in batches:
        sums = jax.device_get(fn(state, jnp.asarray(b["inputs"]), jnp.asarray(b["targets"])))
        for k, v in sums.items():
            total[k] = total.get(k, 0.0) + np.asarray(v, np.float64)
    n = total.pop("tokens")
    out = {k: v / n for k, v in total.items()}
    return {**out, "tokens": float(n), "loops": model.layers.config.loops,
            "q_grid": list(q_grid), "tau_grid": list(tau_grid)}
