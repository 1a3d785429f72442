"""Tucker-decomposed query-key retrieval (TDQKR) with Multi-Core Scoring: the retrieval half
shared by UltraMem (arXiv 2411.12364) and UltraMemV2 (arXiv 2508.18756), as a Flax NNX module.

For a token x [D] and each head h (queries per ``query_mode``; ρ < r Tucker ranks):

    x'          = CausalDepthwiseConv(x)                       optional (``query_conv`` taps)
    q_side[ρ]   = LN_q( (x' W_q)[side, ρ] )                    side in {row, col}, [Dk] each
    K_side      = LN_k( K[h, side] )                           [n, r, Dk], normalised per vector
    scores, idx = tucker_topk(q_row, q_col, K_row, K_col, C)   seedjax.ops (rank-1 filter +
                                                               exact rescoring, per-core scores)
    C           = cores [h_c, H, r, r] (MCS: h_c cores, selection by their sum)

``query_mode``: "shared_pair" (UltraMem code: one row and one column query shared by all ranks
and by each pair of heads, i.e. ceil(H/2) query pairs), "per_head" (one pair per head shared by
its ranks), "per_rank" (UltraMemV2 paper: one pair per head and rank).

Tucker-core penalty (UltraMem eqs. 11-12, V2 eqs. 16-17; off by default as in V2 and in both
released codes): ``alpha/(r-1) * sum_{i>=2} relu(lambda_i - tau)^2`` on the singular values of
the summed core, averaged over heads.

Init presets (``init``):
  * "official": the released code's constants: W_q, keys ~ N(0, Dk^-1/2), cores ~ U(0, 1),
    query and key LN gains ``Dk**-ln_gain_power`` (power 0.33 in UltraMem, 0.4 in V2).
  * "paper": keys and W_q as above, key LN gain Dk^-1/2, and the query LN gain calibrated by
    Monte Carlo so that the mean selected (summed) score on N(0, 1) inputs is 1 (UltraMem §3.8,
    V2 §3.5 / App. A.2); ``calibrate()`` also returns the selected scores' std sigma_s that V2's
    eq. 26 needs. Scores are bilinear in the query gain, so one rescale hits the target.

Parameters (logical axes; optimizer labels):
    w_query          [D, Q*2*R'*Dk]         ("embed", "mem_query")   Q query groups, R' = r or 1
    query_scale/bias [Dk]                   (None,)                  weight_decay=False
    keys             [H, 2, n, r, Dk]       ("mem_heads", None, "mem_keys", None, "mem_kdim")
    key_scale/bias   [Dk]                   (None,)                  weight_decay=False
    cores            [h_c, H, r, r]         (None, "mem_heads", None, None)
    conv             [taps, D]              (None, "embed")          weight_decay=False (if on)

Shapes: ``__call__(x [..., T, D])`` -> (scores [..., T, H, m, h_c] float32, grid indices
[..., T, H, m] int32 in [0, n^2)). The conv runs along axis -2 (time) and needs full sequences.

Decoding (inference only): ``prepare_decode()`` does the retrieval's weight-only work once and
stores it as ``DecodeConstant`` variables: the key LayerNorm, the row and column keys as two
rank-major [H, r, n, Dk] arrays that the score product reads without a relayout copy, and the
cores' rank-1 vectors (an SVD). Calls then skip that work (same outputs); no gradient reaches keys or
cores' pre-selection through the stored copies, and they do not follow later parameter
updates, so call it after the weights are final and ``release_decode()`` before training. The
module-level ``prepare_decode(model)`` / ``release_decode(model)`` do every retrieval of a
model; ``seedjax.eval.sampling.generate`` prepares them before its decode loop. On CPU this
took one-call decode at B = 1 from 2.14x / 3.11x to 1.18x / 1.02x the dense FFN (UltraMemV2 /
UltraMem at d = 1024; ``results/bench/README.md``).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.nn.linear import project
from seedjax.nn.params import constant_init, normal_init, param
from seedjax.ops import IMPLEMENTATIONS, tucker_rank1, tucker_topk
from seedjax.ops.tucker_keys import PRESELECT
from seedjax.validation import check_choice, check_int

QUERY_MODES = ("shared_pair", "per_head", "per_rank")
INITS = ("official", "paper")


class DecodeConstant(nnx.Variable):
    """A value derived from the weights alone, stored for decoding (``prepare_decode``); not a
    parameter: optimizers and checkpoints of the parameters leave it out."""


def uniform01_init(key, shape, dtype):
    return jax.random.uniform(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class TDQKRConfig:
    """Validated TDQKR hyper-parameters.

    Fields: d_model D; n_keys n (keys per side, including any IVE key expansion); heads H;
    k_dim Dk; topk m (cells selected per head); topk_side k_s (rows/columns kept by the rank-1
    filter; None -> min(m, n)); rank r (2); cores h_c (MCS, 2); query_mode (see module doc);
    qk_norm (LayerNorm on queries and keys, True); query_conv (causal depthwise conv taps on the
    query input, 0 = off); init ("official" | "paper"); ln_gain_power (official LN gain
    Dk**-power); preselect ("top" = papers' filter | "abs"); aux_coef alpha (0 = off) and
    aux_margin tau (0.15); norm_eps; implementation (``seedjax.ops``; "auto" = Pallas on TPU,
    XLA elsewhere).
    """

    d_model: int
    n_keys: int
    heads: int = 2
    k_dim: int = 64
    topk: int = 16
    topk_side: int | None = None
    rank: int = 2
    cores: int = 2
    query_mode: str = "shared_pair"
    qk_norm: bool = True
    query_conv: int = 0
    init: str = "official"
    ln_gain_power: float = 0.33
    preselect: str = "top"
    aux_coef: float = 0.0
    aux_margin: float = 0.15
    norm_eps: float = 1e-5
    implementation: str = "auto"

    def __post_init__(self):
        owner = type(self).__name__
        for name in ("d_model", "n_keys", "heads", "k_dim", "topk", "rank", "cores"):
            check_int(f"{owner}.{name}", getattr(self, name))
        check_int(f"{owner}.query_conv", self.query_conv, minimum=0)
        if self.topk_side is None:
            object.__setattr__(self, "topk_side", min(self.topk, self.n_keys))
        check_int(f"{owner}.topk_side", self.topk_side)
        if self.topk_side > self.n_keys:
            raise ValueError(f"{owner}.topk_side={self.topk_side} must be <= the keys per side "
                             f"n_keys={self.n_keys}")
        if self.topk > self.topk_side ** 2:
            raise ValueError(f"{owner}.topk={self.topk} is larger than the candidate count "
                             f"topk_side**2={self.topk_side ** 2}")
        check_choice(f"{owner}.query_mode", self.query_mode, QUERY_MODES)
        check_choice(f"{owner}.init", self.init, INITS)
        check_choice(f"{owner}.preselect", self.preselect, PRESELECT)
        check_choice(f"{owner}.implementation", self.implementation, IMPLEMENTATIONS)
        for name in ("aux_coef", "aux_margin"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ValueError(f"{owner}.{name}={getattr(self, name)!r} must be a number >= 0")

    @property
    def query_groups(self) -> int:
        return -(-self.heads // 2) if self.query_mode == "shared_pair" else self.heads

    @property
    def query_ranks(self) -> int:
        return self.rank if self.query_mode == "per_rank" else 1

    @property
    def query_width(self) -> int:
        return self.query_groups * 2 * self.query_ranks * self.k_dim

    def forward_flops_per_token(self) -> dict[str, int]:
        """Query projection 2 D Q 2 R' Dk; key scores 2 H 2 n r Dk (both sides); grid rescoring
        2 H k_s^2 r (r + 1) h_c (per core: S_row C then . S_col). Top-k and norms not counted."""
        return {"mem_query": 2 * self.d_model * self.query_width,
                "mem_keys": 2 * self.heads * 2 * self.n_keys * self.rank * self.k_dim,
                "mem_grid": 2 * self.heads * self.topk_side ** 2 * self.rank * (self.rank + 1)
                * self.cores}


def retrieval_config_of(layer_config, *, keys_per_side: int, keys_rule: str) -> TDQKRConfig:
    """The ``TDQKRConfig`` of an UltraMem / UltraMemV2 config (same field names); errors are
    re-labelled with the layer config's name and ``keys_rule`` (how keys per side is derived)."""
    owner = type(layer_config).__name__
    fields = {f.name: getattr(layer_config, f.name) for f in dataclasses.fields(TDQKRConfig)
              if f.name not in ("n_keys", "norm_eps") and hasattr(layer_config, f.name)}
    try:
        return TDQKRConfig(n_keys=keys_per_side, **fields)
    except ValueError as e:
        raise ValueError(str(e).replace("keys per side n_keys", f"keys per side {keys_rule}")
                         .replace("TDQKRConfig", owner)) from None


def _layernorm(x, scale, bias, eps):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def causal_depthwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [..., T, D], kernel [taps, D] -> [..., T, D]; out[t] = sum_j kernel[j] x[t - taps+1+j]
    (zero before the start), so the last tap weighs the current token."""
    taps = kernel.shape[0]
    pad = [(0, 0)] * (x.ndim - 2) + [(taps - 1, 0), (0, 0)]
    xp = jnp.pad(x, pad)
    T = x.shape[-2]
    return sum(xp[..., j:j + T, :] * kernel[j] for j in range(taps))


class TuckerRetrieval(nnx.Module):
    """TDQKR + MCS retrieval (see the module docstring)."""

    def __init__(self, config: TDQKRConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        c = config
        self.config, self.dtype = c, dtype
        dk = c.k_dim
        official = c.init == "official"
        self.w_query = param(rngs, normal_init(dk ** -0.5), (c.d_model, c.query_width),
                             ("embed", "mem_query"))
        self.keys = param(rngs, normal_init(dk ** -0.5), (c.heads, 2, c.n_keys, c.rank, dk),
                          ("mem_heads", None, "mem_keys", None, "mem_kdim"))
        self.cores = param(rngs, uniform01_init, (c.cores, c.heads, c.rank, c.rank),
                           (None, "mem_heads", None, None))
        if c.qk_norm:
            q_gain = dk ** -c.ln_gain_power
            k_gain = dk ** -c.ln_gain_power if official else dk ** -0.5
            self.query_scale = param(None, constant_init(q_gain), (dk,), (None,),
                                     weight_decay=False)
            self.query_bias = param(None, constant_init(0.0), (dk,), (None,), weight_decay=False)
            self.key_scale = param(None, constant_init(k_gain), (dk,), (None,),
                                   weight_decay=False)
            self.key_bias = param(None, constant_init(0.0), (dk,), (None,), weight_decay=False)
        else:
            self.query_scale = self.query_bias = self.key_scale = self.key_bias = None
        if c.query_conv:
            identity = lambda key, shape, dt: jnp.zeros(shape, dt).at[-1].set(1.0)
            self.conv = param(None, identity, (c.query_conv, c.d_model), (None, "embed"),
                              weight_decay=False)
        else:
            self.conv = None
        self.decode_row_keys = self.decode_col_keys = self.decode_rank1 = nnx.data(None)

    def prepare_decode(self) -> None:
        """Stores the normalised row and column keys rank-major, [H, r, n, Dk] each (two
        arrays: an XLA slice of one would be a copy), and the rank-1
        vectors (u, t) [H, r] as ``DecodeConstant``s, used by every later call (inference only;
        see the module docstring)."""
        keys = jax.lax.stop_gradient(jnp.swapaxes(self.normalized_keys(), 2, 3))
        self.decode_row_keys = nnx.data(DecodeConstant(keys[:, 0]))         # [H, r, n, Dk]
        self.decode_col_keys = nnx.data(DecodeConstant(keys[:, 1]))         # columns
        self.decode_rank1 = nnx.data(DecodeConstant(jnp.stack(tucker_rank1(self.cores[...]))))

    def release_decode(self) -> None:
        """Drops the decode constants: calls read the parameters again (training path)."""
        self.decode_row_keys = self.decode_col_keys = self.decode_rank1 = nnx.data(None)

    def queries(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [..., T, D] -> (q_row, q_col) [..., T, H, r, Dk] in float32 (or wider)."""
        c, dt = self.config, self.dtype
        if x.shape[-1] != c.d_model:
            raise ValueError(f"TuckerRetrieval input last dim {x.shape[-1]} != d_model="
                             f"{c.d_model}")
        if self.conv is not None:
            x = causal_depthwise_conv(x, self.conv[...].astype(x.dtype))
        q = project(x.astype(dt), self.w_query[...].astype(dt))
        q = q.astype(jnp.promote_types(q.dtype, jnp.float32))
        q = q.reshape(*q.shape[:-1], c.query_groups, 2, c.query_ranks, c.k_dim)
        if self.query_scale is not None:
            q = _layernorm(q, self.query_scale[...], self.query_bias[...], c.norm_eps)
        if c.query_mode == "shared_pair":
            q = jnp.repeat(q, 2, axis=-4)[..., :c.heads, :, :, :]
        q = jnp.broadcast_to(q, (*q.shape[:-4], c.heads, 2, c.rank, c.k_dim))
        return q[..., 0, :, :], q[..., 1, :, :]

    def normalized_keys(self) -> jax.Array:
        """[H, 2, n, r, Dk] keys after the key LayerNorm (float32 or wider)."""
        k = self.keys[...]
        k = k.astype(jnp.promote_types(k.dtype, jnp.float32))
        if self.key_scale is not None:
            k = _layernorm(k, self.key_scale[...], self.key_bias[...], self.config.norm_eps)
        return k

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [..., T, D] -> (scores [..., T, H, m, h_c], grid indices [..., T, H, m])."""
        c = self.config
        q_row, q_col = self.queries(x)
        kw = dict(topk_side=c.topk_side, topk=c.topk, preselect=c.preselect,
                  implementation=c.implementation)
        if self.decode_row_keys is not None:
            u, t = self.decode_rank1[...]
            return tucker_topk(q_row, q_col, self.decode_row_keys[...], self.decode_col_keys[...],
                               self.cores[...], rank1=(u, t), keys_layout="hrnd", **kw)
        k = self.normalized_keys()
        return tucker_topk(q_row, q_col, k[:, 0], k[:, 1], self.cores[...], **kw)

    def singular_values(self) -> jax.Array:
        """Singular values [H, r] of each head's summed core (descending)."""
        return jnp.linalg.svd(jnp.sum(self.cores[...], axis=0), compute_uv=False)

    def tucker_penalty(self) -> jax.Array:
        """alpha/(r-1) sum_{i>=2} relu(lambda_i - tau)^2, mean over heads (0 when r = 1)."""
        c = self.config
        if c.rank < 2:
            return jnp.zeros((), jnp.float32)
        lam = self.singular_values()[:, 1:]
        return c.aux_coef / (c.rank - 1) * jnp.mean(
            jnp.sum(jnp.square(jax.nn.relu(lam - c.aux_margin)), axis=-1))

    def calibrate(self, n_tokens: int = 256, seed: int = 0) -> jax.Array:
        """"paper" init: rescales the query LN gain so the mean selected summed score on
        N(0, 1) inputs is 1; returns the selected scores' std sigma_s after the rescale.
        Works under tracing (abstract init): no Python control flow on values."""
        if self.query_scale is None:
            raise ValueError("TDQKRConfig.init='paper' needs qk_norm=True (the calibration sets "
                             "the query LayerNorm gain)")
        x = jax.random.normal(jax.random.PRNGKey(seed), (n_tokens, self.config.d_model))
        mean, _ = _selected_score_stats(self, x)
        # scores are bilinear in the shared row/column query gain: gain * mean^-1/2 -> mean 1
        factor = jax.lax.rsqrt(jnp.maximum(mean, 1e-6))
        self.query_scale[...] = self.query_scale[...] * factor.astype(self.query_scale.dtype)
        return _selected_score_stats(self, x)[1]


def _retrievals(model: nnx.Module):
    return [m for _, m in nnx.iter_graph(model) if isinstance(m, TuckerRetrieval)]


def prepare_decode(model: nnx.Module) -> int:
    """``TuckerRetrieval.prepare_decode`` on every retrieval of ``model`` that is not prepared
    yet (inference only). Returns how many were prepared. Retrievals inside a scanned layer
    stack (``LMConfig.scan_layers``) are stacked state, not modules, and keep the parameter
    path."""
    todo = [r for r in _retrievals(model) if r.decode_row_keys is None]
    for r in todo:
        r.prepare_decode()
    return len(todo)


def release_decode(model: nnx.Module) -> None:
    """``TuckerRetrieval.release_decode`` on every retrieval of ``model``."""
    for r in _retrievals(model):
        r.release_decode()


@nnx.jit
def _selected_score_stats(retrieval: TuckerRetrieval, x):
    """(mean, std) of the selected summed scores; one compiled call instead of eager ops."""
    total = jnp.sum(retrieval(x)[0], axis=-1)
    return jnp.mean(total), jnp.std(total)


def ive_permutation(size: int, seed: int):
    """The fixed random permutation of the virtual slot space [0, size) (IVE's shuffle), as a
    NumPy int32 array (a compile-time constant; cached per (size, seed))."""
    return _permutation(int(size), int(seed))


@functools.lru_cache(maxsize=32)
def _permutation(size, seed):
    perm = np.random.default_rng(seed).permutation(size).astype(np.int32)
    perm.setflags(write=False)
    return perm


def isqrt_exact(owner: str, field: str, value: int) -> int:
    """sqrt(value) for a perfect square, else a ValueError naming the field."""
    root = math.isqrt(value)
    if root * root != value:
        raise ValueError(f"{owner}.{field}={value} must be a perfect square (1, 4, 9, 16, ...): "
                         "the key grid grows by its square root per side")
    return root
