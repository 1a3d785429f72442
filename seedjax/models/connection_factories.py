"""Registry entries for Hyper-/Frac-/manifold Hyper-Connections and for SeeDNorm / DyT.

Select with ``model.connection`` + ``model.connection_kwargs`` and ``model.norm`` +
``model.norm_kwargs`` (see ``seedjax.nn.connections`` and ``seedjax.nn.norms`` for the math).

Connections (one module per sublayer; the LM expands once after the embedding and reduces once
before the final norm). ``connection="residual"`` is the plain pre-norm baseline; ``"hyper"``
with ``rate=1, dynamic=False`` is exactly equal to it.

``"hyper"`` (HC; state [B, T, n, d]):
  * ``rate`` (int, 4): expansion rate n.
  * ``dynamic`` (bool, True): DHC (static + token-dependent coefficients) vs SHC.
  * ``use_tanh`` (bool, True): tanh on the dynamic coefficients (False = the "W/O tanh" rows).
  * ``coeff_norm`` ("layernorm" | "rmsnorm" | "none", "layernorm"): norm feeding the predictors.
  * ``scale_init`` (float, 0.01): init of the scalar scales s_alpha, s_beta.
  * ``reduce`` ("sum" | "mean", "sum"): stream reduction before the final norm. A fresh HC LM
    equals the pre-norm LM exactly with "mean" (or norm_eps = 0); with "sum" the final norm
    sees n * h, so they differ by the norm's eps (relative ~ eps / mean(h^2)).
  * ``out_proj_init_scale`` (float | "sqrt_n" | "inv_sqrt_n", 1.0): HC paper section 4 rescales
    the init std of the output projections (attention ``wo``, FFN ``w_down``); the paper does
    not say whether sqrt(n) multiplies or divides, and any value != 1 breaks the exact pre-norm
    equivalence at init. Applied through the family's ``out_init_scale(cfg)``, which the
    attention and FFN factories multiply into their output-projection init std.
  * ``recompute`` (bool, True): recompute the stream reads in the backward pass instead of
    storing their [B, T, n, d] intermediates (same results; ``seedjax.nn.connections``).
``"frac"`` (FC; state [B, T, m, d/m]):
  * ``rate`` (int, 4): frac rate m (must divide ``d_model``); ``dynamic``, ``use_tanh``,
    ``coeff_norm``, ``scale_init`` as for "hyper"; ``recompute`` (bool, False: FC's state is
    only d wide, and recomputing its reads costs memory on TPU rather than saving it).
``"mhc"`` (mHC; state [B, T, n, d]):
  * ``rate`` (int, 4); ``dynamic`` (bool, True); ``sinkhorn_iters`` (int, 20);
    ``scale_init`` (float, 0.01: a_pre, a_post, a_res); ``res_logit_init`` (float, 2.0:
    b_res = value * I); ``pre_init`` ("onehot" | "uniform", "onehot"); ``reduce`` ("sum");
    ``out_proj_init_scale``, ``recompute`` as for "hyper".

Norms (``model.norm_kwargs``; eps is ``model.norm_eps``):
  * ``"seednorm"``: ``num_heads`` (1), ``activation`` ("tanh" | "sigmoid" | "hardtanh"),
    ``alpha_init`` (1.0), ``zero_centered_gamma`` (False), ``dot_scale`` ("none" | "sqrt_dim" |
    "dim", "none"), ``scalar_alpha`` (False).
  * ``"dyt"``: ``alpha_init`` (0.5).

Example: ``LMConfig(connection="hyper", connection_kwargs={"rate": 4, "dynamic": True,
"use_tanh": True}, norm="seednorm", norm_kwargs={"num_heads": 4})``.
"""
from __future__ import annotations

import math
from typing import Any

from flax import nnx

from seedjax.models.config import LMConfig
from seedjax.models.registry import register
from seedjax.validation import check_choice
from seedjax.nn.connections import (REDUCTIONS, FracConnection, HyperConnection,
                                    ManifoldHyperConnection, expand_streams,
                                    merge_fracs, reduce_streams, split_fracs)
from seedjax.nn.norms import DyT, SeeDNorm

DEFAULT_RATE = 4
OUT_PROJ_SCALES = ("sqrt_n", "inv_sqrt_n")


def _kw(cfg: LMConfig) -> dict:
    return dict(cfg.connection_kwargs)


def resolve_out_proj_init_scale(value: Any, n: int) -> float:
    """1.0, a positive float, "sqrt_n" or "inv_sqrt_n" -> the multiplier of the init std."""
    if value in OUT_PROJ_SCALES:
        return math.sqrt(n) if value == "sqrt_n" else 1.0 / math.sqrt(n)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"connection_kwargs.out_proj_init_scale={value!r} must be a positive "
                         f"number or one of {OUT_PROJ_SCALES}")
    return float(value)


