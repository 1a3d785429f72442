"""Autoregressive sampling with the KV cache: greedy, temperature and nucleus (top-p).

``generate(model, prompt [B, P], steps)`` prefills the cache with the prompt in one forward,
then decodes one token per step inside a jitted ``lax.scan``. Returns tokens [B, P + steps].
Memory layers' retrievals do their weight-only work once per call, before the loop
(``seedjax.nn.memory.prepare_decode``; the caller's model is not changed).
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.memory import prepare_decode


def sample_logits(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
    """logits [B, V] -> token ids [B]. temperature 0 = greedy; top_p < 1 = nucleus sampling."""
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"sample.temperature must be >= 0 (got {temperature}) and sample.top_p "
                         f"in (0, 1] (got {top_p})")
    if temperature == 0:
        return jnp.argmax(logits, axis=-1)
    logits = logits.astype(jnp.float32) / temperature
    if top_p < 1:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        cum = jnp.cumsum(probs, axis=-1)
        # smallest set whose mass reaches top_p: keep tokens whose preceding mass < top_p
        keep = (cum - probs) < top_p
        cutoff = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
    return jax.random.categorical(key, logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "temperature", "top_p"))
def _generate(graphdef, state, prompt, key, *, steps, temperature, top_p):
    model = nnx.merge(graphdef, state)
    prepare_decode(model)
    b, p = prompt.shape
    cache = model.init_cache(b, p + steps)
    out = model(prompt, cache=cache)
    key, sub = jax.random.split(key)
    first = sample_logits(out.logits[:, -1], sub, temperature, top_p)

    def body(carry, _):
        tok, cache, key = carry
        o = model(tok[:, None], cache=cache)
        key, sub = jax.random.split(key)
        nxt = sample_logits(o.logits[:, -1], sub, temperature, top_p)
        return (nxt, o.cache, key), tok

    (last, _, _), toks = jax.lax.scan(body, (first, out.cache, key), None, length=steps - 1)
    new = jnp.concatenate([toks.T, last[:, None]], axis=1) if steps > 1 else first[:, None]
    return jnp.concatenate([prompt, new.astype(prompt.dtype)], axis=1)


def generate(model: nnx.Module, prompt: jax.Array, steps: int, *, temperature: float = 1.0,
             top_p: float = 1.0, seed: int = 0) -> jax.Array:
    """Samples ``steps`` tokens after ``prompt`` [B, P] (int32). Needs P + steps <= max_seq_len."""
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be [batch, length>=1] token ids, got shape {prompt.shape}")
    if steps < 1:
        raise ValueError(f"sample.length must be >= 1, got {steps}")
    max_len = model.cfg.max_seq_len
    if prompt.shape[1] + steps > max_len:
        raise ValueError(f"prompt length {prompt.shape[1]} + sample.length {steps} exceeds "
                         f"model.max_seq_len={max_len}")
    graphdef, state = nnx.split(model)
    return _generate(graphdef, state, prompt, jax.random.key(seed), steps=steps,
                     temperature=float(temperature), top_p=float(top_p))


def sample_text(model, tokenizer, prompt: str, length: int, *, temperature: float, top_p: float,
                seed: int = 0, num_samples: int = 1) -> str:
    """Samples ``num_samples`` continuations of ``prompt`` and decodes them with ``tokenizer``."""
    ids = tokenizer.encode(prompt)
    if len(ids) == 0:
        raise ValueError("--prompt must not be empty")
    prompt_ids = np.tile(np.asarray(ids, np.int32)[None], (num_samples, 1))
    out = np.asarray(generate(model, prompt_ids, length, temperature=temperature, top_p=top_p,
                              seed=seed))
    return "\n----\n".join(tokenizer.decode(row) for row in out)
