"""Over-encoding (Over-Tokenized Transformer, arXiv 2501.16975, Eq. 5 / Algorithm 1): the input
embedding of token x_t plus hashed embeddings of the n-grams ending at t.

    OE(x)_t = [E_V(x_t) + sum_{s} W_s T_s[row_s(t)] (+ b_s)] / (1 + S)

S = k * len(orders) slices: each n-gram order gets k slices of width w = D / (k * len(orders))
(Alg. 1's D/(k(n-1)); "OE-m" holds m * D n-gram parameters whatever k), slice s hashes the
order-n id ``sum_a x_{t-a} V^a`` with its own modulus ``m + 2 s`` (Alg. 1: successive slices get
m, m+2, ...; so they collide on different n-grams) and has its own projection W_s [w, D] (no bias
by default, as in every public implementation; ``bias=True`` adds one). Row ids are exact in
int32 (``seedjax.ops.ngram_rows``); the moduli are checked for injectivity at construction.

All slices live in ONE flat table ``ngram_table [R, w]`` (slice s at rows [off_s, off_s + M_s),
R padded to a multiple of ``row_multiple``; padded rows are never read), so one parameter is
sharded and one gather serves every slice; the S looked-up rows [B, T, S, w] then meet the
stacked projections ``proj [S, w, D]`` in one einsum (= the concatenated slices [B, T, S w] times
the block-diagonal [S w, S D] matrix summed over slices). With ``table_sharding`` set ("psum" |
"all_to_all") the rows are sharded over mesh axis ``table_axis`` and looked up in ``shard_map``
(``seedjax.ops.sharded_lookup``); the table's logical axes are ("ngram_rows", "ngram_dim").

Inference with the table in host RAM: ``offload_table()`` (lookups become a host callback that
returns only the S rows per token; decoding then needs no device memory for the table).

Normalisation (``norm``): "mean" (Alg. 1: the whole sum / (1 + S); default), "ngram_mean"
(x + sum / (1 + S), LongCat-Lite), "sqrt" (/ sqrt(1 + S)). Without the 1-gram input term
(``unigram=False``, the Table 3 ablation) the count is S; the 1-gram table still exists and
serves a tied output head (so the ablation changes the input only).

Optimizer labels: the n-gram table has ``weight_decay=False`` and ``lr_group="ngram_tables"``
(``train.lr_multipliers.ngram_tables`` sets its learning rate); projections are ordinary.

Shapes: ``__call__(tokens int [B, T], *, segment_ids=None | int [B, T], history=None |
OEHistory) -> [B, T, D]``; ``attend(x [.., D]) -> [.., V]`` float32 (tied heads: the
1-gram table). Decode: ``init_history(B)`` and ``advance(history, tokens, segment_ids)`` keep the
last ``history_len = max(orders) - 1`` tokens so one-token steps equal the full forward.
"""
from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.nn.embeddings import TokenEmbedding
from seedjax.nn.params import normal_init, param
from seedjax.ops.embedding_bag import gather_rows
from seedjax.ops.ngram_rows import (MAX_MODULUS, check_boundary, check_moduli, ngram_rows,
                                    segments_of)
from seedjax.ops.sharded_lookup import check_table_sharding, sharded_embedding_bag

NORMS = ("mean", "ngram_mean", "sqrt")


class HostTable:
    """The n-gram table held in host RAM as a NumPy array (``OverEncodingEmbed.offload_table``);
    hashed by identity so it can sit in a module's static structure."""

    def __init__(self, array: np.ndarray):
        self.array = array

    def gather(self, rows) -> np.ndarray:
        return self.array[np.asarray(rows)]


class OEHistory(NamedTuple):
    """Decode state: the last ``history_len`` tokens and their segment ids, int32 [B, h]."""
    tokens: jax.Array
    segments: jax.Array


