"""Decoder-only language model assembled from registered factories (a "block recipe").

Block l (sublayers 2l and 2l+1):
    h, c = attn_conn.read(H);  y, cache = mixer(norm(h));  H = attn_conn.write(y, c)
    h, c = ffn_conn.read(H);   y, aux = ffn(norm(h));      H = ffn_conn.write(y, c)
LM: H = expand(embed(tokens)); blocks; logits = head(final_norm(reduce(H)), embed).

Memory layers (``model.memory`` + ``model.memory_layers``, see ``memory_placement.py``): a unit
parallel to block l's FFN adds ``memory(norm(h), tables)`` to y before the write; a skip unit
(k:v, v > k) reads block k's ``norm(h)`` and is added to H after block v. ``tables`` are the
LM-level shared tables of the memory factory (UltraMemV2 sharing), or None.

Sandwich norms (``model.sandwich_norm``): each sublayer's output is also normed before the
write, ``y = post_norm(sublayer(pre_norm(h)))`` (Ouro, Gemma 2).

Stack (``model.stack``, a registry part): "plain" applies the blocks once; "looped" (Ouro /
LoopLM, ``seedjax.nn.looped``) applies the same blocks T times, with ``final_norm`` at the end of
every loop feeding the next one, an exit gate, per-loop logits through the one head and an exit
rule choosing the returned logits; its call keywords are ``loops``, ``exit_at_step``,
``exit_threshold``, ``weighted_exit`` and ``return_loop_logits``.

Shapes: tokens int [B, T] (T <= max_seq_len) -> logits float32 [B, T, V].
With ``scan_layers=True`` the blocks' parameters are stacked along a leading "layers" axis and
applied with ``jax.lax.scan`` (faster compiles; needs structurally identical blocks).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.models import factories  # noqa: F401  (registers the default factories)
from seedjax.models import connection_factories  # noqa: F401
from seedjax.models import memory_factories  # noqa: F401
from seedjax.models.config import LMConfig
from seedjax.models.registry import lookup, register
from seedjax.nn.attention import KVCache
from seedjax.nn.looped import LoopOutput, check_loops, exit_readout, resolve_rule
from seedjax.nn.params import is_param
from seedjax.nn.partitioning import constrain


class LMOutput(NamedTuple):
    logits: jax.Array                 # [B, T, V] float32
    aux_losses: dict                  # name -> scalar (already weighted; added to the loss)
    cache: Any = None                 # per-layer KV caches when decoding
    intermediates: dict | None = None  # on request: layer_outputs, streams, branch_inputs
    #                                   (looped: stacked over loops, plus loop_states
    #                                   [T, B, T_seq, d] and gate_logits [T, B, T_seq])
    # looped stacks only (None otherwise):
    loop_logits: jax.Array | None = None  # [T, B, T_seq, V] float32, logits of every loop
    exit_probs: jax.Array | None = None   # [B, T_seq, T] float32 exit distribution p_t
    exit_steps: jax.Array | None = None   # [B, T_seq] int32 loop whose logits were returned


class DecodeCache(NamedTuple):
    """Decode state of an LM whose embed keeps a history (over-encoding's last n-1 tokens):
    ``layers`` the stack's KV caches (what ``init_cache`` returns otherwise), ``embed`` the embed's
    state (``embed.init_history`` / ``embed.advance``)."""
    layers: Any
    embed: Any


def build(kind: str, cfg: LMConfig, *args, **kw):
    """Looks up ``cfg.<kind>`` and calls its factory with ``cfg.<kind>_kwargs``."""
    name = getattr(cfg, kind)
    factory = lookup(kind, name)
    extra = dict(getattr(cfg, f"{kind}_kwargs"))
    make = factory.make if kind == "connection" else factory
    try:
        return make(cfg, *args, **kw, **extra)
    except TypeError as e:
        raise ValueError(f"model.{kind}_kwargs={extra} not accepted by {kind} {name!r}: {e}") from e


def _split_aux(out) -> tuple[jax.Array, dict]:
    return out if isinstance(out, tuple) else (out, {})


def _add_aux(total: dict, aux: dict) -> dict:
    out = dict(total)
    for k, v in aux.items():
        out[k] = out.get(k, 0.0) + v
    return out


def build_memory(cfg: LMConfig, unit: int, *, rngs: nnx.Rngs):
    """Memory unit ``unit`` of ``cfg.memory_pairs`` from the ``memory`` registry."""
    factory = lookup("memory", cfg.memory)
    extra = dict(cfg.memory_kwargs)
    try:
        return factory(cfg, unit, len(cfg.memory_pairs), rngs=rngs, **extra)
    except TypeError as e:
        raise ValueError(f"model.memory_kwargs={extra} not accepted by memory "
                         f"{cfg.memory!r}: {e}") from e


def call_memory(memory, x, tables, unit):
    """Units read shared tables as ``memory(x, tables, layer=unit)`` (unit may be traced)."""
    return _split_aux(memory(x) if tables is None else memory(x, tables, layer=unit))


class Block(nnx.Module):
    """One transformer block: mixer sublayer then FFN sublayer, each wrapped by a connection."""

    def __init__(self, cfg: LMConfig, layer_idx: int, *, rngs: nnx.Rngs,
                 memory_unit: int | None = None):
        self.attn_norm = build("norm", cfg, cfg.d_model, rngs=rngs)
        self.attn = build("mixer", cfg, layer_idx, rngs=rngs)
        self.attn_conn = build("connection", cfg, 2 * layer_idx, rngs=rngs)
        self.ffn_norm = build("norm", cfg, cfg.d_model, rngs=rngs)
        self.ffn = build("ffn", cfg, layer_idx, rngs=rngs)
        self.ffn_conn = build("connection", cfg, 2 * layer_idx + 1, rngs=rngs)
        post = cfg.sandwich_norm
        self.attn_post_norm = build("norm", cfg, cfg.d_model, rngs=rngs) if post else None
        self.ffn_post_norm = build("norm", cfg, cfg.d_model, rngs=rngs) if post else None
        self.memory = None if memory_unit is None else build_memory(cfg, memory_unit, rngs=rngs)
        # the unit index is passed at call time (not stored) so scanned blocks stay identical

    def __call__(self, H, *, positions=None, cache=None, record=False, memory_tables=None,
                 memory_unit=None, tap=False):
        """-> (H, cache, aux_losses, record) where ``record`` (if requested) holds the residual
        state entering each sublayer ``streams`` [2, B, T, ...] and the branch inputs before
        the block norm ``branch_inputs`` [2, B, T, d] (for connection diagnostics); with
        ``tap`` it also holds ``ffn_input`` [B, T, d], the normalised FFN input."""
        H_attn = H
        h_attn, ctx = self.attn_conn.read(H)
        y, cache = self.attn(self.attn_norm(h_attn), positions=positions, cache=cache)
        if self.attn_post_norm is not None:
            y = self.attn_post_norm(y)
        H = self.attn_conn.write(y, ctx)
        H_ffn = H
        h_ffn, ctx = self.ffn_conn.read(H)
        x_ffn = self.ffn_norm(h_ffn)
        y, aux = _split_aux(self.ffn(x_ffn))
        if self.memory is not None:
            y_mem, aux_mem = call_memory(self.memory, x_ffn, memory_tables, memory_unit)
            y, aux = y + y_mem.astype(y.dtype), _add_aux(aux, aux_mem)
        if self.ffn_post_norm is not None:
            y = self.ffn_post_norm(y)
        H = self.ffn_conn.write(y, ctx)
        rec = None
        if record:
            rec = {"streams": jnp.stack([H_attn, H_ffn]),
                   "branch_inputs": jnp.stack([h_attn, h_ffn])}
        if tap:
            rec = {**(rec or {}), "ffn_input": x_ffn}
        return H, cache, aux, rec


def _stack_variables(states: list) -> Any:
    """Stacks per-layer states; prepends the logical axis "layers" to each Param's sharding."""

    def stack(*vs):
        value = jnp.stack([v[...] for v in vs])
        meta = {}
        if is_param(vs[0]):
            meta["out_sharding"] = ("layers",) + tuple(vs[0].get_metadata().get("out_sharding", ()))
        return vs[0].replace(value=value, **meta)

    return jax.tree.map(stack, *states, is_leaf=lambda x: isinstance(x, nnx.Variable))


class LayerStack(nnx.Module):
    """n_layers blocks, applied in a Python loop or (``scan``) with ``lax.scan``."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
        self.scan, self.remat, self.n_layers = cfg.scan_layers, cfg.remat, cfg.n_layers
        pairs = cfg.memory_pairs
        parallel = {k: u for u, (k, v) in enumerate(pairs) if k == v}
        self.parallel_units = tuple(parallel.get(i) for i in range(cfg.n_layers))
        self.skip_pairs = tuple((k, v, u) for u, (k, v) in enumerate(pairs) if v > k)
        if self.skip_pairs and (self.scan or cfg.connection != "residual"):
            raise ValueError(f"model.memory_layers={cfg.memory_layers!r} has skip pairs (v > k), "
                             "which need model.scan_layers=False and model.connection='residual' "
                             f"(got scan_layers={cfg.scan_layers}, connection={cfg.connection!r})")
        blocks = [Block(cfg, i, rngs=rngs, memory_unit=parallel.get(i))
                  for i in range(cfg.n_layers)]
        self.skip_memories = nnx.List([build_memory(cfg, u, rngs=rngs)
                                       for _, _, u in self.skip_pairs])
        if not self.scan:
            self.blocks = nnx.List(blocks)
            return
        splits = [nnx.split(b) for b in blocks]
        graphdef = splits[0][0]
        if any(gd != graphdef for gd, _ in splits[1:]):
            raise ValueError("model.scan_layers=True needs structurally identical blocks; this "
                             "recipe builds different blocks per layer (set scan_layers=False)")
        self.graphdef = graphdef
        self.stacked = nnx.data(_stack_variables([s for _, s in splits]))

    def _apply(self, graphdef, state, H, positions, cache, record, tables=None, unit=None,
               tap=False):
        def run(state, H, cache):
            return nnx.merge(graphdef, state)(H, positions=positions, cache=cache, record=record,
                                              memory_tables=tables, memory_unit=unit, tap=tap)
        return (jax.checkpoint(run) if self.remat else run)(state, H, cache)

    def _memory(self, memory, x, tables, unit):
        """A skip-layer memory unit (read at block k, added after block v); under ``remat`` it is
        recomputed in the backward like the blocks, so its gathered value rows [t, K, v_dim]
        are not kept from the forward (UltraMem-1.6B: the largest activations of the step)."""
        if not self.remat:
            return call_memory(memory, x, tables, unit)
        gd, st = nnx.split(memory)
        return jax.checkpoint(lambda st, x: call_memory(nnx.merge(gd, st), x, tables, unit))(st, x)

    def __call__(self, H, *, positions=None, cache=None, return_intermediates=False,
                 memory_tables=None):
        """-> (H, caches, summed aux losses, intermediates). Intermediates (on request):
        ``layer_outputs`` [L, B, T, ...], ``streams`` [L, 2, B, T, ...] (state entering each
        sublayer) and ``branch_inputs`` [L, 2, B, T, d]."""
        rec = return_intermediates
        if not self.scan:
            aux_total: dict = {}
            new_caches, records, taps = [], [], {}
            tap_blocks = {k for k, _, _ in self.skip_pairs}
            for i, block in enumerate(self.blocks):
                c = None if cache is None else cache[i]
                tap = i in tap_blocks
                if self.remat:
                    gd, st = nnx.split(block)
                    H, c, aux, r = self._apply(gd, st, H, positions, c, rec, memory_tables,
                                               self.parallel_units[i], tap)
                else:
                    H, c, aux, r = block(H, positions=positions, cache=c, record=rec,
                                         memory_tables=memory_tables,
                                         memory_unit=self.parallel_units[i], tap=tap)
                if tap:
                    r = dict(r)
                    taps[i] = r.pop("ffn_input")
                for (k, v, u), memory in zip(self.skip_pairs, self.skip_memories):
                    if v == i:
                        y_mem, aux_mem = self._memory(memory, taps[k], memory_tables, u)
                        H = H + y_mem.astype(H.dtype)
                        aux = _add_aux(aux, aux_mem)
                new_caches.append(c)
                records.append({**r, "layer_outputs": H} if rec else None)
                aux_total = _add_aux(aux_total, aux)
            inter = jax.tree.map(lambda *xs: jnp.stack(xs), *records) if rec else None
            return H, (None if cache is None else new_caches), aux_total, inter

        def body(H, xs):
            state, c, unit = xs        # scanned blocks all have a memory unit or none
            H, c, aux, r = self._apply(self.graphdef, state, H, positions, c, rec, memory_tables,
                                       unit)
            return H, (c, aux, {**r, "layer_outputs": H} if rec else None)

        units = jnp.arange(self.n_layers, dtype=jnp.int32)
        H, (new_cache, aux, inter) = jax.lax.scan(body, H, (self.stacked, cache, units))
        aux_total = {k: jnp.sum(v) for k, v in aux.items()}
        return H, new_cache, aux_total, inter


register("stack", "plain")(lambda cfg, *, rngs: LayerStack(cfg, rngs=rngs))


class LM(nnx.Module):
    """Decoder LM. ``LM(cfg, rngs=nnx.Rngs(seed))(tokens) -> LMOutput``."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.connection = lookup("connection", cfg.connection)
        self.embed = build("embed", cfg, rngs=rngs)
        self.layers = build("stack", cfg, rngs=rngs)
        shared = (getattr(lookup("memory", cfg.memory), "shared_tables", None)
                  if cfg.memory != "none" else None)
        self.memory_tables = (None if shared is None else
                              shared(cfg, len(cfg.memory_pairs), rngs=rngs,
                                     **dict(cfg.memory_kwargs)))
        self.final_norm = build("norm", cfg, cfg.d_model, rngs=rngs)
        self.head = build("head", cfg, rngs=rngs)

    @property
    def looped(self) -> bool:
        return bool(getattr(self.layers, "looped", False))

    def init_cache(self, batch: int, length: int | None = None, dtype=None, *,
                   loops: int | None = None):
        """Empty KV caches for decoding up to ``length`` (default max_seq_len) positions. A looped
        stack gets one per loop (``loops``, default the configured T), each holding the per-layer
        caches: slot (loop t, layer l) as in the released Ouro cache."""
        cfg = self.cfg
        if self.looped:
            loops = self.layers.config.loops if loops is None else loops
            check_loops(loops)
            layers = [self._stack_cache(batch, length, dtype) for _ in range(loops)]
        elif loops is not None:
            raise ValueError(f"loops={loops!r} needs model.stack='looped' "
                             f"(got {cfg.stack!r})")
        else:
            layers = self._stack_cache(batch, length, dtype)
        init_history = getattr(self.embed, "init_history", None)
        return layers if init_history is None else DecodeCache(layers, init_history(batch))

    def _stack_cache(self, batch: int, length: int | None, dtype):
        cfg = self.cfg
        length = cfg.max_seq_len if length is None else length
        if length > cfg.max_seq_len:
            raise ValueError(f"cache length {length} exceeds model.max_seq_len={cfg.max_seq_len}")
        one = lambda: KVCache.zeros(batch, length, cfg.kv_heads, cfg.resolved_head_dim,
                                    dtype or cfg.compute_dtype)
        if cfg.scan_layers:
            return jax.tree.map(lambda *xs: jnp.stack(xs), *[one() for _ in range(cfg.n_layers)])
        return [one() for _ in range(cfg.n_layers)]

    def __call__(self, tokens: jax.Array, *, positions: jax.Array | None = None, cache=None,
                 return_intermediates: bool = False, loops: int | None = None,
                 exit_at_step: int | None = None, exit_threshold: float | None = None,
                 weighted_exit: bool | None = None,
                 return_loop_logits: bool = True, targets: jax.Array | None = None,
                 target_mask: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> LMOutput:
        """tokens int [B, T] -> LMOutput. Looped stacks only (ValueError otherwise): ``loops``
        (T for this call, default the configured one), ``exit_at_step`` (0-based loop whose
        logits are returned), ``exit_threshold`` (q in (0, 1]: per token the first loop whose
        exit CDF >= q), ``weighted_exit`` (sum_t p_t logits_t); priority in that order, else the
        config's ``exit_rule``. ``return_loop_logits=False`` skips ``loop_logits`` (and the
        head calls a rule does not need). ``targets`` int [B, T] (and ``target_mask`` float [B, T],
        1 = trained on): training targets for heads with training-only losses (a head with
        ``training_losses(x, targets, embed, mask=) -> {name: weighted scalar}``, e.g.
        over-decoding's extra future-token heads): their losses join ``aux_losses``; other heads
        ignore them. ``segment_ids`` int [B, T]: packed-document ids for embeds that cut their
        look-back at document boundaries (over-encoding with boundary="segment").
        A ``DecodeCache`` (from ``init_cache`` when the embed keeps a history) is returned
        updated in ``LMOutput.cache``."""
        cfg = self.cfg
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        if tokens.shape[1] > cfg.max_seq_len:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds model.max_seq_len="
                             f"{cfg.max_seq_len}")
        embed_state = None
        if isinstance(cache, DecodeCache):
            embed_state, cache = cache.embed, cache.layers
        H, tables, x_in = self._stream(tokens, segment_ids, embed_state)
        out = self._call_stack(H, tables, x_in, positions, cache, return_intermediates,
                               return_loop_logits, targets, target_mask, loops=loops,
                               exit_at_step=exit_at_step, exit_threshold=exit_threshold,
                               weighted_exit=weighted_exit)
        if embed_state is None:
            return out
        state = self.embed.advance(embed_state, tokens, segment_ids)
        return out._replace(cache=DecodeCache(out.cache, state))

    def _call_stack(self, H, tables, x_in, positions, cache, return_intermediates,
                    return_loop_logits, targets, target_mask, **loop_kw) -> LMOutput:
        cfg = self.cfg
        head_train = None if targets is None else getattr(self.head, "training_losses", None)
        if self.looped:
            if head_train is not None:
                raise ValueError(f"model.head={cfg.head!r} has training-only losses, which a "
                                 "looped stack does not support (model.stack='looped')")
            return self._looped(H, positions, cache, return_intermediates, tables,
                                return_loop_logits, **loop_kw)
        given = {k: v for k, v in loop_kw.items() if v is not None}
        if given:
            raise ValueError(f"{sorted(given)} need model.stack='looped' (got {cfg.stack!r})")
        H, cache, aux, inter = self.layers(H, positions=positions, cache=cache,
                                           return_intermediates=return_intermediates,
                                           memory_tables=tables)
        x = self.final_norm(self.connection.reduce(H, cfg))
        logits, head_aux = _split_aux(self.head(x, self.embed))
        aux = {**aux, **head_aux}
        if head_train is not None:
            aux = {**aux, **head_train(x, targets, self.embed, mask=target_mask,
                                       input_embeddings=x_in)}
        return LMOutput(logits.astype(jnp.float32), aux, cache, inter)

    def _stream(self, tokens: jax.Array, segment_ids: jax.Array | None = None,
                embed_state: Any = None):
        """tokens [B, T] -> (the connection's stream H [B, T, ...], shared memory tables, the
        input embeddings x [B, T, d]). ``segment_ids`` / ``embed_state`` go to embeds that take
        them (over-encoding)."""
        kw = {}
        if segment_ids is not None:
            kw["segment_ids"] = segment_ids
        if embed_state is not None:
            kw["history"] = embed_state
        try:
            x = self.embed(tokens, **kw)
        except TypeError as e:
            if not kw:
                raise
            raise ValueError(f"model.embed={self.cfg.embed!r} takes no {sorted(kw)}: {e}") from e
        x = constrain(x, ("batch", "length", "embed"))
        H = self.connection.expand(x, self.cfg)
        return H, (None if self.memory_tables is None else self.memory_tables()), x

    def _run_loops(self, H, tables, *, loops, positions=None, cache=None,
                   return_intermediates=False) -> LoopOutput:
        cfg = self.cfg
        finalize = lambda H: self.final_norm(self.connection.reduce(H, cfg))
        expand = lambda x: self.connection.expand(x, cfg)
        return self.layers(H, finalize=finalize, expand=expand, loops=loops, positions=positions,
                           cache=cache, return_intermediates=return_intermediates,
                           memory_tables=tables)

    def loop_states(self, tokens: jax.Array, *, loops: int | None = None) -> LoopOutput:
        """Looped stacks: the per-loop normed states [T, B, S, D] and gate logits [T, B, S]
        (None without a gate) of ``tokens`` int [B, S], with no head call, for objectives that
        evaluate the head loop by loop (``seedjax.train.looped_objectives``)."""
        if not self.looped:
            raise ValueError(f"loop_states needs model.stack='looped' (got {self.cfg.stack!r})")
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        n_loops = self.layers.config.loops if loops is None else check_loops(loops)
        H, tables, _ = self._stream(tokens)
        return self._run_loops(H, tables, loops=n_loops)

    def head_logits(self, x: jax.Array) -> tuple[jax.Array, dict]:
        """The LM head on normed states x [..., D]: (logits float32 [..., V], aux losses)."""
        logits, aux = _split_aux(self.head(x, self.embed))
        return logits.astype(jnp.float32), aux

    def _looped(self, H, positions, cache, return_intermediates, tables, return_loop_logits, *,
                loops, exit_at_step, exit_threshold, weighted_exit) -> LMOutput:
        n_loops = self.layers.config.loops if loops is None else check_loops(loops)
        rule, arg = resolve_rule(self.layers.config, n_loops, exit_at_step=exit_at_step,
                                 exit_threshold=exit_threshold, weighted_exit=weighted_exit)
        out = self._run_loops(H, tables, loops=n_loops, positions=positions, cache=cache,
                              return_intermediates=return_intermediates)
        read = exit_readout(out.states, out.gate_logits, lambda x: self.head(x, self.embed),
                            rule, arg, return_loop_logits=return_loop_logits)
        inter = None
        if return_intermediates:
            inter = {**(out.intermediates or {}), "loop_states": out.states}
            if out.gate_logits is not None:
                inter["gate_logits"] = out.gate_logits
        return LMOutput(read.logits, {**out.aux_losses, **read.aux_losses}, out.cache, inter,
                        read.loop_logits, read.exit_probs, read.exit_steps)
