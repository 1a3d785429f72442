"""Decoding a looped LM (Ouro / LoopLM) with *physical* early exit and the KV policies of spec
§B.14: every released port runs all T loops for every token and only picks which loop's logits
to return; here a decode step stops running loops once the exit rule says stop.

    from seedjax.eval.looped_decode import looped_generate
    out = looped_generate(model, prompt, 32, exit_threshold=0.4, kv_policy="last_available")
    out.tokens          # [B, P + 32]
    out.token_loops     # [B, 32] loops each new token's forward needed (exit step + 1)
    out.batch_loops     # [32] loops the batched forward actually ran for that step

**One decode step** (token x at cache position ``index``; ``decode_step``). Loop 0 runs for every
row; then ``jax.lax.while_loop`` runs loop t = 1, 2, ... while ``t < T`` and *some* row still has
to go deeper. A row is finished after loop t when its exit rule fires: ``exit_at_step=k`` at
t = k; Q-exit (``exit_threshold=q``) at the first t with CDF_t >= q (``threshold_exit_steps``, the
same float32 log-space test as the full forward); every rule at t = T - 1. A finished row keeps
its state (``where`` per row) and is computed along with the rows that continue (SIMD), so a
batch runs ``max_b`` (exit_b + 1) loops; at batch 1 the remaining loops are really skipped (the
while loop ends). The logits come from the same readout as the full forward
(``seedjax.nn.looped.exit_readout`` on the loop states run so far: the head is applied once, to
the exit loop's state).

**KV policies** (what later tokens read at loop u for a token j that exited at loop e_j < u,
whose deeper K/V were never computed):

* ``full_per_depth``: no such token: every row runs all T loops (its K/V exist at every depth),
  so nothing can be skipped (loop u's K/V need loop u's input, i.e. all earlier loops); only the
  returned logits follow the exit rule and the head runs once, on the exit loop's state. The
  step is the model's own cached forward (run all, then select), so it equals run-all-then-
  select bitwise; this is the reference the other policies are measured against.
  ``token_loops`` = T.
* ``last_available``: token j at loop u reads its K/V at loop min(u, e_j) (the fork's
  definition). Implemented on the write side: after the step, the per-depth cache slots
  u > e_j at j's position get a copy of slot e_j's K/V (for skipped loops and for rows carried
  along in a batch alike, so a row's result never depends on its batch). One cache per loop.
* ``final_exit_shared``: ONE cache shared by all loops (1/T of the KV memory). A token's entry
  holds its K/V from its exit loop e_j; every loop of a later token reads that entry. While a
  token runs, loop t writes its loop-t K/V at its own position (so its own attention at loop t
  sees its loop-t keys, as in the full forward) and a finished row's entry is restored to its
  exit-loop K/V. At q = 1.0 this is the paper's "last-step only" KV sharing (Table 14).

**Prefill**: the prompt runs through every loop in one forward (as in the paper's KV-sharing
study: "prefill keeps all caches"), its last position's logits follow the exit rule; the
policies govern the decoded tokens. ``final_exit_shared`` then keeps, per prompt position, the
K/V of that position's exit loop (by the same rule) in its one cache.

**Left padding**: ``prompt_mask`` [B, P] (True = real token, all pads on the left). Pad keys are
excluded by a per-row key mask carried in the caches (``KVCache.mask``) and RoPE positions
count real tokens only, so a left-padded batch decodes like each sample alone.

Weighted exit (sum_t p_t logits_t) needs every loop: only with ``full_per_depth``.
Reported per generated token: ``exit_steps`` (0-based loop whose logits chose it),
``token_loops`` (loops that token's forward needed: exit + 1, or T for ``full_per_depth`` and for
the first token, which the all-loop prefill produced) and ``batch_loops`` (loops the batched
step ran: the max over rows).
"""
from __future__ import annotations

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.eval.sampling import sample_logits
from seedjax.nn.attention import KVCache
from seedjax.nn.looped import check_loops, exit_readout, resolve_rule, threshold_exit_steps
from seedjax.nn.memory import prepare_decode
from seedjax.nn.partitioning import constrain

KV_POLICIES = ("full_per_depth", "last_available", "final_exit_shared")


def check_kv_policy(policy: Any) -> str:
    if policy not in KV_POLICIES:
        raise ValueError(f"kv_policy={policy!r} is not allowed; allowed: {KV_POLICIES}")
    return policy


