"""UltraMem (arXiv 2411.12364, ICLR 2025) memory layer as a Flax NNX module.

For a token x [D] (in the LM: the normalised FFN input of block k, added after block v):

    scores, g = TuckerRetrieval(x)                 [H, m, h_c] raw per-core scores, grid cells
                                                   g in [0, E N) on a sqrt(E) n x sqrt(E) n grid
    v = pi(g);  p = v // N;  i = v mod N           IVE: fixed random shuffle pi of the virtual
                                                   space; block p < E, physical row i < N = n^2
    Z[p, c] = sum_{heads, j: p_j = p} s_c[j] V[i_j, c-th Dv/h_c slice]     (MCS slices)
    out = vec(Z) W_out                             W_out [E Dv, D] = the E per-block projectors

Scores are used raw (no softmax, UltraMem Table 2 row 2; ``score_fn="softmax"`` restores it). E = 1 has no shuffle and no groups:
it is exactly the layer without expansion. Because pi permutes the whole virtual space, every
physical row appears once in each virtual block.

Init presets (``init``; see ``tdqkr.py`` for the retrieval side):
  * "official" (released code): values ~ N(0, 0.02), W_out ~ N(0, (E Dv)^-1/2), LN gains
    Dk^-0.33.
  * "paper" (§3.8): values ~ N(0, E / (2 m H L)) (variance; H = retrieval heads [I], L =
    ``n_layers``), query LN gain calibrated so the mean selected score is 1.

Parameters (logical axes; optimizer labels): the retrieval's (``tdqkr.py``) plus
    values  [N, Dv]      ("mem_rows", "mem_dim")   lr_group="memory_values" (UltraMem: a 4x
                                                   LR decaying linearly to 1x), weight decay on
                                                   (official code; ``values_weight_decay``)
    w_out   [E Dv, D]    ("mem_dim", "embed")

Shapes: x [..., T, D] -> [..., T, D] in the compute dtype; ``retrieve(x)`` -> (scores
[..., T, H, m, h_c] float32, physical rows [..., T, H, m] int32, blocks [..., T, H, m] int32).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.nn.linear import project
from seedjax.nn.memory.tdqkr import (TDQKRConfig, TuckerRetrieval, isqrt_exact,
                                     ive_permutation, retrieval_config_of)
from seedjax.nn.params import normal_init, param
from seedjax.ops import embedding_bag
from seedjax.ops.sharded_lookup import check_table_sharding, sharded_embedding_bag
from seedjax.validation import check_choice, check_int

SCORE_FNS = ("none", "softmax")
_INT32_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class UltraMemConfig:
    """Validated UltraMem hyper-parameters (defaults: UltraMem's Table 5 choices r = 2, h_c = 2,
    E = 4, two heads sharing one query, raw scores, query/key LN, no query conv, no aux loss).

    Fields: d_model D; n_keys knum (N = knum^2 physical rows); heads H; k_dim Dk; v_dim Dv (None
    -> D // 2, the "half vdim + projection" row); topk m per head; topk_side (None -> min(m,
    keys per side)); rank r; cores h_c; score_fn ("none": raw scores, UltraMem | "softmax": PKM's
    softmax over each head's m selected scores, per core: the "rm softmax" ablation); expand E (1, 4, 9, 16: virtual blocks); query_mode;
    qk_norm; query_conv (taps, 0 = off); init ("official" | "paper"); n_layers (L of the paper
    init); preselect; aux_coef / aux_margin (Tucker penalty alpha, tau; alpha = 0 is off);
    value_init_std / out_init_std (override the preset); values_weight_decay; shuffle_seed;
    ln_gain_power; implementation; table_sharding / table_axis / table_capacity_factor (read
    the value table row-sharded over a mesh axis with ``seedjax.ops.sharded_lookup``; None =
    plain gather; see ``UltraMemV2Config``).
    """

    d_model: int
    n_keys: int = 64
    heads: int = 2
    k_dim: int = 64
    v_dim: int | None = None
    topk: int = 16
    topk_side: int | None = None
    rank: int = 2
    cores: int = 2
    expand: int = 4
    query_mode: str = "shared_pair"
    score_fn: str = "none"
    qk_norm: bool = True
    query_conv: int = 0
    init: str = "official"
    n_layers: int = 1
    preselect: str = "top"
    aux_coef: float = 0.0
    aux_margin: float = 0.15
    value_init_std: float | None = None
    out_init_std: float | None = None
    values_weight_decay: bool = True
    shuffle_seed: int = 0
    ln_gain_power: float = 0.33
    implementation: str = "auto"
    table_sharding: str | None = None
    table_axis: str = "mem"
    table_capacity_factor: float | None = None

    def __post_init__(self):
        owner = "UltraMemConfig"
        check_table_sharding(owner, self.table_sharding, self.table_axis,
                             self.table_capacity_factor)
        for name in ("d_model", "n_keys", "expand", "n_layers", "cores"):
            check_int(f"{owner}.{name}", getattr(self, name))
        check_int(f"{owner}.shuffle_seed", self.shuffle_seed, minimum=0)
        if self.v_dim is None:
            object.__setattr__(self, "v_dim", max(self.d_model // 2, 1))
        check_int(f"{owner}.v_dim", self.v_dim)
        if self.v_dim % self.cores:
            raise ValueError(f"{owner}.v_dim={self.v_dim} is not divisible by cores="
                             f"{self.cores} (Multi-Core Scoring splits each value into cores "
                             "slices)")
        check_choice(f"{owner}.score_fn", self.score_fn, SCORE_FNS)
        isqrt_exact(owner, "expand", self.expand)
        if self.expand * self.n_keys ** 2 > _INT32_MAX:
            raise ValueError(f"{owner}: expand * n_keys**2 = {self.expand * self.n_keys ** 2} "
                             "virtual slots exceed int32 indices")
        self.retrieval_config()          # validates the retrieval fields with this owner

    @property
    def n_slots(self) -> int:
        return self.n_keys ** 2

    @property
    def keys_per_side(self) -> int:
        return isqrt_exact("UltraMemConfig", "expand", self.expand) * self.n_keys

    def retrieval_config(self) -> TDQKRConfig:
        return retrieval_config_of(self, keys_per_side=self.keys_per_side,
                                   keys_rule="sqrt(expand) * n_keys")

    def forward_flops_per_token(self) -> dict[str, int]:
        """Retrieval (``TDQKRConfig``) + value read 2 H m Dv + output projection 2 E Dv D."""
        out = self.retrieval_config().forward_flops_per_token()
        out["mem_values"] = 2 * self.heads * self.topk * self.v_dim
        out["mem_out"] = 2 * self.expand * self.v_dim * self.d_model
        return out


class UltraMem(nnx.Module):
    """UltraMem layer (see the module docstring). ``UltraMem(UltraMemConfig(...), rngs=...)``."""

    def __init__(self, config: UltraMemConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if not isinstance(config, UltraMemConfig):
            raise ValueError(f"UltraMem needs an UltraMemConfig, got {type(config).__name__}")
        c = config
        self.config, self.dtype = c, dtype
        self.retrieval = TuckerRetrieval(c.retrieval_config(), dtype=dtype, rngs=rngs)
        if c.init == "paper":
            self.retrieval.calibrate()
        v_std = c.value_init_std
        if v_std is None:
            v_std = 0.02 if c.init == "official" else float(
                np.sqrt(c.expand / (2 * c.topk * c.heads * c.n_layers)))
        self.values = param(rngs, normal_init(v_std), (c.n_slots, c.v_dim),
                            ("mem_rows", "mem_dim"), weight_decay=c.values_weight_decay,
                            lr_group="memory_values")
        o_std = c.out_init_std if c.out_init_std is not None else (c.expand * c.v_dim) ** -0.5
        self.w_out = param(rngs, normal_init(o_std), (c.expand * c.v_dim, c.d_model),
                           ("mem_dim", "embed"))

    def retrieve(self, x):
        """x [..., T, D] -> (scores [..., H, m, h_c], rows [..., H, m], blocks [..., H, m])."""
        c = self.config
        scores, cells = self.retrieval(x)
        if c.expand == 1:
            return scores, cells, jnp.zeros_like(cells)
        virtual = jnp.asarray(ive_permutation(c.expand * c.n_slots, c.shuffle_seed))[cells]
        return scores, virtual % c.n_slots, virtual // c.n_slots

    def __call__(self, x):
        """x [..., T, D] -> y [..., T, D], or (y, {"tucker_penalty": ...}) if aux_coef > 0."""
        c, dt = self.config, self.dtype
        scores, rows, blocks = self.retrieve(x)
        if c.score_fn == "softmax":
            scores = jax.nn.softmax(scores, axis=-2)                 # over the m selected
        lead = rows.shape[:-2]
        flat = lambda a: a.reshape(*lead, -1, *a.shape[len(lead) + 2:])
        bag = embedding_bag if c.table_sharding is None else functools.partial(
            sharded_embedding_bag, scheme=c.table_sharding, axis=c.table_axis,
            capacity_factor=c.table_capacity_factor)
        if c.expand == 1:
            y = bag(self.values[...], flat(rows), flat(scores), implementation=c.implementation)
        else:
            y = bag(self.values[...], flat(rows), flat(scores), groups=flat(blocks),
                    n_groups=c.expand, implementation=c.implementation)
            y = y.reshape(*lead, c.expand * c.v_dim)
        y = project(y.astype(dt), self.w_out[...].astype(dt))
        if c.aux_coef > 0:
            return y, {"tucker_penalty": self.retrieval.tucker_penalty()}
        return y
