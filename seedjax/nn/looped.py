"""Looped (universal-transformer style) stack with a learned exit gate: Ouro / LoopLM
(arXiv 2510.25741), in the layout of the released checkpoints.

A shared-weight ``body`` (L blocks) is applied T times. At the end of every loop the state goes
through ``finalize`` (the model's final RMSNorm, after the connection's ``reduce``) and that
*normed* state is both the loop's output and the next loop's input (after ``expand``)::

    H = expand(embed(tokens))
    for t in 0..T-1:
        H = body(H)                       # same parameters in every loop; RoPE positions too
        x_t = finalize(H)                 # the final norm, applied at the end of EVERY loop
        z_t = gate(x_t)                   # exit gate: Linear D -> 1 with bias, float32
        H = expand(x_t)
    logits_t = head(x_t)                  # one head for every loop

Exit distribution (per token, float32, log space; stable for gate logits of any size):

    lambda_t = sigmoid(z_t),  log lambda_t = -softplus(-z_t),  log(1 - lambda_t) = -softplus(z_t)
    log S_t  = sum_{j<=t} log(1 - lambda_j)                       (survival, S_{-1} = 1)
    p_t      = lambda_t S_{t-1} (t < T-1),   p_{T-1} = S_{T-2}     (the last loop's lambda is unused)
    CDF_t    = 1 - S_t (t < T-1),            CDF_{T-1} = 1

Exit rules (as released; all loops are always computed, the rule picks the logits):

* ``exit_at_step=k``: loop k's logits (0-based, ``0 <= k < T``);
* ``threshold`` q in (0, 1]: per token the first loop with CDF >= q, else the last loop; tested as
  ``log S_t <= log(1 - q)`` so it never depends on 1 - tiny rounding; q = 1 is the last loop;
* ``weighted``: sum_t p_t logits_t (accumulated t = 0..T-1 as the released code does);
* ``last``: the last loop.

Without a gate (``exit_gate=False``) every lambda is 0: p is one-hot on the last loop, so every
rule but ``exit_at_step`` returns the last loop.

Shapes: H [B, S, ...] (the connection's stream layout), states [T, B, S, D], gate logits
[T, B, S], exit probabilities [B, S, T], per-loop logits [T, B, S, V].

Composes with: any body following ``LayerStack``'s call protocol (so scanned layers, per-block
remat, GQA, SeeDNorm or other registered norms, memory layers, MoE FFNs; aux losses are summed
over loops), hyper-/frac-connections ([I]: the stream is reduced, normed and re-expanded between
loops), KV caches (one per loop, each holding the body's per-layer caches: slot (t, l) as
released). Not yet: ``lax.scan`` or remat over the loops themselves (loops are unrolled in
Python, so compile time grows with T). Physical early exit at decode is
``seedjax.eval.looped_decode``; the Stage I/II training objectives are
``seedjax.train.looped_objectives`` (:func:`mixed_logits_loss` here is the released ``labels``
loss, for parity only).
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.losses import token_nll

from seedjax.nn.params import constant_init, normal_init, param

EXIT_RULES = ("threshold", "weighted", "last")


def check_loops(loops: Any, field: str = "loops") -> int:
    if isinstance(loops, bool) or not isinstance(loops, numbers.Integral) or loops < 1:
        raise ValueError(f"{field}={loops!r} must be an integer >= 1 (the number of loops T)")
    return int(loops)


def check_threshold(q: Any, field: str = "exit_threshold") -> float:
    """q as a float; ValueError unless it is a real number in (0, 1]."""
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0.0 < float(q) <= 1.0:
        raise ValueError(f"{field}={q!r} must be a number in (0, 1] (the exit CDF level q; "
                         "1.0 = always the last loop)")
    return float(q)


def check_exit_step(k: Any, loops: int) -> int:
    """k as an int; ValueError unless 0 <= k < loops (0-based, as released)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < loops:
        raise ValueError(f"exit_at_step={k!r} must be an integer in [0, {loops}) (0-based loop "
                         f"index; loops={loops})")
    return int(k)


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Looped-stack settings (``model.stack_kwargs`` of ``model.stack="looped"``).

    loops: T, the number of times the body is applied (Ouro: ``total_ut_steps`` = 4).
    exit_gate: build the exit gate (Linear D -> 1 with bias on the normed state).
    exit_rule: the default exit rule of a call: "threshold" (with ``exit_threshold``), "weighted"
        or "last" (the released ``early_exit_threshold=None`` without ``use_weighted_exit``).
    exit_threshold: q of the "threshold" rule (Ouro's ``early_exit_threshold``, 1.0 = last loop).
    gate_init_std: init std of the gate weight (None: the model's ``init_std``) [I: not released].
    gate_bias_init: init of the gate bias ([I]: 0, i.e. lambda = 0.5 at init for a zero state).
    """
    loops: int = 4
    exit_gate: bool = True
    exit_rule: str = "threshold"
    exit_threshold: float = 1.0
    gate_init_std: float | None = None
    gate_bias_init: float = 0.0

    def __post_init__(self):
        check_loops(self.loops, "model.stack_kwargs.loops")
        if not isinstance(self.exit_gate, bool):
            raise ValueError(f"model.stack_kwargs.exit_gate={self.exit_gate!r} must be a bool")
        if self.exit_rule not in EXIT_RULES:
            raise ValueError(f"model.stack_kwargs.exit_rule={self.exit_rule!r} is not allowed; "
                             f"allowed: {EXIT_RULES}")
        check_threshold(self.exit_threshold, "model.stack_kwargs.exit_threshold")
        if self.gate_init_std is not None and not self.gate_init_std >= 0:
            raise ValueError(f"model.stack_kwargs.gate_init_std={self.gate_init_std!r} must be "
                             ">= 0 or None")


class ExitGate(nnx.Module):
    """z = x . w + b in float32: x [..., D] -> gate logits [...]. Parameters in the optimizer
    group "exit_gate" (Stage II trains only this group); the bias is not decayed."""

    def __init__(self, dim: int, *, init_std: float = 0.02, bias_init: float = 0.0,
                 rngs: nnx.Rngs):
        if dim < 1:
            raise ValueError(f"ExitGate dim must be >= 1, got {dim}")
        self.kernel = param(rngs, normal_init(init_std), (dim,), ("embed",), lr_group="exit_gate")
        self.bias = param(None, constant_init(bias_init), (), (), weight_decay=False,
                          lr_group="exit_gate")

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        return jnp.einsum("...d,d->...", xf, self.kernel[...].astype(jnp.float32),
                          precision=jax.lax.Precision.HIGHEST) + self.bias[...].astype(jnp.float32)


# ----------------------------------------------------------------------------- exit distribution

def log_survival(gate_logits: jax.Array) -> jax.Array:
    """log S_t = sum_{j<=t} log(1 - lambda_j) = -sum softplus(z_j): [..., T] -> [..., T] (f32)."""
    z = gate_logits.astype(jnp.float32)
    return jnp.cumsum(-jax.nn.softplus(z), axis=-1)


def exit_log_probs(gate_logits: jax.Array) -> jax.Array:
    """log p_t of the exit distribution from gate logits z [..., T] (T last), float32.

    log p_t = log lambda_t + log S_{t-1} for t < T-1 and log p_{T-1} = log S_{T-2}; every term
    is a sum of -softplus values, so this is exact to float32 rounding for any |z|.
    """
    z = gate_logits.astype(jnp.float32)
    t = z.shape[-1]
    log_s = log_survival(z)
    prev = jnp.concatenate([jnp.zeros_like(log_s[..., :1]), log_s[..., :-1]], axis=-1)  # S_{t-1}
    log_lam = -jax.nn.softplus(-z)
    is_last = jnp.arange(t) == t - 1
    return prev + jnp.where(is_last, 0.0, log_lam)


def exit_probs(gate_logits: jax.Array) -> jax.Array:
    """p_t = exp(log p_t): [..., T] -> [..., T] float32, summing to 1 (to f32 rounding)."""
    return jnp.exp(exit_log_probs(gate_logits))


def threshold_exit_steps(gate_logits: jax.Array, q: float) -> jax.Array:
    """Per token, the first loop t with CDF_t >= q (i.e. log S_t <= log(1 - q)), else the last:
    gate logits [..., T] -> int32 [...]. q = 1.0 always gives the last loop."""
    q = check_threshold(q)
    t = gate_logits.shape[-1]
    if q >= 1.0 or t == 1:
        return jnp.full(gate_logits.shape[:-1], t - 1, jnp.int32)
    log_s = log_survival(gate_logits)[..., :-1]
    hit = log_s <= jnp.log1p(-jnp.float32(q))
    first = jnp.argmax(hit, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.any(hit, axis=-1), first, jnp.int32(t - 1))


def last_loop_log_probs(shape: Sequence[int], loops: int) -> jax.Array:
    """log p of a model without a gate (every lambda = 0): one-hot on the last loop."""
    onehot = jnp.arange(loops) == loops - 1
    return jnp.broadcast_to(jnp.where(onehot, 0.0, -jnp.inf).astype(jnp.float32),
                            (*shape, loops))


def mixed_logits_loss(logits: jax.Array, labels: jax.Array, ignore_index: int = -100) -> jax.Array:
    """The released ``OuroForCausalLM(labels=...)`` loss: shifted causal-LM cross entropy of the
    (exit-weighted) logits [B, S, V] against labels [B, S], mean over labels != ignore_index.
    Parity only: the paper's Stage I objective is sum_t p_t CE_t - beta H(p), not this."""
    logits = logits[:, :-1].astype(jnp.float32)
    target = labels[:, 1:]
    valid = target != ignore_index
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.where(valid, target, 0)[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(valid, nll, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


# ----------------------------------------------------------------------------- the stack

class LoopOutput(NamedTuple):
    states: jax.Array            # [T, B, S, D] normed state at the end of every loop
    gate_logits: jax.Array | None  # [T, B, S] float32 (None without a gate)
    cache: Any                   # list over loops of the body's caches (or None)
    aux_losses: dict             # summed over loops
    intermediates: dict | None   # body intermediates stacked over loops [T, ...]


def _add_aux(total: dict, aux: dict) -> dict:
    out = dict(total)
    for k, v in aux.items():
        out[k] = out.get(k, 0.0) + v
    return out


class LoopedStack(nnx.Module):
    """``body`` applied ``loops`` times with shared weights, plus the exit gate.

    ``body(H, *, positions, cache, return_intermediates, **kw) -> (H, cache, aux, inter)`` (the
    ``LayerStack`` protocol). Call with ``finalize`` (H -> normed x [B, S, D]) and ``expand``
    (x -> H) from the model; returns a :class:`LoopOutput`. ``looped = True`` tells the LM to
    read the per-loop outputs.
    """

    looped = True

    def __init__(self, body: nnx.Module, d_model: int, config: LoopConfig, *, init_std: float,
                 rngs: nnx.Rngs):
        self.config = config
        self.body = body
        std = init_std if config.gate_init_std is None else config.gate_init_std
        self.exit_gate = (ExitGate(d_model, init_std=std, bias_init=config.gate_bias_init,
                                   rngs=rngs) if config.exit_gate else None)

    def __call__(self, H, *, finalize: Callable, expand: Callable, loops: int | None = None,
                 positions=None, cache=None, return_intermediates: bool = False,
                 **body_kw) -> LoopOutput:
        loops = self.config.loops if loops is None else check_loops(loops)
        if cache is not None and len(cache) != loops:
            raise ValueError(f"the KV cache has {len(cache)} loop slots but the call runs "
                             f"loops={loops}; build it with init_cache(..., loops={loops})")
        states, gates, caches, records, aux_total = [], [], [], [], {}
        for t in range(loops):
            if t:
                H = expand(x)
            c = None if cache is None else cache[t]
            H, c, aux, rec = self.body(H, positions=positions, cache=c,
                                       return_intermediates=return_intermediates, **body_kw)
            x = finalize(H)
            states.append(x)
            if self.exit_gate is not None:
                gates.append(self.exit_gate(x))
            caches.append(c)
            records.append(rec)
            aux_total = _add_aux(aux_total, aux)
        inter = (jax.tree.map(lambda *xs: jnp.stack(xs), *records)
                 if return_intermediates else None)
        return LoopOutput(jnp.stack(states), jnp.stack(gates) if gates else None,
                          None if cache is None else caches, aux_total, inter)


# ----------------------------------------------------------------------------- exit readout

class ExitReadout(NamedTuple):
    logits: jax.Array               # [B, S, V] float32, by the exit rule
    loop_logits: jax.Array | None   # [T, B, S, V] float32 (None if not requested)
    exit_probs: jax.Array           # [B, S, T] float32
    exit_steps: jax.Array | None    # [B, S] int32 loop chosen per token (None: weighted)
    aux_losses: dict                # from the head calls


def resolve_rule(config: LoopConfig, loops: int, *, exit_at_step=None, exit_threshold=None,
                 weighted_exit=None) -> tuple[str, Any]:
    """The exit rule of one call, in the released priority: ``exit_at_step`` (validated to
    [0, loops)) > ``exit_threshold`` (validated to (0, 1]) > ``weighted_exit=True`` > the
    config's ``exit_rule``. Returns (rule, argument)."""
    if exit_at_step is not None:
        return "step", check_exit_step(exit_at_step, loops)
    if exit_threshold is not None:
        return "threshold", check_threshold(exit_threshold)
    if weighted_exit is not None and not isinstance(weighted_exit, bool):
        raise ValueError(f"weighted_exit={weighted_exit!r} must be a bool or None")
    if weighted_exit:
        return "weighted", None
    if config.exit_rule == "threshold":
        return "threshold", config.exit_threshold
    return config.exit_rule, None


def exit_readout(states: jax.Array, gate_logits: jax.Array | None, head: Callable, rule: str,
                 arg: Any = None, *, return_loop_logits: bool = True) -> ExitReadout:
    """Applies ``head`` (x [B, S, D] -> logits or (logits, aux)) and the exit rule.

    states [T, B, S, D]; gate_logits [T, B, S] or None (no gate: lambda = 0). Without
    ``return_loop_logits`` only the needed head calls are made (one for "step"/"threshold"/
    "last", which gather the states first; all T for "weighted")."""
    loops, b, s = states.shape[:3]
    z, log_p = gate_log_probs(gate_logits, (b, s), loops)
    probs = jnp.exp(log_p)
    aux: dict = {}

    def run_head(x):
        nonlocal aux
        out = head(x)
        logits, a = out if isinstance(out, tuple) else (out, {})
        aux = _add_aux(aux, a)
        return logits.astype(jnp.float32)

    per_loop = None
    if return_loop_logits or rule == "weighted":
        per_loop = jnp.stack([run_head(states[t]) for t in range(loops)])

    steps = exit_steps(z, rule, arg, loops, (b, s))
    if rule == "weighted":
        logits = jnp.zeros(per_loop.shape[1:], jnp.float32)
        for t in range(loops):  # the released accumulation order
            logits = logits + probs[..., t, None] * per_loop[t]
    elif per_loop is not None:
        logits = _gather_loops(per_loop, steps)
    else:
        logits = run_head(_gather_loops(states, steps))
    return ExitReadout(logits, per_loop if return_loop_logits else None, probs, steps, aux)


def exit_steps(z: jax.Array | None, rule: str, arg: Any, loops: int, shape: Sequence[int]
               ) -> jax.Array | None:
    """The loop each token exits at under ``rule``: int32 ``shape`` (= [B, S]), or None for
    "weighted" (no single loop). z: gate logits [B, S, T] float32, or None without a gate."""
    if rule == "step":
        return jnp.full(shape, arg, jnp.int32)
    if rule == "threshold":
        return (jnp.full(shape, loops - 1, jnp.int32) if z is None
                else threshold_exit_steps(z, arg))
    if rule == "last":
        return jnp.full(shape, loops - 1, jnp.int32)
    if rule == "weighted":
        return None
    raise ValueError(f"unknown exit rule {rule!r}; allowed: step, threshold, weighted, last")


def gate_log_probs(gate_logits: jax.Array | None, shape: Sequence[int], loops: int
                   ) -> tuple[jax.Array | None, jax.Array]:
    """(z [B, S, T] float32 or None, log p [B, S, T]) from gate logits [T, B, S] (or None: no
    gate, p one-hot on the last loop); ``shape`` = (B, S)."""
    if gate_logits is None:
        return None, last_loop_log_probs(shape, loops)
    z = jnp.moveaxis(gate_logits.astype(jnp.float32), 0, -1)
    return z, exit_log_probs(z)


def _gather_loops(per_loop: jax.Array, steps: jax.Array) -> jax.Array:
    """per_loop [T, B, S, ...], steps int [B, S] -> [B, S, ...] (loop steps[b, s] per token)."""
    idx = steps.reshape(1, *steps.shape, *([1] * (per_loop.ndim - 3)))
    return jnp.take_along_axis(per_loop, idx, axis=0)[0]


# ----------------------------------------------------------------------------- per-loop CE

def loop_token_ce(model, states: jax.Array, targets: jax.Array, *, remat: bool = True
                  ) -> tuple[jax.Array, dict]:
    """CE of every loop's logits: states [T, B, S, D], targets int [B, S] -> ([T, B, S] float32,
    the head's aux losses summed over loops). One loop's logits at a time (``lax.map``); with
    ``remat`` the backward pass recomputes them instead of storing T of them."""
    def one(x):
        logits, aux = model.head_logits(x)
        return token_nll(logits, targets), aux

    fn = jax.checkpoint(one) if remat else one
    ce, aux = jax.lax.map(fn, states)
    return ce, {k: jnp.sum(v) for k, v in aux.items()}