class ExitSpec(NamedTuple):
    """A validated exit rule for decoding: ``rule`` in step / threshold / weighted / last."""
    loops: int
    rule: str
    arg: Any
    kv_policy: str


def resolve_exit(model, *, loops=None, exit_at_step=None, exit_threshold=None,
                 weighted_exit=None, kv_policy: str = "full_per_depth") -> ExitSpec:
    """Validates the decode options (ValueErrors: not a looped model, loops < 1, exit_at_step
    outside [0, loops), q outside (0, 1], unknown policy, weighted exit without
    ``full_per_depth``) and resolves the rule with the released priority."""
    if not getattr(model, "looped", False):
        raise ValueError(f"looped decoding needs model.stack='looped' "
                         f"(got {getattr(model.cfg, 'stack', None)!r})")
    check_kv_policy(kv_policy)
    config = model.layers.config
    n = config.loops if loops is None else check_loops(loops)
    rule, arg = resolve_rule(config, n, exit_at_step=exit_at_step, exit_threshold=exit_threshold,
                             weighted_exit=weighted_exit)
    if rule == "weighted" and kv_policy != "full_per_depth":
        raise ValueError(f"weighted exit reads every loop's logits, so it cannot exit early: "
                         f"use kv_policy='full_per_depth' (got {kv_policy!r})")
    if rule == "threshold" and arg >= 1.0:
        rule, arg = "last", None      # q = 1: always the last loop
    return ExitSpec(n, rule, arg, kv_policy)


# ----------------------------------------------------------------------------- cache helpers

def _is_kv(x) -> bool:
    return isinstance(x, KVCache)


def _map_kv(fn, *trees):
    return jax.tree.map(fn, *trees, is_leaf=_is_kv)


