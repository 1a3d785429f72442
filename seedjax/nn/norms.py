"""Normalisation layers: RMSNorm, LayerNorm, SeeDNorm (self-rescaled dynamic norm) and DyT.

All norms compute in float32 and return the input dtype. Gains carry ``weight_decay=False``
(SeeDNorm's alpha and beta are decayed, as in its paper).
Shapes: x [..., dim] -> [..., dim].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.params import constant_init, param


class RMSNorm(nnx.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale (scale init ``scale_init``, 1 by default)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, use_scale: bool = True,
                 scale_init: float = 1.0, axis_name: str = "norm",
                 rngs: nnx.Rngs | None = None):
        if dim < 1:
            raise ValueError(f"RMSNorm dim must be >= 1, got {dim}")
        self.dim, self.eps = dim, eps
        self.scale = (param(None, constant_init(scale_init), (dim,), (axis_name,),
                            weight_decay=False) if use_scale else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        if self.scale is not None:
            y = y * self.scale[...]
        return y.astype(x.dtype)


class LayerNorm(nnx.Module):
    """y = (x - mean) / sqrt(var + eps) * scale + bias."""

    def __init__(self, dim: int, *, eps: float = 1e-6, use_bias: bool = True,
                 axis_name: str = "norm", rngs: nnx.Rngs | None = None):
        if dim < 1:
            raise ValueError(f"LayerNorm dim must be >= 1, got {dim}")
        self.dim, self.eps = dim, eps
        self.scale = param(None, constant_init(1.0), (dim,), (axis_name,), weight_decay=False)
        self.bias = (param(None, constant_init(0.0), (dim,), (axis_name,), weight_decay=False)
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y.astype(x.dtype)


SEEDNORM_ACTIVATIONS = ("tanh", "sigmoid", "hardtanh", "gelu", "swish")
SEEDNORM_DOT_SCALES = ("none", "sqrt_dim", "dim")


def _seednorm_activation(name: str):
    if name == "tanh":
        return jnp.tanh
    if name == "sigmoid":
        return jax.nn.sigmoid
    if name == "gelu":  # unbounded: the paper reports that GELU and Swish diverge
        return lambda s: jax.nn.gelu(s, approximate=False)
    if name == "swish":
        return jax.nn.silu
    return lambda s: jnp.clip(s, -1.0, 1.0)  # hardtanh


class SeeDNorm(nnx.Module):
    """SeeDNorm (Self-Rescaled Dynamic Normalization, arXiv 2510.22777):

        s_j(x) = x_(j) . beta_(j)                               one scalar per token and head j
        y      = [gamma + alpha * act(s_j(x))] * x / RMS(x),    RMS(x) = sqrt(mean(x^2) + eps)

    Shapes: x [..., dim] -> [..., dim]; gamma, alpha, beta [dim]. With ``num_heads = h`` the last
    axis is split into h contiguous heads of dim/h channels: each head's scalar ``act(s_j)`` only
    multiplies alpha over that head's channels. The RMS is always over the full ``dim`` (only the
    dot product is per head; [I] from the two public implementations, the paper text is not
    available). ``s`` uses the un-normalised x, so the input norm survives normalisation.
    ``dot_scale`` divides s by 1 ("none", the LM form and default), sqrt(dim/h) or dim/h ([I]: the
    paper's vision models divide alpha.beta by the dimension, exact form unknown). With Adam a
    divided dot slows the per-step change of s by that factor, keeping tanh off saturation longer.

    ``scalar_alpha`` learns one alpha for all channels (an ablation of the paper's table);
    ``num_heads = dim`` is its element-wise ``x * beta`` ablation (one tanh per channel).

    Init: gamma = 1, alpha = ``alpha_init`` (1 for LMs), beta = 0, so with ``activation="tanh"``
    (or hardtanh) SeeDNorm equals RMSNorm with unit gain at init (sigmoid(0) = 0.5 gives a gain of
    1 + 0.5 * alpha instead). ``zero_centered_gamma`` stores gamma - 1 (init 0).
    Weight decay: alpha and beta are decayed (as in the paper; ``decay_alpha_beta=False`` for the
    paper's weight-decay ablation); gamma is not. ``beta_init`` (default 0) sets beta's constant
    init. For the paper's "without alpha / beta / gamma" ablations each parameter has its own
    optimizer group (``seednorm_alpha``, ``seednorm_beta``, ``seednorm_gamma``), so
    ``train.lr_multipliers={"seednorm_alpha": 0}`` holds it at its init; "without beta" then
    needs a non-zero ``beta_init`` ([I]: a fixed direction, e.g. 1/sqrt(dim/h)), since beta
    held at 0 is RMSNorm. ``activation`` also offers the unbounded "gelu" and "swish" of the
    paper's activation ablation. Computed in float32; returns the input dtype. Not implemented:
    dropout on the dynamic term (vision), AdaSeeDNorm.
    """

    def __init__(self, dim: int, *, num_heads: int = 1, activation: str = "tanh",
                 alpha_init: float = 1.0, zero_centered_gamma: bool = False, eps: float = 1e-6,
                 dot_scale: str = "none", scalar_alpha: bool = False, beta_init: float = 0.0,
                 decay_alpha_beta: bool = True, axis_name: str = "norm",
                 rngs: nnx.Rngs | None = None):
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"SeeDNorm dim must be an integer >= 1, got {dim!r}")
        if not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
            raise ValueError(f"SeeDNorm num_heads={num_heads!r} must be an integer >= 1 dividing "
                             f"dim={dim}")
        if activation not in SEEDNORM_ACTIVATIONS:
            raise ValueError(f"SeeDNorm activation={activation!r} is not allowed; allowed: "
                             f"{SEEDNORM_ACTIVATIONS}")
        if dot_scale not in SEEDNORM_DOT_SCALES:
            raise ValueError(f"SeeDNorm dot_scale={dot_scale!r} is not allowed; allowed: "
                             f"{SEEDNORM_DOT_SCALES}")
        c = dim // num_heads
        self.dot_divisor = {"none": 1.0, "sqrt_dim": float(c) ** 0.5, "dim": float(c)}[dot_scale]
        self.dim, self.num_heads, self.activation, self.eps = dim, num_heads, activation, eps
        self.zero_centered_gamma = zero_centered_gamma
        g0 = 0.0 if zero_centered_gamma else 1.0
        self.gamma = param(None, constant_init(g0), (dim,), (axis_name,), weight_decay=False,
                           lr_group="seednorm_gamma")
        a_shape, a_axes = ((1,), (None,)) if scalar_alpha else ((dim,), (axis_name,))
        decay = bool(decay_alpha_beta)
        self.alpha = param(None, constant_init(alpha_init), a_shape, a_axes, weight_decay=decay,
                           lr_group="seednorm_alpha")
        self.beta = param(None, constant_init(float(beta_init)), (dim,), (axis_name,),
                          weight_decay=decay, lr_group="seednorm_beta")

    def dynamic_scalar(self, x: jax.Array) -> jax.Array:
        """act(x_(j) . beta_(j)) in float32: [..., num_heads]."""
        h, c = self.num_heads, self.dim // self.num_heads
        xf = x.astype(jnp.float32).reshape(*x.shape[:-1], h, c)
        s = jnp.einsum("...hc,hc->...h", xf, self.beta[...].reshape(h, c),
                       precision=jax.lax.Precision.HIGHEST)
        return _seednorm_activation(self.activation)(s / self.dot_divisor)

    def gamma_vector(self) -> jax.Array:
        """The static gain gamma [dim] (the +1 of ``zero_centered_gamma`` applied)."""
        return self.gamma[...] + (1.0 if self.zero_centered_gamma else 0.0)

    def gain_from_scalar(self, act: jax.Array) -> jax.Array:
        """alpha * act spread over each head's channels: act [..., num_heads] -> [..., dim]."""
        h, c = self.num_heads, self.dim // self.num_heads
        alpha = jnp.broadcast_to(self.alpha[...], (self.dim,)).reshape(h, c)
        return (act[..., None] * alpha).reshape(*act.shape[:-1], self.dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.shape[-1] != self.dim:
            raise ValueError(f"SeeDNorm expects last dim {self.dim}, got shape {x.shape}")
        xf = x.astype(jnp.float32)
        inv_rms = jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        y = (self.gamma_vector() + self.gain_from_scalar(self.dynamic_scalar(x))) * xf * inv_rms
        return y.astype(x.dtype)


class DyT(nnx.Module):
    """Dynamic Tanh (Zhu et al. 2025, the normalisation-free baseline SeeDNorm compares against):

        y = gamma * tanh(a * x) + bias,   a a learnable scalar (init ``alpha_init``, 0.5 as in the
                                          DyT paper's default), gamma = 1, bias = 0 [dim].

    Shapes: x [..., dim] -> [..., dim]. Float32 compute, input dtype out. No weight decay on any
    of its parameters ([I]: treated like norm parameters).
    """

    def __init__(self, dim: int, *, alpha_init: float = 0.5, axis_name: str = "norm",
                 rngs: nnx.Rngs | None = None):
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"DyT dim must be an integer >= 1, got {dim!r}")
        self.dim = dim
        self.alpha = param(None, constant_init(alpha_init), (), (), weight_decay=False)
        self.gamma = param(None, constant_init(1.0), (dim,), (axis_name,), weight_decay=False)
        self.bias = param(None, constant_init(0.0), (dim,), (axis_name,), weight_decay=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        y = self.gamma[...] * jnp.tanh(self.alpha[...] * xf) + self.bias[...]
        return y.astype(x.dtype)
