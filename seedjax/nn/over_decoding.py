"""Over-decoding heads (Over-Tokenized Transformer, arXiv 2501.16975, Sec. 3.2 and App. C): extra
training-only heads that predict tokens further ahead than the next one. At inference only the
ordinary next-token logits are used (the extra heads are dropped).

One head module, :class:`OverDecodingHead`, with three modes (``OverDecodingConfig.mode``):

* ``"product"`` (App. C, Eq. 8, Alg. 2): the n-gram output vocabulary as a product of n V-sized
  tables. Position t's final hidden x_t [D] feeds the ordinary next-token head (j = 1) and, for
  j = 2..n, an extra head ``head_j = (optional Linear D -> rank) then Linear(. -> V)`` predicting
  x_{t+j} from the SAME x_t (no extra transformer layer). Training loss
  ``CE_1 + sum_{j>=2} lambda_j CE_j``; since the softmax over the product set factorises
  (Eqs. 7/9), with all lambda_j = 1 this is exactly the CE of the n-gram softmax whose logits are
  the outer sum of the n heads' logits.
* ``"mtp_ds"`` (DeepSeek-V3 sequential multi-token prediction, the paper's OT = OE + MTP-DS):
  module k = 1..depth at position t combines the previous hidden h^{k-1}_t (h^0 = x) with the
  embedding of x_{t+k} (the LM's ``embed``, so with an over-encoding embed the over-encoded one;
  taken from ``input_embeddings`` when the caller passes them, else ``embed(targets)``):
  ``u = M [RMSNorm(h^{k-1}_t); RMSNorm(e_{t+k})]`` (M: 2D -> D, no bias), ``h^k = Block(u)`` (one
  transformer block built by the caller, RoPE at positions 0..), and logits for x_{t+k+1} =
  ``base(RMSNorm(h^k))`` through the SHARED main head. Loss ``sum_k lambda_{k+1} CE_{k+1}``.
* ``"ngram_joint"`` (the paper's CFG variant (iii), Sec. 3.1 / App. B.2, small vocabularies
  only): ONE joint softmax over the V^n n-grams (x_{t+1}, ..., x_{t+n}) from a table [D, V^n].
  ``__call__`` returns the marginal logits of the first token, ``logsumexp`` over the other n-1
  (sampling from them = sampling an n-gram and keeping its first token, as the paper does at
  inference); ``training_losses`` returns (joint CE - marginal CE) on positions whose whole
  n-gram lies inside the window (and inside the mask / document), so the LM's total loss is the
  joint CE there and the next-token CE elsewhere.

Label alignment (the LM's convention): ``targets[:, t]`` is x_{t+1}, so "predict x_{t+j} at t"
has label ``targets[:, t + j - 1]``, defined for t <= T - j. A label carries loss only where
``mask`` (the LM's target_mask) is 1 at the label's position and, with ``eos_id`` set, where no
eos occurs among x_{t+1}, ..., x_{t+j-1} (a label in a later document than x_{t+1} is not
predicted; an eos as the label itself is). Each CE is the mean over its own valid positions,
except ngram_joint's, which is divided by the next-token CE's count so that the sum is a joint CE.

Shapes: ``__call__(x [B, T, D], embed) -> logits [B, T, V]`` float32;
``training_losses(x [B, T, D], targets int [B, T], embed, mask=None | [B, T],
input_embeddings=None | [B, T, D]) -> {name: weighted scalar}`` with names ``od/ce_<j>``
(product, lambda_j CE_j), ``od/mtp_ce_<k+1>`` (mtp_ds, lambda_{k+1} CE_{k+1}; the block's own aux
losses as ``od/mtp_<k>/<name>``, unweighted) and ``od/joint_minus_next_ce`` (ngram_joint).
``embed(tokens [B, T]) -> [B, T, D]``, ``embed.attend(x) -> [.., V]`` (tied base head).

Not here: the blocks themselves (``seedjax.models.over_decoding_factories`` builds them with the
LM's ``Block``), sampled-softmax or hashed n-gram output vocabularies.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.embeddings import OutputHead
from seedjax.nn.linear import project
from seedjax.nn.losses import token_nll
from seedjax.nn.norms import RMSNorm
from seedjax.nn.params import normal_init, param

MODES = ("product", "mtp_ds", "ngram_joint")
BASES = ("tied", "untied")
MAX_JOINT_CLASSES = 2 ** 20
DEFAULT_WEIGHT = 0.1   # the paper's future-token loss weight (Sec. 4.3, Table 5)


def _field(name: str) -> str:
    return f"model.head_kwargs.{name}"


@dataclasses.dataclass(frozen=True)
class OverDecodingConfig:
    """Validated settings; every error names ``model.head_kwargs.<field>``.

    ``n``: the n-gram order (the farthest token predicted is x_{t+n}); default 2. For mtp_ds,
    ``n = depth + 1`` (give either). ``weights``: lambda_j for j = 2..n (a number: the same for
    all), default 0.1 each; not used by ngram_joint. ``rank``: product only, the width of the
    extra heads' projection (None: no projection). ``depth``: mtp_ds only, the number of
    sequential modules. ``base``: the next-token head, "tied" (``embed.attend``) or "untied";
    ngram_joint has its own joint table instead. ``eos_id``: None (losses cross document
    boundaries, like the next-token loss) or the eos id (see the module docstring).
    """
    vocab_size: int
    d_model: int
    mode: str = "product"
    n: int | None = None
    weights: Any = None
    rank: int | None = None
    depth: int | None = None
    base: str | None = None
    eos_id: int | None = None
    init_std: float = 0.02
    norm_eps: float = 1e-6

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)
        if self.mode not in MODES:
            raise ValueError(f"{_field('mode')}={self.mode!r} is not allowed; allowed: {MODES}")
        if self.depth is not None:
            if self.mode != "mtp_ds":
                raise ValueError(f"{_field('depth')}={self.depth!r} is only for mode='mtp_ds' "
                                 f"(got mode={self.mode!r}); use {_field('n')}")
            if not _is_int(self.depth) or self.depth < 1:
                raise ValueError(f"{_field('depth')}={self.depth!r} must be an integer >= 1")
            if self.n is not None and self.n != self.depth + 1:
                raise ValueError(f"{_field('n')}={self.n!r} and {_field('depth')}="
                                 f"{self.depth!r} disagree: mtp_ds needs n = depth + 1")
            set_("n", self.depth + 1)
        n = 2 if self.n is None else self.n
        if not _is_int(n) or n < 2:
            raise ValueError(f"{_field('n')}={self.n!r} must be an integer >= 2 (the farthest "
                             "future token x_{t+n}; n = 1 is the plain next-token head)")
        set_("n", int(n))
        if self.mode == "mtp_ds":
            set_("depth", self.n - 1)
        if self.rank is not None:
            if self.mode != "product":
                raise ValueError(f"{_field('rank')}={self.rank!r} is only for mode='product' "
                                 f"(got mode={self.mode!r})")
            if not _is_int(self.rank) or self.rank < 1:
                raise ValueError(f"{_field('rank')}={self.rank!r} must be None (no projection) "
                                 "or an integer >= 1")
        if self.mode == "ngram_joint":
            if self.weights is not None:
                raise ValueError(f"{_field('weights')}={self.weights!r} is not used by "
                                 "mode='ngram_joint' (one joint softmax, no per-token weights); "
                                 "leave it unset")
            if self.base not in (None, "untied"):
                raise ValueError(f"{_field('base')}={self.base!r}: mode='ngram_joint' has its own "
                                 "joint output table [D, V^n]; leave base unset")
            classes = self.vocab_size ** self.n
            if classes > MAX_JOINT_CLASSES:
                raise ValueError(f"{_field('n')}={self.n}: mode='ngram_joint' needs V^n = "
                                 f"{self.vocab_size}^{self.n} = {classes} output classes, above "
                                 f"the limit {MAX_JOINT_CLASSES} (2^20); use a smaller "
                                 "vocabulary or n, or mode='product'")
            set_("weights", ())
        else:
            set_("weights", self._resolve_weights())
            base = "tied" if self.base is None else self.base
            if base not in BASES:
                raise ValueError(f"{_field('base')}={self.base!r} is not allowed; allowed: "
                                 f"{BASES}")
            set_("base", base)
        if self.eos_id is not None and (not _is_int(self.eos_id)
                                        or not 0 <= self.eos_id < self.vocab_size):
            raise ValueError(f"{_field('eos_id')}={self.eos_id!r} must be None or a token id in "
                             f"[0, {self.vocab_size})")

    def _resolve_weights(self) -> tuple[float, ...]:
        k = self.n - 1
        w = self.weights
        if w is None:
            w = (DEFAULT_WEIGHT,) * k
        elif isinstance(w, (int, float)) and not isinstance(w, bool):
            w = (float(w),) * k
        else:
            try:
                w = tuple(float(v) for v in w)
            except (TypeError, ValueError):
                raise ValueError(f"{_field('weights')}={self.weights!r} must be a number or a "
                                 f"list of {k} numbers (lambda_2..lambda_{self.n})") from None
        if len(w) != k:
            raise ValueError(f"{_field('weights')}={self.weights!r} has {len(w)} entries; "
                             f"n={self.n} needs {k} (lambda_2..lambda_{self.n})")
        if any(not math.isfinite(v) or v < 0 for v in w):
            raise ValueError(f"{_field('weights')}={self.weights!r} must be finite and >= 0")
        return w

    @property
    def joint_classes(self) -> int:
        return self.vocab_size ** self.n


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# ----------------------------------------------------------------------------- label helpers

def future_valid(targets: jax.Array, mask: jax.Array | None, j: int,
                 eos_id: int | None) -> jax.Array:
    """Which positions t = 0..T-j carry the loss of "predict x_{t+j}" (label ``targets[:, t+j-1]``):
    float32 [B, T-j+1], 1 where the label's mask is 1 and (with ``eos_id``) no eos is among
    x_{t+1..t+j-1} = ``targets[:, t..t+j-2]``. j = 1 gives the next-token mask."""
    b, t = targets.shape
    if not 1 <= j <= t:
        raise ValueError(f"future distance j={j} needs 1 <= j <= sequence length {t}")
    span = t - j + 1
    valid = (jnp.ones((b, span), jnp.float32) if mask is None
             else mask[:, j - 1:].astype(jnp.float32))
    if eos_id is not None and j > 1:
        hits = jnp.cumsum((targets == eos_id).astype(jnp.int32), axis=1)
        hits = jnp.pad(hits, ((0, 0), (1, 0)))            # hits[:, i] = eos count in [0, i)
        crossed = hits[:, j - 1:j - 1 + span] - hits[:, :span]   # eos in [t, t + j - 2]
        valid = valid * (crossed == 0).astype(jnp.float32)
    return valid


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """sum(values * valid) / max(sum(valid), 1)."""
    return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1.0)


# ----------------------------------------------------------------------------- modules

class FutureHead(nnx.Module):
    """Product-mode head_j: x [.., D] -> (optional Linear D -> rank) -> Linear(. -> V) -> [.., V]
    float32. No biases (Alg. 2's heads are plain linear maps)."""

    def __init__(self, d_model: int, vocab_size: int, *, rank: int | None, init_std: float,
                 dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.proj = (None if rank is None else
                     param(rngs, normal_init(init_std), (d_model, rank), ("embed", None)))
        width = d_model if rank is None else rank
        self.table = param(rngs, normal_init(init_std), (width, vocab_size),
                           ("embed" if rank is None else None, "vocab"))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x.astype(self.dtype)
        if self.proj is not None:
            h = project(h, self.proj[...].astype(self.dtype))
        return project(h, self.table[...].astype(self.dtype)).astype(jnp.float32)


class MTPModule(nnx.Module):
    """One DeepSeek-V3 MTP module: (h [B, S, D], e [B, S, D]) -> (h' [B, S, D], aux losses) with
    ``h' = reduce(block(expand(M [RMSNorm(h); RMSNorm(e)])))``; ``out_norm(h')`` feeds the shared
    head. ``block(H) -> (H, cache, aux, record)`` is the LM's Block (RoPE at positions 0..S-1);
    ``connection`` the LM's connection family, whose ``expand(x, connection_cfg)`` /
    ``reduce(H, connection_cfg)`` map to and from the block's stream (None: identity, the plain
    residual)."""

    def __init__(self, d_model: int, block: nnx.Module, *, connection: Any = None,
                 connection_cfg: Any = None, init_std: float, norm_eps: float, dtype,
                 rngs: nnx.Rngs):
        self.dtype = dtype
        self.h_norm = RMSNorm(d_model, eps=norm_eps)
        self.e_norm = RMSNorm(d_model, eps=norm_eps)
        self.merge = param(rngs, normal_init(init_std), (2 * d_model, d_model), (None, "embed"))
        self.block = block
        self.out_norm = RMSNorm(d_model, eps=norm_eps)
        self.connection, self.connection_cfg = connection, connection_cfg

    def __call__(self, h: jax.Array, e: jax.Array) -> tuple[jax.Array, dict]:
        u = jnp.concatenate([self.h_norm(h).astype(self.dtype),
                             self.e_norm(e).astype(self.dtype)], axis=-1)
        u = project(u, self.merge[...].astype(self.dtype))
        conn, ccfg = self.connection, self.connection_cfg
        H, _, aux, _ = self.block(u if conn is None else conn.expand(u, ccfg))
        return (H if conn is None else conn.reduce(H, ccfg)), aux


class OverDecodingHead(nnx.Module):
    """The "over_decoding" head (see the module docstring). ``blocks``: mtp_ds only, one LM block
    per module (built by the factory); ``connection`` / ``connection_cfg``: see MTPModule."""

    def __init__(self, config: OverDecodingConfig, *, dtype=jnp.float32, rngs: nnx.Rngs,
                 blocks: Sequence[nnx.Module] = (), connection: Any = None,
                 connection_cfg: Any = None):
        c = self.config = config
        self.dtype = dtype
        d, v = c.d_model, c.vocab_size
        self.base = (OutputHead(d, v, init_std=c.init_std, dtype=dtype, rngs=rngs)
                     if c.base == "untied" else None)
        # every attribute assigned once (NNX fixes data / static on first assignment)
        self.future_heads = nnx.List([
            FutureHead(d, v, rank=c.rank, init_std=c.init_std, dtype=dtype, rngs=rngs)
            for _ in range(c.n - 1 if c.mode == "product" else 0)])
        if c.mode == "mtp_ds" and len(blocks) != c.depth:
            raise ValueError(f"mtp_ds needs one block per module: got {len(blocks)} for depth "
                             f"{c.depth}")
        self.mtp = nnx.List([
            MTPModule(d, blk, connection=connection, connection_cfg=connection_cfg,
                      init_std=c.init_std, norm_eps=c.norm_eps, dtype=dtype, rngs=rngs)
            for blk in (blocks if c.mode == "mtp_ds" else ())])
        self.joint = (param(rngs, normal_init(c.init_std), (d, c.joint_classes),
                            ("embed", "vocab")) if c.mode == "ngram_joint" else None)

    # ------------------------------------------------------------------ logits
    def base_logits(self, x: jax.Array, embed) -> jax.Array:
        """The next-token head (product / mtp_ds): x [.., D] -> [.., V] float32."""
        if self.base is not None:
            return self.base(x)
        return embed.attend(x).astype(jnp.float32)

    def joint_logits(self, x: jax.Array) -> jax.Array:
        """ngram_joint: x [.., D] -> [.., V^n] float32; class of (z_1..z_n) = sum_i z_i V^(n-i)
        (the first token most significant)."""
        return project(x.astype(self.dtype), self.joint[...].astype(self.dtype)).astype(
            jnp.float32)

    def __call__(self, x: jax.Array, embed) -> jax.Array:
        """x [B, T, D] -> next-token logits [B, T, V] float32 (ngram_joint: the first token's
        marginal, logsumexp over the other n-1 tokens)."""
        if self.config.mode != "ngram_joint":
            return self.base_logits(x, embed)
        joint = self.joint_logits(x)
        v, n = self.config.vocab_size, self.config.n
        return jax.nn.logsumexp(joint.reshape(*joint.shape[:-1], v, v ** (n - 1)), axis=-1)

    def future_logits(self, x: jax.Array, targets: jax.Array, embed,
                      input_embeddings: jax.Array | None = None) -> tuple[list, dict]:
        """Logits of the extra predictions, one per future distance j = 2..n: j-th entry
        [B, T-j+1, V] float32, row t predicting x_{t+j} (product: from x_t; mtp_ds: module j-1
        on x_{<=t} and x_{t+1..t+j-1}), plus the mtp blocks' aux losses. Not for ngram_joint.
        mtp_ds reads the embeddings of x_{t+1}.. from ``input_embeddings`` [B, T, D] (the LM's
        ``embed(tokens)``, position i = x_i: exact over-encoded embeddings, with their look-back
        and segments) when given, else from ``embed(targets)`` (the same for a plain token embed;
        an over-encoding embed then misses x_0 in the look-back of x_1 and gets no segment ids)."""
        c = self.config
        t = x.shape[1]
        if t < c.n:
            raise ValueError(f"over-decoding with n={c.n} needs sequences of at least {c.n} "
                             f"tokens, got {t}")
        if c.mode == "product":
            return [head(x[:, :t - j + 1]) for j, head in zip(range(2, c.n + 1),
                                                                self.future_heads)], {}
        if c.mode != "mtp_ds":
            raise ValueError("future_logits is for modes 'product' and 'mtp_ds'")
        # e_next[:, i] = embedding of x_{i+1}, i = 0..T-2 (x_{T} is never an input: it is only
        # the label of the last position)
        e_next = (embed(targets[:, :t - 1]) if input_embeddings is None
                  else input_embeddings[:, 1:])
        h, out, aux = x, [], {}
        for k, module in enumerate(self.mtp, start=1):
            span = t - k                       # positions 0..T-k-1 (label x_{t+k+1} exists)
            h, a = module(h[:, :span], e_next[:, k - 1:k - 1 + span])
            out.append(self.base_logits(module.out_norm(h), embed))
            aux.update({f"od/mtp_{k}/{name}": val for name, val in a.items()})
        return out, aux

    # ------------------------------------------------------------------ losses
    def training_losses(self, x: jax.Array, targets: jax.Array, embed,
                        mask: jax.Array | None = None,
                        input_embeddings: jax.Array | None = None) -> dict:
        """{name: weighted scalar} added to the LM's loss (see the module docstring);
        ``input_embeddings``: see ``future_logits``."""
        c = self.config
        if c.mode == "ngram_joint":
            return {"od/joint_minus_next_ce": self._joint_gap(x, targets, mask)}
        logits, aux = self.future_logits(x, targets, embed, input_embeddings)
        prefix = "od/ce_" if c.mode == "product" else "od/mtp_ce_"
        out = {}
        for j, (lg, w) in enumerate(zip(logits, c.weights), start=2):
            valid = future_valid(targets, mask, j, c.eos_id)
            ce = masked_mean(token_nll(lg, targets[:, j - 1:]), valid)
            out[f"{prefix}{j}"] = w * ce
        return {**out, **aux}

    def joint_labels(self, targets: jax.Array) -> jax.Array:
        """int32 [B, T-n+1]: the class of (x_{t+1}, ..., x_{t+n}) at t = 0..T-n."""
        n, v = self.config.n, self.config.vocab_size
        span = targets.shape[1] - n + 1
        labels = jnp.zeros((targets.shape[0], span), jnp.int32)
        for i in range(n):
            labels = labels * v + targets[:, i:i + span].astype(jnp.int32)
        return labels

    def _joint_gap(self, x, targets, mask) -> jax.Array:
        """sum over positions whose whole n-gram is valid of (joint CE - marginal CE), divided by
        the next-token CE's token count (so CE_next + this = the joint CE there)."""
        n, v = self.config.n, self.config.vocab_size
        t = x.shape[1]
        if t < n:
            raise ValueError(f"ngram_joint with n={n} needs sequences of at least {n} tokens, "
                             f"got {t}")
        span = t - n + 1
        joint = self.joint_logits(x[:, :span])
        marginal = jax.nn.logsumexp(joint.reshape(*joint.shape[:-1], v, v ** (n - 1)), axis=-1)
        gap = token_nll(joint, self.joint_labels(targets)) - token_nll(marginal, targets[:, :span])
        valid = jnp.ones_like(gap)
        for j in range(1, n + 1):              # every label of the n-gram valid, no eos inside
            valid = valid * future_valid(targets, mask, j, self.config.eos_id)[:, :span]
        count = (float(targets.size) if mask is None
                 else jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0))
        return jnp.sum(gap * valid) / count
