"""Diffusion-transformer building blocks (DiT, Peebles & Xie 2023; the Race-DiT backbone, notes
C.2.1): patchify, timestep and class embedders, adaLN-Zero blocks, the final layer.

Shapes (B images, H x W x C pixels, patch p, L = (H/p)(W/p) tokens, width d):

    patchify(x [B, H, W, C], p) -> [B, L, p p C]     row-major patches, (py, px, c) inside
    unpatchify(t [B, L, p p C], p, H, W) -> [B, H, W, C]
    sincos_2d(grid_h, grid_w, d) -> [L, d]            fixed positional embedding (not a Param)
    TimestepEmbed(t [B] in [0, 1]) -> [B, d]          MLP(SiLU) of sin/cos features of 1000 t
    ClassEmbed(y [B]) -> [B, d]                       num_classes + 1 rows; row num_classes is
                                                      the null class of classifier-free guidance
    DiTBlock(x [B, L, d], c [B, d]) -> (x, FFNOut)    adaLN-Zero:
        shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))      [B, 6d], zero init
        x = x + gate1 * Attn(LN(x) (1 + scale1) + shift1)
        x = x + gate2 * FFN(LN(x) (1 + scale2) + shift2)          LN without affine, eps 1e-6
    FinalLayer(x, c) -> [B, L, p p C]: adaLN (shift, scale, zero init) + Linear (zero init)

A fresh block is the identity (its gates are 0) and a fresh model outputs zeros. The FFN is a
module ``ffn(h [B, L, d], *, cond=...) -> FFNOut`` (a GELU-tanh MLP by default, or a Race-DiT MoE
layer, see ``seedjax.models.dit``), so the block records the FFN's auxiliary losses, per-layer
regularisation predictions and routing statistics; ``branch_norms`` are the RMS of each
block's two gated branch outputs (the block-output norms of Race-DiT Fig. 5).

Init (DiT): Xavier-uniform linears with zero biases, N(0, 0.02) class table and timestep MLP,
zeros for every adaLN modulation and the final projection.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.nn.attention import attend
from seedjax.nn.linear import project
from seedjax.nn.params import constant_init, normal_init, param

TIME_SCALE = 1000.0   # t in [0, 1] is embedded as 1000 t (DiT's integer steps 0..999)


def xavier_uniform(fan_in: int, fan_out: int):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -limit, limit)


def check_patch(image_hw: tuple[int, int], patch: int) -> None:
    h, w = image_hw
    if not (isinstance(patch, int) and patch >= 1) or h % patch or w % patch:
        raise ValueError(f"model.patch_size={patch!r} must be a positive integer dividing the "
                         f"image size {h}x{w}")


def patchify(x: jax.Array, patch: int) -> jax.Array:
    b, h, w, c = x.shape
    check_patch((h, w), patch)
    x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(t: jax.Array, patch: int, height: int, width: int) -> jax.Array:
    b, n, f = t.shape
    gh, gw = height // patch, width // patch
    c = f // (patch * patch)
    if gh * gw != n or c * patch * patch != f:
        raise ValueError(f"unpatchify: {n} tokens of {f} values do not tile {height}x{width} "
                         f"with patch {patch}")
    x = t.reshape(b, gh, gw, patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def sincos_2d(grid_h: int, grid_w: int, dim: int) -> np.ndarray:
    """[grid_h grid_w, dim] float32: half the channels encode the row, half the column, each
    as [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (dim / 4)), k < dim / 4."""
    if dim % 4:
        raise ValueError(f"model.d_model={dim} must be divisible by 4 (2-D sin-cos positions)")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))

    def enc(pos):
        out = np.outer(pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    return np.concatenate([enc(rows.reshape(-1)), enc(cols.reshape(-1))], 1).astype(np.float32)


def timestep_features(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """t [B] in [0, 1] -> [B, dim] = [cos(1000 t f_k), sin(1000 t f_k)], f_k = P^(-k / (dim/2))."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = TIME_SCALE * t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class Dense(nnx.Module):
    """y = x W + b, W [d_in, d_out] (Xavier-uniform or ``init``), b zeros (optional)."""

    def __init__(self, d_in: int, d_out: int, axes: tuple, *, init=None, bias: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.w = param(rngs, init or xavier_uniform(d_in, d_out), (d_in, d_out), axes)
        self.b = (param(None, constant_init(0.0), (d_out,), axes[-1:], weight_decay=False)
                  if bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = project(x.astype(self.dtype), self.w[...].astype(self.dtype))
        return y if self.b is None else y + self.b[...].astype(y.dtype)


class TimestepEmbed(nnx.Module):
    def __init__(self, d_model: int, freq_dim: int = 256, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.freq_dim = freq_dim
        init = normal_init(0.02)
        self.fc1 = Dense(freq_dim, d_model, (None, "embed"), init=init, dtype=dtype, rngs=rngs)
        self.fc2 = Dense(d_model, d_model, ("embed", "embed_out"), init=init, dtype=dtype,
                         rngs=rngs)

    def __call__(self, t: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.silu(self.fc1(timestep_features(t, self.freq_dim))))


class ClassEmbed(nnx.Module):
    """Table [num_classes + 1, d]; label ``num_classes`` is the null (unconditional) class."""

    def __init__(self, num_classes: int, d_model: int, *, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.table = param(rngs, normal_init(0.02), (num_classes + 1, d_model), (None, "embed"))

    def __call__(self, y: jax.Array) -> jax.Array:
        return self.table[...][y]


class SelfAttention(nnx.Module):
    """Bidirectional multi-head attention with qkv and output biases (DiT's)."""

    def __init__(self, d_model: int, heads: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if d_model % heads:
            raise ValueError(f"model.n_heads={heads} must divide model.d_model={d_model}")
        self.heads = heads
        self.qkv = Dense(d_model, 3 * d_model, ("embed", "qkv"), dtype=dtype, rngs=rngs)
        self.out = Dense(d_model, d_model, ("qkv", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        q, k, v = jnp.split(self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads), 3, axis=2)
        y = attend(q[:, :, 0], k[:, :, 0], v[:, :, 0], jnp.ones((n, n), bool), 1)
        return self.out(y.reshape(b, n, d))


class FFNOut(NamedTuple):
    y: jax.Array                    # [B, L, d]
    aux_losses: dict                # {name: scalar float32}, already weighted
    prediction: jax.Array | None    # [B, L, p p C] per-layer regularisation head, or None
    stats: dict                     # routing statistics (arrays), may be empty


class MLP(nnx.Module):
    """DiT's FFN: fc2(GELU_tanh(fc1 h)), hidden ``hidden`` (4 d)."""

    def __init__(self, d_model: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.fc1 = Dense(d_model, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = Dense(hidden, d_model, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, h: jax.Array, **_: Any) -> FFNOut:
        return FFNOut(self.fc2(jax.nn.gelu(self.fc1(h), approximate=True)), {}, None, {})


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """LayerNorm without affine parameters, in float32."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, -1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), -1, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(var + eps)


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    return x * (1 + scale[:, None]) + shift[:, None]


class Modulation(nnx.Module):
    """c [B, d] -> n chunks [B, d] of Linear(SiLU(c)) (zero init: adaLN-Zero)."""

    def __init__(self, d_model: int, n: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.n = n
        self.lin = Dense(d_model, n * d_model, ("embed", "mlp"), init=constant_init(0.0),
                         dtype=dtype, rngs=rngs)

    def __call__(self, c: jax.Array) -> list[jax.Array]:
        return jnp.split(self.lin(jax.nn.silu(c)).astype(jnp.float32), self.n, axis=-1)


def rms(x: jax.Array) -> jax.Array:
    """Root mean square over everything: [] float32."""
    return jnp.sqrt(jnp.mean(jnp.square(x.astype(jnp.float32))))


class DiTBlock(nnx.Module):
    def __init__(self, d_model: int, heads: int, ffn: nnx.Module, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.attn = SelfAttention(d_model, heads, dtype=dtype, rngs=rngs)
        self.ffn = ffn
        self.mod = Modulation(d_model, 6, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, c: jax.Array, **ffn_kwargs) -> tuple[jax.Array, FFNOut, dict]:
        sh1, sc1, g1, sh2, sc2, g2 = self.mod(c)
        a = g1[:, None] * self.attn(modulate(layer_norm(x), sh1, sc1).astype(self.dtype))
        x = x + a.astype(x.dtype)
        f = self.ffn(modulate(layer_norm(x), sh2, sc2).astype(self.dtype), **ffn_kwargs)
        m = g2[:, None] * f.y.astype(jnp.float32)
        x = x + m.astype(x.dtype)
        return x, f, {"attn": rms(a), "ffn": rms(m)}


class FinalLayer(nnx.Module):
    def __init__(self, d_model: int, out_dim: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.mod = Modulation(d_model, 2, dtype=dtype, rngs=rngs)
        self.lin = Dense(d_model, out_dim, ("embed", None), init=constant_init(0.0), dtype=dtype,
                         rngs=rngs)

    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        shift, scale = self.mod(c)
        return self.lin(modulate(layer_norm(x), shift, scale)).astype(jnp.float32)
