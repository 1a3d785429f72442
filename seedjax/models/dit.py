"""Class-conditional diffusion transformer (DiT) with optional Race-DiT MoE FFNs.

``DiTConfig`` (the ``model`` block of an ``task = "image_diffusion"`` config) and
``DiT(config, rngs=...)``:

    DiT(x [B, H, W, C], t [B] in [0, 1], y [B] int32) -> DiTOutput
        output       [B, H, W, C] float32   the prediction (velocity or noise, by objective)
        aux_losses   {name: scalar}         weighted auxiliary losses summed over MoE layers
        predictions  [M, B, L, p p C] | None  per-layer regularisation heads of the M MoE layers
        stats        list of M dicts          routing statistics per MoE layer
        branch_norms [n_layers, 2]          RMS of each block's gated attention / FFN output

Class ``num_classes`` is the null class (classifier-free guidance; the objective drops labels
to it with probability ``class_dropout``). Time: t = 0 is pure noise, t = 1 data for the flow
objective (``seedjax.train.diffusion``), which maps DDPM steps onto the same [0, 1] input.

``ffn = "mlp"`` (dense DiT, hidden ``mlp_ratio`` d) or ``"moe"`` (``moe_kwargs`` ->
``seedjax.nn.moe.dit_moe.DiTMoEConfig``; ``moe_every`` = 1 puts it in every block, 2 in every
other block starting with block 1, like DiT-MoE's interleaving). In eval mode
(``model.eval()``) the MoE layers route by their inference threshold.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.models.config import DTYPES
from seedjax.nn.dit import (MLP, ClassEmbed, DiTBlock, FinalLayer, Dense, TimestepEmbed,
                            check_patch, patchify, sincos_2d, unpatchify)
from seedjax.validation import check_choice, check_int, dataclass_from_dict

FFNS = ("mlp", "moe")


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    """Fields: image_size (H = W), channels C, patch_size p (divides H), d_model, n_layers,
    n_heads, mlp_ratio (dense FFN hidden = mlp_ratio d), num_classes, dtype (compute),
    freq_dim (timestep features), ffn ("mlp" | "moe"), moe_kwargs, moe_every."""

    image_size: int = 28
    channels: int = 1
    patch_size: int = 4
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    dtype: str = "float32"
    freq_dim: int = 256
    ffn: str = "mlp"
    moe_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    moe_every: int = 1

    def __post_init__(self):
        for name in ("image_size", "channels", "patch_size", "d_model", "n_layers", "n_heads",
                     "num_classes", "freq_dim", "moe_every"):
            check_int(f"model.{name}", getattr(self, name))
        check_patch((self.image_size, self.image_size), self.patch_size)
        if self.d_model % self.n_heads:
            raise ValueError(f"model.n_heads={self.n_heads} must divide model.d_model="
                             f"{self.d_model}")
        if self.d_model % 4:
            raise ValueError(f"model.d_model={self.d_model} must be divisible by 4")
        if self.freq_dim % 2:
            raise ValueError(f"model.freq_dim={self.freq_dim} must be even")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"model.mlp_ratio={self.mlp_ratio!r} must be a number > 0")
        check_choice("model.ffn", self.ffn, FFNS)
        check_choice("model.dtype", self.dtype, tuple(DTYPES))
        if self.ffn == "moe":
            self.moe_config()   # validates moe_kwargs

    def __hash__(self):
        return hash(repr(sorted(dataclasses.asdict(self).items(), key=lambda kv: kv[0])))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DiTConfig":
        return dataclass_from_dict(cls, d, "model")

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        return self.patch_size ** 2 * self.channels

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    def is_moe_layer(self, i: int) -> bool:
        return self.ffn == "moe" and (i + 1) % self.moe_every == 0

    def moe_config(self):
        from seedjax.nn.moe.dit_moe import DiTMoEConfig
        kw = dict(self.moe_kwargs)
        kw.setdefault("dense_hidden", self.mlp_hidden)
        return DiTMoEConfig.from_dict(kw, d_model=self.d_model, target_dim=self.patch_dim)


class DiTOutput(NamedTuple):
    output: jax.Array
    aux_losses: dict
    predictions: jax.Array | None
    stats: list
    branch_norms: jax.Array


class DiT(nnx.Module):
    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, DiTConfig):
            raise ValueError(f"DiT needs a DiTConfig, got {type(config).__name__}")
        c = self.config = config
        dt = c.compute_dtype
        self.patch_embed = Dense(c.patch_dim, c.d_model, (None, "embed"), dtype=dt, rngs=rngs)
        self.t_embed = TimestepEmbed(c.d_model, c.freq_dim, dtype=dt, rngs=rngs)
        self.y_embed = ClassEmbed(c.num_classes, c.d_model, rngs=rngs)
        blocks = []
        for i in range(c.n_layers):
            if c.is_moe_layer(i):
                from seedjax.nn.moe.dit_moe import DiTMoE
                ffn = DiTMoE(c.moe_config(), dtype=dt, rngs=rngs)
            else:
                ffn = MLP(c.d_model, c.mlp_hidden, dtype=dt, rngs=rngs)
            blocks.append(DiTBlock(c.d_model, c.n_heads, ffn, dtype=dt, rngs=rngs))
        self.blocks = nnx.List(blocks)
        self.final = FinalLayer(c.d_model, c.patch_dim, dtype=dt, rngs=rngs)

    def check_inputs(self, x: jax.Array, t: jax.Array, y: jax.Array) -> None:
        c = self.config
        want = (c.image_size, c.image_size, c.channels)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"DiT input images have shape {tuple(x.shape)}; expected "
                             f"[B, {want[0]}, {want[1]}, {want[2]}] (model.image_size, "
                             "model.channels)")
        if t.shape != x.shape[:1] or y.shape != x.shape[:1]:
            raise ValueError(f"DiT needs t and y of shape [B] = {x.shape[:1]}, got {t.shape} and "
                             f"{y.shape}")

    def __call__(self, x: jax.Array, t: jax.Array, y: jax.Array, *,
                 race_axis: Any = None) -> DiTOutput:
        """``race_axis``: data-parallel mesh axes inside ``shard_map`` over which an Expert Race
        is global (None under jit/GSPMD, where the race is global anyway)."""
        c = self.config
        self.check_inputs(x, t, y)
        pos = jnp.asarray(sincos_2d(c.image_size // c.patch_size, c.image_size // c.patch_size,
                                    c.d_model))
        h = self.patch_embed(patchify(x, c.patch_size)).astype(jnp.float32) + pos
        cond = (self.t_embed(t) + self.y_embed(y)).astype(jnp.float32)
        aux: dict = {}
        preds, stats, norms = [], [], []
        for block in self.blocks:
            h, f, n = block(h, cond, race_axis=race_axis, t=t)
            norms.append(jnp.stack([n["attn"], n["ffn"]]))
            for k, v in f.aux_losses.items():
                aux[k] = aux.get(k, 0.0) + v
            if f.prediction is not None:
                preds.append(f.prediction)
            if f.stats:
                stats.append(f.stats)
        out = unpatchify(self.final(h, cond), c.patch_size, c.image_size, c.image_size)
        return DiTOutput(out, aux, jnp.stack(preds) if preds else None, stats,
                         jnp.stack(norms))



def forward_flops_per_image(c: DiTConfig) -> dict[str, float]:
    """Forward matmul FLOPs per image by component (2 per multiply-add; MoE layers count their
    activated experts, router trunk and gating; the training-only PLR head is counted too).
    Attention is bidirectional: scores and mixing 4 L d per token per layer."""
    d, n = c.d_model, c.tokens
    dense_ffn = 4 * d * c.mlp_hidden
    n_moe = sum(c.is_moe_layer(i) for i in range(c.n_layers))
    out = {
        "patch_embed": n * 2 * c.patch_dim * d,
        "conditioning": 2 * c.freq_dim * d + 2 * d * d
                        + c.n_layers * 2 * d * 6 * d + 2 * d * 2 * d,
        "attn_proj": c.n_layers * n * 8 * d * d,
        "attn_scores": c.n_layers * n * 4 * n * d,
        "ffn": (c.n_layers - n_moe) * n * dense_ffn,
        "final": n * 2 * d * c.patch_dim,
    }
    if n_moe:
        for k, v in c.moe_config().forward_flops_per_token().items():
            out[f"moe_{k}"] = n_moe * n * v
    return out


def param_counts(c: DiTConfig) -> dict[str, int]:
    """Parameter counts from the abstract model (``nnx.eval_shape``: nothing allocated):
    ``total`` and ``active`` (an MoE layer's experts count k / E) for the whole model, and
    ``blocks_total`` / ``blocks_active`` for the transformer blocks alone (what Race-DiT's
    Table 4 matches: its dense sizes equal 18 d^2 + 15 d per block, without the embedders and
    the final layer [I])."""
    import math

    abstract = nnx.eval_shape(lambda: DiT(c, rngs=nnx.Rngs(0)))
    flat = nnx.to_flat_state(nnx.state(abstract, nnx.Param))
    out = dict.fromkeys(("total", "active", "blocks_total", "blocks_active"), 0)
    frac = c.moe_config().top_k / c.moe_config().n_experts if c.ffn == "moe" else 1.0
    for path, v in flat:
        n = math.prod(v.get_value().shape)
        names = [str(p) for p in path]
        act = n * frac if "experts" in names else n
        out["total"] += n
        out["active"] += act
        if names[0] == "blocks":
            out["blocks_total"] += n
            out["blocks_active"] += act
    return {k: int(round(v)) for k, v in out.items()}