def stack_loops(caches: list) -> Any:
    """List over loops of stack caches -> one pytree with a leading loop axis [T, ...]."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *caches)


def unstack_loops(cache: Any, loops: int) -> list:
    return [jax.tree.map(lambda a: a[t], cache) for t in range(loops)]


def with_mask(cache: Any, mask: jax.Array | None) -> Any:
    """Attaches the key mask [B, S] to every KVCache (broadcast over stacked leading axes)."""
    if mask is None:
        return cache
    mask = jnp.asarray(mask, bool)

    def put(c: KVCache):
        lead = c.k.shape[:c.k.ndim - 4]
        return c._replace(mask=jnp.broadcast_to(mask, (*lead, *mask.shape)))
    return _map_kv(put, cache)


def _seq_rows(a: jax.Array, pos) -> jax.Array:
    """Position ``pos`` of a [..., B, K, S, D] cache array (kept as a length-1 axis)."""
    return jax.lax.dynamic_slice_in_dim(a, pos, 1, axis=a.ndim - 2)


def _set_seq_rows(a: jax.Array, rows: jax.Array, pos) -> jax.Array:
    return jax.lax.dynamic_update_slice_in_dim(a, rows.astype(a.dtype), pos, axis=a.ndim - 2)


def _batch_shaped(v: jax.Array, ndim: int) -> jax.Array:
    """v [B] -> shape with B on the batch axis (ndim - 4) of a [..., B, K, S, D] array."""
    shape = [1] * ndim
    shape[ndim - 4] = v.shape[0]
    return v.reshape(shape)


def _fill_deeper_from_exit(cache: Any, exit_steps: jax.Array, pos, loops: int) -> Any:
    """``last_available``: per-depth cache (leading loop axis); at sequence position ``pos``,
    slots u > exit_steps[b] get slot exit_steps[b]'s K/V; every slot's index becomes pos + 1."""

    def one(a):
        rows = _seq_rows(a, pos)                                   # [T, ..., B, K, 1, D]
        e = _batch_shaped(exit_steps, a.ndim)
        src = jnp.take_along_axis(rows, jnp.broadcast_to(e, (1, *rows.shape[1:])), axis=0)
        depth = jnp.arange(loops).reshape((loops,) + (1,) * (a.ndim - 1))
        return _set_seq_rows(a, jnp.where(depth > e, src, rows), pos)

    def fix(c: KVCache):
        return c._replace(k=one(c.k), v=one(c.v), index=jnp.full_like(c.index, pos + 1))
    return _map_kv(fix, cache)


def _keep_finished_rows(old: Any, new: Any, running: jax.Array, pos) -> Any:
    """``final_exit_shared``: rows not ``running`` keep their old entry at ``pos``."""

    def one(a_old, a_new):
        keep = _batch_shaped(running, a_new.ndim)
        return _set_seq_rows(a_new, jnp.where(keep, _seq_rows(a_new, pos),
                                              _seq_rows(a_old, pos)), pos)

    return _map_kv(lambda o, n: n._replace(k=one(o.k, n.k), v=one(o.v, n.v)), old, new)


def _at_index(cache: Any, pos) -> Any:
    return _map_kv(lambda c: c._replace(index=jnp.full_like(c.index, pos)), cache)


def shared_from_per_loop(per_loop: list, steps: jax.Array, shared: Any) -> Any:
    """``final_exit_shared`` after prefill: per_loop caches (list over T, prompt length P)
    -> ``shared`` (one empty stack cache, length >= P) holding at each prompt position j the
    K/V of loop steps[b, j] (its exit loop); index = P."""
    stacked = stack_loops(per_loop)

    def pick(c: KVCache, s: KVCache):
        def one(a, dst):
            b, p = a.shape[a.ndim - 4], a.shape[a.ndim - 2]
            shape = [1] * a.ndim
            shape[a.ndim - 4], shape[a.ndim - 2] = b, p
            idx = jnp.broadcast_to(steps.reshape(shape), (1, *a.shape[1:]))
            sel = jnp.take_along_axis(a, idx, axis=0)[0]
            return jax.lax.dynamic_update_slice_in_dim(dst, sel.astype(dst.dtype), 0,
                                                       axis=dst.ndim - 2)
        p = c.k.shape[c.k.ndim - 2]
        return s._replace(k=one(c.k, s.k), v=one(c.v, s.v), index=jnp.full_like(s.index, p))
    return _map_kv(pick, stacked, shared)


# ----------------------------------------------------------------------------- one decode step

class StepOutput(NamedTuple):
    logits: jax.Array        # [B, V] float32, by the exit rule
    cache: Any               # the updated cache (layout of the policy)
    exit_steps: jax.Array    # [B] int32 loop whose logits were returned
    token_loops: jax.Array   # [B] int32 loops this token needed (exit + 1; T if full_per_depth)
    batch_loops: jax.Array   # [] int32 loops the batched while_loop ran (max over rows)


def decode_step(model, tokens: jax.Array, cache: Any, index, spec: ExitSpec, *,
                positions: jax.Array | None = None) -> StepOutput:
    """One token per row (tokens [B, 1]) at cache position ``index`` (int32 scalar), with
    physical early exit. ``cache`` layout by policy: ``full_per_depth`` the model's list over
    loops (``model.init_cache(B, S)``); ``last_available`` the same stacked on a leading loop axis
    (``stack_loops(...)``); ``final_exit_shared`` one stack cache
    (``model.init_cache(B, S, loops=1)[0]``).
    positions [B, 1] RoPE positions (default: ``index``). Traceable (call under jit)."""
    cfg, stack = model.cfg, model.layers
    loops, rule, arg, policy = spec
    b = tokens.shape[0]
    index = jnp.asarray(index, jnp.int32)
    if policy == "full_per_depth":   # nothing to skip: the model's own run-all-then-select
        out = model(tokens, positions=positions, cache=cache, loops=loops,
                    return_loop_logits=False, **_rule_kwargs(spec))
        steps = (jnp.full((b,), loops - 1, jnp.int32) if out.exit_steps is None
                 else out.exit_steps[:, -1])
        return StepOutput(out.logits[:, -1], out.cache, steps,
                          jnp.full((b,), loops, jnp.int32), jnp.int32(loops))
    if positions is None:
        positions = jnp.broadcast_to(index, (b, 1))
    tables = None if model.memory_tables is None else model.memory_tables()
    gate = stack.exit_gate

    def run_loop(x, c):
        """One loop from the previous loop's normed state (or the embedding) x [B, 1, D]."""
        H, c, _, _ = stack.body(model.connection.expand(x, cfg), positions=positions, cache=c,
                                memory_tables=tables)
        x = model.final_norm(model.connection.reduce(H, cfg))
        z = gate(x) if gate is not None else jnp.zeros(x.shape[:-1], jnp.float32)
        return x, z, c

    def finished(zbuf, t):
        """[B] bool: the row's exit rule fired at a loop <= t (t traced)."""
        if rule == "step":
            done = jnp.broadcast_to(t >= arg, (b,))
        elif rule == "threshold" and gate is not None:
            done = threshold_exit_steps(jnp.moveaxis(zbuf, 0, -1), arg)[:, 0] <= t
        else:
            done = jnp.zeros((b,), bool)
        return done | (t >= loops - 1)

    shared = policy == "final_exit_shared"
    x0 = constrain(model.embed(tokens), ("batch", "length", "embed"))
    c0 = _at_index(cache, index) if shared else jax.tree.map(lambda a: a[0], cache)
    x, z, c0 = run_loop(x0, c0)
    states = jnp.zeros((loops, *x.shape), x.dtype).at[0].set(x)
    zbuf = jnp.zeros((loops, *z.shape), jnp.float32).at[0].set(z)
    cache = c0 if shared else jax.tree.map(lambda a, n: a.at[0].set(n), cache, c0)
    done = finished(zbuf, jnp.int32(0))

    def cond(carry):
        t, _, _, _, _, done = carry
        return (t < loops) & jnp.any(~done)

    def body(carry):
        t, x, states, zbuf, cache, done = carry
        running = ~done
        if shared:
            x_new, z, c_new = run_loop(x, _at_index(cache, index))
            cache = _keep_finished_rows(cache, c_new, running, index)
        else:
            x_new, z, c_new = run_loop(x, jax.tree.map(lambda a: a[t], cache))
            cache = jax.tree.map(lambda a, n: jax.lax.dynamic_update_index_in_dim(a, n, t, 0),
                                 cache, c_new)
        x = jnp.where(running[:, None, None], x_new, x)   # finished rows keep their state
        states = jax.lax.dynamic_update_index_in_dim(states, x, t, 0)
        zbuf = jax.lax.dynamic_update_index_in_dim(zbuf, z, t, 0)
        return t + 1, x, states, zbuf, cache, done | finished(zbuf, t)

    t_run, _, states, zbuf, cache, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(1), x, states, zbuf, cache, done))
    read = exit_readout(states, zbuf if gate is not None else None,
                        lambda x: model.head(x, model.embed), rule, arg,
                        return_loop_logits=False)
    steps = (jnp.full((b,), loops - 1, jnp.int32) if read.exit_steps is None
             else read.exit_steps[:, 0])
    if policy == "last_available":
        cache = _fill_deeper_from_exit(cache, steps, index, loops)
    if shared:
        cache = _at_index(cache, index + 1)
    return StepOutput(read.logits[:, -1], cache, steps, steps + 1, t_run)


