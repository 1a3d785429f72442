"""UltraMemV2 (arXiv 2508.18756) memory layer as a Flax NNX module.

In the LM a V2 layer sits in every block, in parallel with the FFN (it reads the block's
normalised FFN input; its output is added to the FFN's). For a token x [D]:

    scores, g = TuckerRetrieval(x)        per-rank queries (§4.1 item 2), 1 head, MCS h_c cores
    j  = pi(g) mod (g_s N)  if the grid is expanded or shared, else g     local slot
    i  = global row of j (``sharing.py``; per-layer table when sharing = "none")
    a_j = < P[i_j], x W_pre >             PEER-style coefficient (eq. 15; no activation by
                                          default, ``pre_act="gelu"`` for eq. 13's sigma)
    o  = W^T concat_c( sum_j s_c[j] a_j V[i_j, c-th slice] )     single projector W [Dv, D]

``values="plain"`` drops the pre-values (o = W^T sum_j s_j V[i_j]): the baseline of V2 Fig. 2.
``expand`` E keeps UltraMem's virtual grid (sqrt(E) more keys per side) with all E groups
summed before the single projector, as the official V2 code does (default 1, the paper's text).
With sharing group g_s the key grid has isqrt(E g_s) n keys per side (V2 §4.5: sqrt(g) more).

Init presets (``init``):
  * "paper" (§3.5, App. A): query LN gain calibrated to a mean selected score of 1 (returns
    sigma_s), W_pre and W ~ N(0, 0.4 / D), and values and pre-values with eq. 26
        sigma_V^4 = 0.2 ffn_dim / (m H (1 + sigma_s^2) Dp Dv L)
    (the printed sigma_V^2 is a typo: eqs. 22 and 25 only solve with the 4th power).
    ``values="plain"``: the same derivation without the pre-value dot gives
        sigma_V^2 = 0.08 ffn_dim / (m H (1 + sigma_s^2) Dv L)   [derived here, not in the paper].
  * "official" (released code): values and pre-values ~ N(0, 0.02), W_pre ~ N(0, D^-1/2),
    W ~ N(0, Dv^-1/2), LN gains Dk^-0.4.

Parameters (logical axes; optimizer labels): the retrieval's (``tdqkr.py``) plus
    values      [N, Dv]   ("mem_rows", "mem_dim")   lr_group="memory_values"; only when
    pre_values  [N, Dp]   ("mem_rows", "mem_pdim")  sharing="none" (else the LM's
                                                    ``SharedValueTables`` holds [L N, .])
    w_pre       [D, Dp]   ("embed", "mem_pdim")
    w_out       [Dv, D]   ("mem_dim", "embed")

Shapes: ``__call__(x [..., T, D], tables=None)`` -> [..., T, D] (or (y, aux) with the Tucker
penalty on); ``retrieve(x)`` -> (scores [..., T, H, m, h_c], global rows [..., T, H, m]).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.linear import project
from seedjax.nn.memory.sharing import check_sharing, global_rows
from seedjax.nn.memory.tdqkr import (TDQKRConfig, TuckerRetrieval, isqrt_exact,
                                     ive_permutation, retrieval_config_of)
from seedjax.nn.params import normal_init, param
from seedjax.ops import embedding_bag, row_dot
from seedjax.ops.sharded_lookup import (check_table_sharding, sharded_embedding_bag,
                                        sharded_row_dot)
from seedjax.validation import check_choice, check_int

VALUE_KINDS = ("peer", "plain")
PRE_ACTS = ("none", "gelu")
ROWCOL_CAP = 128          # V2 §4.1: row/column TopM capped at 128 for TopM 256 / 768
_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class UltraMemV2Config:
    """Validated UltraMemV2 hyper-parameters (defaults: the paper's 1 head, r = 2, h_c = 2,
    per-rank queries, PEER values with Dp:Dv = 1:3-like small dims, no aux losses).

    Fields: d_model D; n_keys knum (N = knum^2 rows per layer table); k_dim Dk; v_dim Dv;
    p_dim Dp; heads H; topk m; topk_side (None -> min(m, 128, keys per side)); rank; cores;
    expand E (perfect square); query_mode; qk_norm; query_conv; values ("peer" | "plain");
    pre_act ("none" | "gelu"); init ("paper" | "official"); ffn_dim (the block FFN's inner dim,
    for eq. 26); layer (this layer's index) and n_layers (memory layers L); sharing ("none" |
    "ring" | "noring" | "block") and share_group g_s; preselect; aux_coef / aux_margin;
    value_init_std / out_init_std overrides; values_weight_decay; shuffle_seed; ln_gain_power;
    implementation; table_sharding (None | "psum" | "all_to_all": read the value and pre-value
    tables, row-sharded over mesh axis ``table_axis``, with ``seedjax.ops.sharded_lookup``
    under the ``jax.set_mesh`` context; None = plain gathers) and table_capacity_factor
    (all_to_all buffer capacity; None = worst case, exact).
    """

    d_model: int
    n_keys: int = 32
    k_dim: int = 64
    v_dim: int | None = None
    p_dim: int | None = None
    heads: int = 1
    topk: int = 32
    topk_side: int | None = None
    rank: int = 2
    cores: int = 2
    expand: int = 1
    query_mode: str = "per_rank"
    qk_norm: bool = True
    query_conv: int = 0
    values: str = "peer"
    pre_act: str = "none"
    init: str = "paper"
    ffn_dim: int | None = None
    layer: int = 0
    n_layers: int = 1
    sharing: str = "none"
    share_group: int = 1
    preselect: str = "top"
    aux_coef: float = 0.0
    aux_margin: float = 0.15
    value_init_std: float | None = None
    out_init_std: float | None = None
    values_weight_decay: bool = True
    shuffle_seed: int = 0
    ln_gain_power: float = 0.4
    implementation: str = "auto"
    table_sharding: str | None = None
    table_axis: str = "mem"
    table_capacity_factor: float | None = None

    def __post_init__(self):
        owner = "UltraMemV2Config"
        check_table_sharding(owner, self.table_sharding, self.table_axis,
                             self.table_capacity_factor)
        for name in ("d_model", "n_keys", "expand", "n_layers", "cores"):
            check_int(f"{owner}.{name}", getattr(self, name))
        check_int(f"{owner}.layer", self.layer, minimum=0)
        check_int(f"{owner}.shuffle_seed", self.shuffle_seed, minimum=0)
        if self.layer >= self.n_layers:
            raise ValueError(f"{owner}.layer={self.layer} must be < n_layers={self.n_layers}")
        for name, default in (("v_dim", max(self.d_model // 4, 1)),
                              ("p_dim", max(self.d_model // 4, 1)),
                              ("ffn_dim", 4 * self.d_model)):
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
            check_int(f"{owner}.{name}", getattr(self, name))
        if self.v_dim % self.cores:
            raise ValueError(f"{owner}.v_dim={self.v_dim} is not divisible by cores="
                             f"{self.cores} (Multi-Core Scoring splits each value into cores "
                             "slices)")
        check_choice(f"{owner}.values", self.values, VALUE_KINDS)
        check_choice(f"{owner}.pre_act", self.pre_act, PRE_ACTS)
        check_sharing(owner, self.sharing, self.share_group, self.n_layers)
        isqrt_exact(owner, "expand", self.expand)
        if self.n_layers * self.n_slots > _INT32_MAX:
            raise ValueError(f"{owner}: n_layers * n_keys**2 rows exceed int32 indices")
        if self.topk_side is None:
            object.__setattr__(self, "topk_side",
                               min(self.topk, ROWCOL_CAP, self.keys_per_side))
        self.retrieval_config()

    @property
    def n_slots(self) -> int:
        return self.n_keys ** 2

    @property
    def keys_per_side(self) -> int:
        """isqrt(E g_s) * knum, floored (V2 §4.5)."""
        return math.isqrt(self.expand * self.share_group * self.n_slots)

    @property
    def local_slots(self) -> int:
        return self.share_group * self.n_slots

    @property
    def shuffled(self) -> bool:
        return self.keys_per_side ** 2 != self.n_slots

    def retrieval_config(self) -> TDQKRConfig:
        return retrieval_config_of(self, keys_per_side=self.keys_per_side,
                                   keys_rule="isqrt(expand * share_group) * n_keys")

    @property
    def memory_to_ffn_ratio(self) -> float:
        """Forward FLOPs of this layer / those of a SwiGLU FFN of inner dim ffn_dim."""
        return sum(self.forward_flops_per_token().values()) / (6 * self.d_model * self.ffn_dim)

    def forward_flops_per_token(self) -> dict[str, int]:
        """Retrieval + pre-value projection 2 D Dp and dots 2 H m Dp (PEER) + value read
        2 H m Dv + output projection 2 Dv D."""
        out = self.retrieval_config().forward_flops_per_token()
        if self.values == "peer":
            out["mem_pre"] = 2 * self.d_model * self.p_dim + 2 * self.heads * self.topk * self.p_dim
        out["mem_values"] = 2 * self.heads * self.topk * self.v_dim
        out["mem_out"] = 2 * self.v_dim * self.d_model
        return out


def k_dim_for_ratio(ratio: float, **fields) -> int:
    """The k_dim (a multiple of 8) whose layer has ``memory FLOPs / FFN FLOPs`` closest to
    ``ratio`` (V2 §4.2.4 varies Dk to set the memory computational proportion; MCP = r/(1+r) of
    FFN+memory compute). ``fields``: the other ``UltraMemV2Config`` fields (d_model, ffn_dim...).
    Memory FLOPs are affine in Dk, so two evaluations give the line."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not ratio > 0:
        raise ValueError(f"UltraMemV2 mem_to_ffn_ratio={ratio!r} must be a number > 0")
    fields = {k: v for k, v in fields.items() if k != "k_dim"}
    at = lambda dk: UltraMemV2Config(k_dim=dk, **fields)
    f8, f16 = (sum(at(dk).forward_flops_per_token().values()) for dk in (8, 16))
    ffn = 6 * at(8).d_model * at(8).ffn_dim
    slope = (f16 - f8) / 8
    dk = (ratio * ffn - (f8 - 8 * slope)) / slope
    return max(8, int(round(dk / 8)) * 8)