@dataclasses.dataclass(frozen=True)
class OverEncodingConfig:
    """vocab_size V, d_model D; ``m``: rows of the first slice's table (slice s: m + 2 s);
    ``n``: the largest n-gram order (orders 2..n) unless ``orders`` lists them, e.g. (3,) for the
    {1, 3} hierarchy; ``k`` slices per order; ``width`` per slice (default D / (k len(orders)));
    ``unigram``: add E_V(x_t) to the input; ``norm`` in NORMS; ``bias``: projection biases;
    ``boundary`` in ("eos", "segment", "none") with ``eos_id`` (``seedjax.ops.ngram_rows``);
    ``row_multiple``: pad the flat table's rows to a multiple (device counts); sharding:
    ``table_sharding`` None | "psum" | "all_to_all" over ``table_axis``; ``allow_collisions``:
    accept a modulus that is a multiple of V (warning; the paper's Table 4 ablation)."""
    vocab_size: int
    d_model: int
    m: int
    n: int = 2
    orders: tuple[int, ...] | None = None
    k: int = 1
    width: int | None = None
    unigram: bool = True
    norm: str = "mean"
    bias: bool = False
    boundary: str = "eos"
    eos_id: int = 0
    row_multiple: int = 128
    init_std: float = 0.02
    table_sharding: str | None = None
    table_axis: str = "mem"
    table_capacity_factor: float | None = None
    allow_collisions: bool = False

    def __post_init__(self):
        own = "model.embed_kwargs"
        for name, low in (("vocab_size", 2), ("d_model", 1), ("m", 1), ("k", 1),
                          ("row_multiple", 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{own}.{name} must be an integer >= {low}, got {v!r}")
        if self.orders is None and (isinstance(self.n, bool) or not isinstance(self.n, int)
                                    or self.n < 2):
            raise ValueError(f"{own}.n must be an integer >= 2 with over-encoding on (orders "
                             f"2..n), got {self.n!r}")
        orders = self.resolved_orders
        if not orders or any(isinstance(o, bool) or not isinstance(o, int) or o < 2
                             for o in orders) or len(set(orders)) != len(orders):
            raise ValueError(f"{own}.orders must be distinct integers >= 2, got {self.orders!r}")
        if self.width is None and self.d_model % self.n_slices:
            raise ValueError(f"{own}: d_model={self.d_model} is not divisible by k * len(orders)"
                             f" = {self.n_slices}; choose k dividing it or set width")
        if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
            raise ValueError(f"{own}.width must be a positive integer or None, got "
                             f"{self.width!r}")
        if self.norm not in NORMS:
            raise ValueError(f"{own}.norm={self.norm!r} is not allowed; allowed: {NORMS}")
        check_boundary(self.boundary, f"{own}.boundary")
        if not 0 <= self.eos_id < self.vocab_size:
            raise ValueError(f"{own}.eos_id={self.eos_id} must be in [0, {self.vocab_size})")
        if self.m + 2 * (self.n_slices - 1) > MAX_MODULUS:
            raise ValueError(f"{own}.m={self.m}: slice moduli up to m + 2(S-1) must be <= "
                             f"{MAX_MODULUS}")
        check_table_sharding(own, self.table_sharding, self.table_axis,
                             self.table_capacity_factor)
        check_moduli(self.vocab_size, self.moduli, self.slice_orders, owner=own,
                     allow_multiple=self.allow_collisions)

    @property
    def resolved_orders(self) -> tuple[int, ...]:
        return tuple(self.orders) if self.orders is not None else tuple(range(2, self.n + 1))

    @property
    def n_slices(self) -> int:
        return self.k * len(self.resolved_orders)

    @property
    def slice_width(self) -> int:
        return self.width if self.width is not None else self.d_model // self.n_slices

    @property
    def slice_orders(self) -> tuple[int, ...]:
        """Order of slice s (Alg. 1 order: all k slices of order 2, then order 3, ...)."""
        return tuple(o for o in self.resolved_orders for _ in range(self.k))

    @property
    def moduli(self) -> tuple[int, ...]:
        return tuple(self.m + 2 * s for s in range(self.n_slices))

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for mod in self.moduli:
            out.append(acc)
            acc += mod
        return tuple(out)

    @property
    def table_rows(self) -> int:
        """Rows of the flat table: sum of the moduli, padded to ``row_multiple``."""
        used = sum(self.moduli)
        return -(-used // self.row_multiple) * self.row_multiple

    @property
    def history_len(self) -> int:
        return max(self.resolved_orders) - 1

    @property
    def n_terms(self) -> int:
        return self.n_slices + (1 if self.unigram else 0)

    @property
    def ngram_params(self) -> int:
        """n-gram table parameters actually addressable (sum of moduli times width)."""
        return sum(self.moduli) * self.slice_width


class OverEncodingEmbed(nnx.Module):
    """Over-encoded input embedding (module docstring). ``OverEncodingEmbed(cfg, rngs=...)``."""

    def __init__(self, config: OverEncodingConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        c = self.config = config
        self.dtype = dtype
        self.unigram = TokenEmbedding(c.vocab_size, c.d_model, init_std=c.init_std, dtype=dtype,
                                      rngs=rngs)
        w = c.slice_width
        self.ngram_table = param(rngs, normal_init(c.init_std), (c.table_rows, w),
                                 ("ngram_rows", "ngram_dim"), weight_decay=False,
                                 lr_group="ngram_tables")
        self.proj = param(rngs, normal_init(c.init_std), (c.n_slices, w, c.d_model),
                          (None, None, "embed"))
        self.proj_bias = (param(None, lambda k, s, d: jnp.zeros(s, d), (c.n_slices, c.d_model),
                                (None, "embed"), weight_decay=False) if c.bias else None)
        self.host_table = None

    def offload_table(self) -> None:
        """Inference only: move the n-gram table to host RAM (the paper's Table 7 setup). The
        parameter becomes an empty [0, w] array and every lookup gathers its rows [.., S, w] on
        the host through ``jax.pure_callback`` (one host round trip per call; no gradient)."""
        if self.config.table_sharding is not None:
            raise ValueError("offload_table needs table_sharding=None (one host copy of the "
                             "table)")
        table = np.asarray(jax.device_get(self.ngram_table[...]))
        self.host_table = HostTable(table)
        self.ngram_table = nnx.Param(jnp.zeros((0, table.shape[1]), table.dtype),
                                     **self.ngram_table.get_metadata())

    @property
    def history_len(self) -> int:
        return self.config.history_len

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    # ---- rows and lookups -------------------------------------------------------------------

    def rows(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
             history: OEHistory | None = None) -> jax.Array:
        """Flat-table row ids int32 [B, T, S] of tokens int [B, T] (after ``history``)."""
        c = self.config
        tokens = tokens.astype(jnp.int32)
        if segment_ids is not None:
            segment_ids = jnp.asarray(segment_ids, jnp.int32)
        t = tokens.shape[-1]
        if history is not None:
            tokens = jnp.concatenate([history.tokens.astype(jnp.int32), tokens], axis=-1)
            if c.boundary == "segment":
                if segment_ids is None:
                    raise ValueError("boundary='segment' needs segment_ids for the new tokens")
                segment_ids = jnp.concatenate([history.segments, segment_ids], axis=-1)
        segments = segments_of(tokens, c.boundary, c.eos_id, segment_ids)
        rows = ngram_rows(tokens, vocab_size=c.vocab_size, orders=c.slice_orders,
                          moduli=c.moduli, offsets=c.offsets, segments=segments)
        return rows[..., -t:, :]

    def slice_embeddings(self, rows: jax.Array) -> jax.Array:
        """Rows int [B, T, S] -> the slices' table rows [B, T, S, w] (sharded lookup if set)."""
        c = self.config
        if self.host_table is not None:
            host = self.host_table.array
            out = jax.ShapeDtypeStruct(rows.shape + (host.shape[1],), host.dtype)
            return jax.pure_callback(self.host_table.gather, out, rows,
                                     vmap_method="broadcast_all")
        table = self.ngram_table[...]
        if c.table_sharding is None:
            return gather_rows(table, rows)
        groups = jnp.broadcast_to(jnp.arange(c.n_slices, dtype=jnp.int32), rows.shape)
        return sharded_embedding_bag(table, rows, jnp.ones(rows.shape, table.dtype),
                                     groups=groups, n_groups=c.n_slices,
                                     scheme=c.table_sharding, axis=c.table_axis,
                                     capacity_factor=c.table_capacity_factor)

    def project_slices(self, e: jax.Array) -> jax.Array:
        """[B, T, S, w] -> sum_s e_s W_s (+ b_s): [B, T, D]."""
        y = jnp.einsum("btsw,swd->btd", e.astype(self.dtype), self.proj[...].astype(self.dtype))
        if self.proj_bias is not None:
            y = y + jnp.sum(self.proj_bias[...], axis=0).astype(self.dtype)
        return y

    def __call__(self, tokens: jax.Array, *, segment_ids: jax.Array | None = None,
                 history: OEHistory | None = None) -> jax.Array:
        c = self.config
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, length], got shape {tokens.shape}")
        ngram = self.project_slices(self.slice_embeddings(
            self.rows(tokens, segment_ids=segment_ids, history=history)))
        x = self.unigram(tokens) if c.unigram else jnp.zeros_like(ngram)
        if c.norm == "mean":
            return (x + ngram) / c.n_terms
        if c.norm == "ngram_mean":
            return x + ngram / c.n_terms
        return (x + ngram) / math.sqrt(c.n_terms)

    def attend(self, x: jax.Array) -> jax.Array:
        return self.unigram.attend(x)

    # ---- decode -----------------------------------------------------------------------------

    def init_history(self, batch: int) -> OEHistory:
        """History before any token: pad tokens 0 in segment -1 (= the sequence start)."""
        h = self.history_len
        return OEHistory(jnp.zeros((batch, h), jnp.int32), jnp.full((batch, h), -1, jnp.int32))

    def advance(self, history: OEHistory, tokens: jax.Array,
                segment_ids: jax.Array | None = None) -> OEHistory:
        """The history after ``tokens`` int [B, t]: the last ``history_len`` tokens and ids."""
        h = self.history_len
        toks = jnp.concatenate([history.tokens, tokens.astype(jnp.int32)], axis=-1)[:, -h:]
        segs = (jnp.zeros_like(tokens, jnp.int32) if segment_ids is None
                else jnp.asarray(segment_ids, jnp.int32))
        segs = jnp.concatenate([history.segments, segs], axis=-1)[:, -h:]
        return OEHistory(toks, segs)


def slice_layout(config: OverEncodingConfig) -> list[dict]:
    """Per-slice description: order, modulus, row offset, width (for logs and docs)."""
    return [dict(slice=s, order=o, modulus=m, offset=off, width=config.slice_width)
            for s, (o, m, off) in enumerate(zip(config.slice_orders, config.moduli,
                                                 config.offsets))]