# ----------------------------------------------------------------------------- generation

class LoopedGeneration(NamedTuple):
    tokens: np.ndarray        # [B, P + steps] int32 (the prompt as given, pads included)
    exit_steps: np.ndarray    # [B, steps] loop (0-based) whose logits chose each new token
    token_loops: np.ndarray   # [B, steps] loops each new token's forward needed (column 0:
    #                           the prefill, which runs all T)
    batch_loops: np.ndarray   # [steps] loops the batched forward ran (column 0: T)
    logits: np.ndarray | None = None  # [B, steps, V] float32 that chose each new token
    #                                   (``return_logits=True`` only)


def _rule_kwargs(spec: ExitSpec) -> dict:
    if spec.rule == "step":
        return {"exit_at_step": spec.arg}
    if spec.rule == "threshold":
        return {"exit_threshold": spec.arg}
    if spec.rule == "weighted":
        return {"weighted_exit": True}
    return {"exit_threshold": 1.0}


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "spec", "temperature",
                                             "top_p", "padded", "return_logits"))
def _generate(graphdef, state, prompt, prompt_mask, key, forced=None, *, steps, spec,
              temperature, top_p, padded, return_logits):
    """forced [B, steps] (teacher forcing): token j of the continuation is forced[:, j] instead of
    a sample; the logits that predicted it are returned as usual."""
    model = nnx.merge(graphdef, state)
    prepare_decode(model)             # memory layers' weight-only retrieval work, once
    b, p = prompt.shape
    total = p + steps
    loops = spec.loops
    if padded:
        mask = jnp.concatenate([prompt_mask, jnp.ones((b, steps), bool)], axis=1)
        n_real = jnp.sum(prompt_mask, axis=1).astype(jnp.int32)
        pre_pos = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
    else:
        mask, n_real, pre_pos = None, jnp.full((b,), p, jnp.int32), None
    kw = dict(loops=loops, return_loop_logits=False, **_rule_kwargs(spec))
    if spec.kv_policy == "final_exit_shared":
        per_loop = with_mask(model.init_cache(b, p, loops=loops),
                             None if mask is None else mask[:, :p])
        out = model(prompt, positions=pre_pos, cache=per_loop, **kw)
        shared = with_mask(model.init_cache(b, total, loops=1)[0], mask)
        cache = shared_from_per_loop(out.cache, out.exit_steps, shared)
    else:
        out = model(prompt, positions=pre_pos,
                    cache=with_mask(model.init_cache(b, total, loops=loops), mask), **kw)
        cache = out.cache if spec.kv_policy == "full_per_depth" else stack_loops(out.cache)
    key, sub = jax.random.split(key)
    first = (sample_logits(out.logits[:, -1], sub, temperature, top_p).astype(jnp.int32)
             if forced is None else forced[:, 0])
    first_exit = (jnp.full((b,), loops - 1, jnp.int32) if out.exit_steps is None
                  else out.exit_steps[:, -1])

    def body(carry, i):
        tok, cache, key = carry
        o = decode_step(model, tok[:, None], cache, p + i, spec,
                        positions=(n_real + i)[:, None])
        key, sub = jax.random.split(key)
        nxt = (sample_logits(o.logits, sub, temperature, top_p).astype(jnp.int32)
               if forced is None else forced[:, i + 1])
        ys = (nxt, o.exit_steps, o.token_loops, o.batch_loops,
              o.logits if return_logits else None)
        return (nxt, o.cache, key), ys

    _, (toks, exits, tl, bl, lg) = jax.lax.scan(body, (first, cache, key),
                                                jnp.arange(steps - 1, dtype=jnp.int32))
    new = jnp.concatenate([first[:, None], toks.T], axis=1)
    exits = jnp.concatenate([first_exit[:, None], exits.T], axis=1)
    tl = jnp.concatenate([jnp.full((b, 1), loops, jnp.int32), tl.T], axis=1)
    bl = jnp.concatenate([jnp.full((1,), loops, jnp.int32), bl])
    logits = None
    if return_logits:
        logits = jnp.concatenate([out.logits[:, -1:], jnp.moveaxis(lg, 0, 1)], axis=1)
    return jnp.concatenate([prompt, new.astype(prompt.dtype)], axis=1), exits, tl, bl, logits