def eq26_value_std(c: UltraMemV2Config, sigma_s) -> jax.Array:
    """sigma_V of the "paper" preset (eq. 26 for PEER values; its plain-value analogue)."""
    denom = c.topk * c.heads * (1.0 + sigma_s ** 2) * c.v_dim * c.n_layers
    if c.values == "peer":
        return (0.2 * c.ffn_dim / (denom * c.p_dim)) ** 0.25
    return jnp.sqrt(0.08 * c.ffn_dim / denom)


def _scaled_normal(std):
    return lambda key, shape, dtype: jax.random.normal(key, shape, dtype) * jnp.asarray(std, dtype)


def shared_value_std(c: UltraMemV2Config):
    """Init std of the global tables: 0.02 ("official"), the override, or eq. 26 with sigma_s
    from calibrating a fresh retrieval of this config (seed 0)."""
    if c.value_init_std is not None:
        return c.value_init_std
    if c.init == "official":
        return 0.02
    probe = TuckerRetrieval(c.retrieval_config(), rngs=nnx.Rngs(0))
    return eq26_value_std(c, probe.calibrate())


class SharedValueTables(nnx.Module):
    """The one value (and pre-value) table [L N, Dv] ([L N, Dp]) that layers with sharing !=
    "none" read; ``__call__()`` -> {"values": ..., "pre_values": ...} (arrays)."""

    def __init__(self, config: UltraMemV2Config, *, value_std, rngs: nnx.Rngs):
        c = config
        rows = c.n_layers * c.n_slots
        self.values = param(rngs, _scaled_normal(value_std), (rows, c.v_dim),
                            ("mem_rows", "mem_dim"), weight_decay=c.values_weight_decay,
                            lr_group="memory_values")
        self.pre_values = (param(rngs, _scaled_normal(value_std), (rows, c.p_dim),
                                 ("mem_rows", "mem_pdim"), weight_decay=c.values_weight_decay,
                                 lr_group="memory_values") if c.values == "peer" else None)

    def __call__(self) -> dict:
        out = {"values": self.values[...]}
        if self.pre_values is not None:
            out["pre_values"] = self.pre_values[...]
        return out


