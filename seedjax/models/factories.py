"""Default factories of the decoder LM: token embedding, RMSNorm/LayerNorm, causal attention,
SwiGLU, plain residual, tied/untied heads. Later architectures register more in their own files.
Norm kwargs (``model.norm_kwargs``): "rmsnorm" ``scale_init`` (1.0); "layernorm" ``use_bias``
(True).
"""
from __future__ import annotations

from flax import nnx

from seedjax.models.config import LMConfig
from seedjax.models.registry import lookup, register
from seedjax.nn.attention import CAUSAL_CHUNK, CausalSelfAttention
from seedjax.nn.connections import Residual
from seedjax.nn.embeddings import OutputHead, TokenEmbedding
from seedjax.nn.mlp import SwiGLU
from seedjax.nn.norms import LayerNorm, RMSNorm


def branch_out_init_std(cfg: LMConfig) -> float:
    """Init std of residual-branch output projections: ``cfg.out_init_std`` times the connection
    family's optional ``out_init_scale(cfg)`` (e.g. HC's output-projection rescale option)."""
    scale = getattr(lookup("connection", cfg.connection), "out_init_scale", None)
    return cfg.out_init_std * (scale(cfg) if scale is not None else 1.0)


@register("embed", "token")
def token_embedding(cfg: LMConfig, *, rngs: nnx.Rngs, init_std: float | None = None):
    return TokenEmbedding(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype,
                          init_std=cfg.init_std if init_std is None else init_std, rngs=rngs)


@register("norm", "rmsnorm")
def rmsnorm(cfg: LMConfig, dim: int, *, rngs: nnx.Rngs, scale_init: float = 1.0):
    return RMSNorm(dim, eps=cfg.norm_eps, scale_init=scale_init, rngs=rngs)


@register("norm", "layernorm")
def layernorm(cfg: LMConfig, dim: int, *, rngs: nnx.Rngs, use_bias: bool = True):
    return LayerNorm(dim, eps=cfg.norm_eps, use_bias=use_bias, rngs=rngs)


@register("mixer", "attention")
def attention(cfg: LMConfig, layer_idx: int, *, rngs: nnx.Rngs,
              causal_chunk: int = CAUSAL_CHUNK):
    """``model.mixer_kwargs``: ``causal_chunk`` (query block of the block-skipping causal
    attention in training; smaller wastes fewer masked scores but traces more blocks; the
    `small` config uses 128 at T = 512: its attention core 163 -> 133 ms per layer on CPU,
    the whole step ~1%, results/bench/README.md)."""
    return CausalSelfAttention(
        cfg.d_model, cfg.n_heads, kv_heads=cfg.kv_heads, head_dim=cfg.resolved_head_dim,
        rope_theta=cfg.rope_theta, qk_norm=cfg.qk_norm, init_std=cfg.init_std,
        out_init_std=branch_out_init_std(cfg), causal_chunk=causal_chunk,
        dtype=cfg.compute_dtype, rngs=rngs)


@register("ffn", "swiglu")
def swiglu(cfg: LMConfig, layer_idx: int, *, rngs: nnx.Rngs, mlp_dim: int | None = None):
    return SwiGLU(cfg.d_model, cfg.mlp_dim if mlp_dim is None else mlp_dim,
                  init_std=cfg.init_std, out_init_std=branch_out_init_std(cfg),
                  dtype=cfg.compute_dtype, rngs=rngs)


class _ResidualFamily:
    """Plain pre-norm residual (stream = hidden state)."""

    @staticmethod
    def make(cfg: LMConfig, sublayer_idx: int, *, rngs: nnx.Rngs):
        return Residual()

    expand = staticmethod(lambda x, cfg: x)
    reduce = staticmethod(lambda h, cfg: h)


register("connection", "residual")(_ResidualFamily)


class TiedHead(nnx.Module):
    """Output logits from the input embedding table (``embed.attend``); no parameters."""

    def __call__(self, x, embed):
        return embed.attend(x)


class UntiedHead(nnx.Module):
    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, init_std: float | None = None):
        self.proj = OutputHead(cfg.d_model, cfg.vocab_size, dtype=cfg.compute_dtype,
                               init_std=cfg.init_std if init_std is None else init_std, rngs=rngs)

    def __call__(self, x, embed):
        return self.proj(x)


@register("head", "tied")
def tied_head(cfg: LMConfig, *, rngs: nnx.Rngs):
    return TiedHead()


@register("head", "untied")
def untied_head(cfg: LMConfig, *, rngs: nnx.Rngs, init_std: float | None = None):
    return UntiedHead(cfg, rngs=rngs, init_std=init_std)