def _check_prompt_mask(prompt: np.ndarray, prompt_mask) -> np.ndarray | None:
    if prompt_mask is None:
        return None
    m = np.asarray(prompt_mask)
    if m.shape != prompt.shape:
        raise ValueError(f"prompt_mask shape {m.shape} != prompt shape {prompt.shape}")
    m = m.astype(bool)
    if not m.any(axis=1).all():
        raise ValueError("prompt_mask: every row needs at least one real token")
    if (np.diff(m.astype(np.int8), axis=1) < 0).any():
        raise ValueError("prompt_mask must be left-padded (False pads first, then True tokens)")
    return m


def prepare(model, prompt, steps: int, *, prompt_mask=None, loops=None, exit_at_step=None,
            exit_threshold=None, weighted_exit=None, kv_policy: str = "full_per_depth",
            temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
            return_logits: bool = False, forced=None):
    """Validates everything eagerly and returns (jitted function, args, static kwargs).
    ``forced`` [B, steps] int: teacher forcing (the continuation is these tokens)."""
    spec = resolve_exit(model, loops=loops, exit_at_step=exit_at_step,
                        exit_threshold=exit_threshold, weighted_exit=weighted_exit,
                        kv_policy=kv_policy)
    prompt = np.asarray(prompt)
    if prompt.ndim != 2 or prompt.shape[1] < 1 or prompt.dtype.kind not in "iu":
        raise ValueError(f"prompt must be integer token ids [batch, length>=1], got shape "
                         f"{prompt.shape} dtype {prompt.dtype}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps={steps!r} must be an integer >= 1 (tokens to generate)")
    if prompt.shape[1] + steps > model.cfg.max_seq_len:
        raise ValueError(f"prompt length {prompt.shape[1]} + steps {steps} exceeds "
                         f"model.max_seq_len={model.cfg.max_seq_len}")
    if not (isinstance(temperature, (int, float)) and temperature >= 0):
        raise ValueError(f"temperature={temperature!r} must be >= 0 (0 = greedy)")
    if not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1]")
    mask = _check_prompt_mask(prompt, prompt_mask)
    if forced is not None:
        forced = np.asarray(forced)
        if forced.shape != (prompt.shape[0], steps) or forced.dtype.kind not in "iu":
            raise ValueError(f"forced must be integer token ids [batch, steps] = "
                             f"{[prompt.shape[0], steps]}, got shape {forced.shape} dtype "
                             f"{forced.dtype}")
        forced = jnp.asarray(forced, jnp.int32)
    graphdef, state = nnx.split(model)
    b = prompt.shape[0]
    args = (graphdef, state, jnp.asarray(prompt, jnp.int32),
            jnp.asarray(mask if mask is not None else np.ones(prompt.shape, bool)),
            jax.random.key(seed), forced)
    static = dict(steps=int(steps), spec=spec, temperature=float(temperature),
                  top_p=float(top_p), padded=mask is not None,
                  return_logits=bool(return_logits))
    del b
    return _generate, args, static