class UltraMemV2(nnx.Module):
    """UltraMemV2 layer (see the module docstring)."""

    def __init__(self, config: UltraMemV2Config, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not isinstance(config, UltraMemV2Config):
            raise ValueError(f"UltraMemV2 needs an UltraMemV2Config, got {type(config).__name__}")
        c = config
        self.config, self.dtype = c, dtype
        self.retrieval = TuckerRetrieval(c.retrieval_config(), dtype=dtype, rngs=rngs)
        paper = c.init == "paper"
        sigma_s = self.retrieval.calibrate() if paper else None
        value_std = (eq26_value_std(c, sigma_s) if paper else 0.02) \
            if c.value_init_std is None else c.value_init_std
        pre_std = (0.4 / c.d_model) ** 0.5 if paper else c.d_model ** -0.5
        o_std = c.out_init_std if c.out_init_std is not None else (
            (0.4 / c.d_model) ** 0.5 if paper else c.v_dim ** -0.5)
        if c.values == "peer":
            self.w_pre = param(rngs, normal_init(pre_std), (c.d_model, c.p_dim),
                               ("embed", "mem_pdim"))
        else:
            self.w_pre = None
        self.w_out = param(rngs, normal_init(o_std), (c.v_dim, c.d_model), ("mem_dim", "embed"))
        if c.sharing == "none":
            own = SharedValueTables(dataclasses.replace(c, n_layers=1, layer=0),
                                    value_std=value_std, rngs=rngs)
            self.values, self.pre_values = own.values, own.pre_values
        else:
            self.values = self.pre_values = None

    def retrieve(self, x, layer=None):
        """x [..., T, D] -> (scores [..., H, m, h_c], table rows [..., H, m] int32): rows of the
        layer's own table (sharing "none") or of the global [L N, .] table, for memory layer
        ``layer`` (default ``config.layer``; may be traced, as in the LM's layer scan)."""
        c = self.config
        scores, cells = self.retrieval(x)
        slots = cells
        if c.shuffled:
            perm = jnp.asarray(ive_permutation(c.keys_per_side ** 2, c.shuffle_seed))
            slots = perm[cells] % c.local_slots
        if c.sharing == "none":
            return scores, slots
        layer = c.layer if layer is None else layer
        return scores, global_rows(slots, scheme=c.sharing, layer=layer, n_layers=c.n_layers,
                                   group=c.share_group, rows_per_table=c.n_slots)

    def _tables(self, tables):
        c = self.config
        if c.sharing == "none":
            if tables is not None:
                raise ValueError("UltraMemV2 with sharing='none' owns its tables; do not pass "
                                 "tables=")
            out = {"values": self.values[...]}
            if self.pre_values is not None:
                out["pre_values"] = self.pre_values[...]
            return out
        if tables is None:
            raise ValueError(f"UltraMemV2 with sharing={c.sharing!r} reads the global tables: "
                             "pass tables=SharedValueTables(...)()")
        return tables

    def _sharded_kw(self) -> dict:
        c = self.config
        return dict(scheme=c.table_sharding, axis=c.table_axis,
                    capacity_factor=c.table_capacity_factor, implementation=c.implementation)

    def __call__(self, x, tables: dict | None = None, layer=None):
        """x [..., T, D] -> [..., T, D] (or (y, {"tucker_penalty": ...}) when aux_coef > 0).
        ``tables``: the global tables (sharing != "none"); ``layer``: see ``retrieve``."""
        c, dt = self.config, self.dtype
        tabs = self._tables(tables)
        scores, rows = self.retrieve(x, layer)
        lead = rows.shape[:-2]
        rows = rows.reshape(*lead, -1)                                   # [..., H m]
        weights = scores.reshape(*lead, -1, c.cores)                     # [..., H m, h_c]
        if c.values == "peer":
            pre_in = project(x.astype(dt), self.w_pre[...].astype(dt))  # [..., Dp]
            if c.table_sharding is None:
                coef = row_dot(tabs["pre_values"], rows, pre_in, implementation=c.implementation)
            else:
                coef = sharded_row_dot(tabs["pre_values"], rows, pre_in, **self._sharded_kw())
            if c.pre_act == "gelu":
                coef = jax.nn.gelu(coef)
            weights = weights * coef[..., None]
        if c.table_sharding is None:
            y = embedding_bag(tabs["values"], rows, weights, implementation=c.implementation)
        else:
            y = sharded_embedding_bag(tabs["values"], rows, weights, **self._sharded_kw())
        y = project(y.astype(dt), self.w_out[...].astype(dt))
        if c.aux_coef > 0:
            return y, {"tucker_penalty": self.retrieval.tucker_penalty()}
        return y