def _out_init_scale(cfg: LMConfig) -> float:
    """Multiplier of the branch output projections' init std (read by the attention and FFN
    factories through the family's ``out_init_scale``)."""
    kw = _kw(cfg)
    return resolve_out_proj_init_scale(kw.get("out_proj_init_scale", 1.0),
                                       int(kw.get("rate", DEFAULT_RATE)))


class HyperFamily:
    """``connection="hyper"``: Hyper-Connections (static or dynamic)."""

    @staticmethod
    def make(cfg: LMConfig, sublayer_idx: int, *, rngs: nnx.Rngs, rate: int = DEFAULT_RATE,
             dynamic: bool = True, use_tanh: bool = True, coeff_norm: str = "layernorm",
             scale_init: float = 0.01, rescale: bool = True, reduce: str = "sum",
             out_proj_init_scale=1.0, recompute: bool = True):
        check_choice("hyper connection reduce", reduce, REDUCTIONS)
        resolve_out_proj_init_scale(out_proj_init_scale, rate)
        return HyperConnection(cfg.d_model, rate, sublayer_idx=sublayer_idx, dynamic=dynamic,
                               use_tanh=use_tanh, coeff_norm=coeff_norm, scale_init=scale_init,
                               rescale=rescale, eps=cfg.norm_eps, recompute=recompute,
                               rngs=rngs)

    out_init_scale = staticmethod(_out_init_scale)

    @staticmethod
    def expand(x, cfg: LMConfig):
        return expand_streams(x, _kw(cfg).get("rate", DEFAULT_RATE))

    @staticmethod
    def reduce(H, cfg: LMConfig):
        return reduce_streams(H, _kw(cfg).get("reduce", "sum"))


class FracFamily:
    """``connection="frac"``: Frac-Connections (static or dynamic)."""

    @staticmethod
    def make(cfg: LMConfig, sublayer_idx: int, *, rngs: nnx.Rngs, rate: int = DEFAULT_RATE,
             dynamic: bool = True, use_tanh: bool = True, coeff_norm: str = "layernorm",
             scale_init: float = 0.01, rescale: bool = True, recompute: bool = False):
        return FracConnection(cfg.d_model, rate, sublayer_idx=sublayer_idx, dynamic=dynamic,
                              use_tanh=use_tanh, coeff_norm=coeff_norm, scale_init=scale_init,
                              rescale=rescale, eps=cfg.norm_eps, recompute=recompute,
                              rngs=rngs)

    @staticmethod
    def expand(x, cfg: LMConfig):
        return split_fracs(x, _kw(cfg).get("rate", DEFAULT_RATE))

    @staticmethod
    def reduce(H, cfg: LMConfig):
        return merge_fracs(H)


class ManifoldFamily:
    """``connection="mhc"``: manifold-constrained Hyper-Connections (Sinkhorn mixing)."""

    @staticmethod
    def make(cfg: LMConfig, sublayer_idx: int, *, rngs: nnx.Rngs, rate: int = DEFAULT_RATE,
             dynamic: bool = True, sinkhorn_iters: int = 20, scale_init: float = 0.01,
             res_logit_init: float = 2.0, pre_init: str = "onehot", reduce: str = "sum",
             out_proj_init_scale=1.0, recompute: bool = True):
        check_choice("mhc connection reduce", reduce, REDUCTIONS)
        resolve_out_proj_init_scale(out_proj_init_scale, rate)
        return ManifoldHyperConnection(
            cfg.d_model, rate, sublayer_idx=sublayer_idx, dynamic=dynamic,
            sinkhorn_iters=sinkhorn_iters, scale_init=scale_init, res_logit_init=res_logit_init,
            pre_init=pre_init, eps=cfg.norm_eps, recompute=recompute, rngs=rngs)

    expand = staticmethod(HyperFamily.expand)
    reduce = staticmethod(HyperFamily.reduce)
    out_init_scale = staticmethod(_out_init_scale)


register("connection", "hyper")(HyperFamily)
register("connection", "frac")(FracFamily)
register("connection", "mhc")(ManifoldFamily)


@register("norm", "seednorm")
def seednorm(cfg: LMConfig, dim: int, *, rngs: nnx.Rngs, num_heads: int = 1,
             activation: str = "tanh", alpha_init: float = 1.0,
             zero_centered_gamma: bool = False, dot_scale: str = "none",
             scalar_alpha: bool = False, beta_init: float = 0.0, decay_alpha_beta: bool = True):
    return SeeDNorm(dim, num_heads=num_heads, activation=activation, alpha_init=alpha_init,
                    zero_centered_gamma=zero_centered_gamma, eps=cfg.norm_eps,
                    dot_scale=dot_scale, scalar_alpha=scalar_alpha, beta_init=beta_init,
                    decay_alpha_beta=decay_alpha_beta, rngs=rngs)


@register("norm", "dyt")
def dyt(cfg: LMConfig, dim: int, *, rngs: nnx.Rngs, alpha_init: float = 0.5):
    return DyT(dim, alpha_init=alpha_init, rngs=rngs)