def _wrap(out) -> LoopedGeneration:
    return LoopedGeneration(*(None if a is None else np.asarray(a) for a in out))


def looped_generate(model, prompt, steps: int, **kw) -> LoopedGeneration:
    """Generates ``steps`` tokens after ``prompt`` [B, P] with physical early exit.

    Keywords: ``prompt_mask`` [B, P] (left padding; True = token), ``loops``,
    ``exit_at_step`` (0-based), ``exit_threshold`` (q in (0, 1]), ``weighted_exit``
    (``full_per_depth`` only), ``kv_policy`` (one of ``KV_POLICIES``), ``temperature``
    (0 = greedy, the default), ``top_p``, ``seed``, ``return_logits``. Priority of the exit options as released:
    exit_at_step > exit_threshold > weighted_exit > the config's rule."""
    fn, args, static = prepare(model, prompt, steps, **kw)
    return _wrap(fn(*args, **static))


def timed_looped_generate(model, prompt, steps: int, *, repeats: int = 1, **kw):
    """``looped_generate`` with the compile separated from the run: returns
    (LoopedGeneration, first call seconds minus the best run (~ trace + compile; 0 when the jit
    cache already held it), best run seconds over ``repeats`` timed calls after it)."""
    fn, args, static = prepare(model, prompt, steps, **kw)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **static))
    first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args, **static))
        best = min(best, time.perf_counter() - t0)
    return _wrap(out), max(first - best, 0.0), best


def teacher_forced(model, tokens, prompt_len: int, **kw) -> dict:
    """Cross-entropy of a looped LM's decode path on known text: tokens [B, S] int, the first
    ``prompt_len`` prefilled (all loops), the rest fed one per step through ``decode_step`` with
    the exit rule and ``kv_policy`` of ``kw`` (``looped_generate``'s keywords), each scored by
    the logits that predicted it. -> {"ce": mean over the B (S - prompt_len) predicted tokens,
    "ce_per_token": [B, S - prompt_len], "mean_loops": loops per decoded token (the tokens after
    the first, whose logits came from the all-loop prefill)}. Unlike the full forward's exit
    curves, a token that exited early leaves deeper K/V to the policy, so this measures what a
    KV policy costs in quality."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not 1 <= prompt_len < tokens.shape[1]:
        raise ValueError(f"teacher_forced: prompt_len={prompt_len} must be in [1, S) for "
                         f"tokens of shape {tokens.shape}")
    steps = tokens.shape[1] - prompt_len
    fn, args, static = prepare(model, tokens[:, :prompt_len], steps, return_logits=True,
                               forced=tokens[:, prompt_len:], **kw)
    gen = _wrap(fn(*args, **static))
    logp = jax.nn.log_softmax(jnp.asarray(gen.logits, jnp.float32), axis=-1)
    target = jnp.asarray(tokens[:, prompt_len:], jnp.int32)
    ce = -np.asarray(jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0])
    return {"ce": float(ce.mean()), "ce_per_token": ce,
            "mean_loops": float(np.asarray(gen.token_loops)[:, 1:].mean())}


def loop_stats(gen: LoopedGeneration, loops: int) -> dict:
    """Loops executed per decoded token (the tokens after the first, which the all-loop prefill
    produced): mean, histogram {loops: count} (1..loops), the batched forward's mean, and the
    fraction of loop applications saved against running all ``loops``."""
    tl = np.asarray(gen.token_loops)[:, 1:].reshape(-1)
    bl = np.asarray(gen.batch_loops)[1:]
    hist = {k: int(np.sum(tl == k)) for k in range(1, loops + 1)}
    mean = float(tl.mean()) if tl.size else float(loops)
    return {"decoded_tokens": int(tl.size), "mean_loops": mean,
            "loops_histogram": hist,
            "mean_batch_loops": float(bl.mean()) if bl.size else float(loops),
            "saved_fraction": 1.0 - mean / loops}
