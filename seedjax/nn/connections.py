"""Residual connections around a branch (attention, FFN, memory layer, MoE).

Every connection follows one split interface so branches that return auxiliaries work:

    H = expand(x)                 # at the embedding: x [B, T, d] -> residual state H
    h, ctx = conn.read(H)         # branch input h [B, T, d]
    y = branch(norm(h))           # the block applies its own pre-norm and the branch
    H = conn.write(y, ctx)        # merge the branch output back into the state
    x = reduce(H)                 # once, before the final norm

Classes (one module per sublayer, i.e. two per transformer block):

* ``Residual``: plain pre-norm residual. H = x [B, T, d]; write -> H + y.
* ``HyperConnection`` (HC, arXiv 2409.19606): H [B, T, n, d], n = ``rate`` full-width streams.
  With Alpha = [A_m | A_r] in R^{n x (n+1)} and B = beta in R^n (Eqs. 2-5):
      Mix = Alpha^T H  [n+1, d];   h = Mix[0];   H_new = Mix[1:] + beta (outer) y
  Dynamic HC (Eqs. 10-13): coefficients from each stream's own d-vector,
      Hn = norm(H);  Alpha(H) = Alpha + s_alpha * tanh(Hn W_alpha)
                     beta(H)  = beta + s_beta * tanh(Hn w_beta)
  with W_alpha [d, n+1], w_beta [d], scalar scales s_alpha, s_beta (init 0.01), W = 0 at init.
  Static init for sublayer k (Eq. 14): A_m = e_(k mod n) (0-based), A_r = I, beta = 1.
* ``FracConnection`` (FC, arXiv 2503.14125): H [B, T, m, d/m], m = ``rate`` fractions of h.
      Mix = [Y | A]^T H  [2m, d/m];  h = reshape(Mix[:m], d)
      H_new = Mix[m:] + diag(beta) reshape(y, (m, d/m))
  Dynamic FC as DHC with per-fraction predictors W [d/m, 2m], w_beta [d/m] shared across
  fractions. Init Y = A = I, beta = 1, W = 0 (exactly the pre-norm residual).
* ``ManifoldHyperConnection`` (mHC, arXiv 2512.24880): H [B, T, n, d]. From the flattened,
  RMS-normalised vec(H) [n*d] (no gain; it is absorbed into phi):
      z = RMSNorm(vec H) phi,  phi [n*d, 2n + n^2]  (init 0)
      H_pre = sigmoid(b_pre + a_pre z_pre);  H_post = 2 sigmoid(b_post + a_post z_post)
      R = Sinkhorn(b_res + a_res z_res)     doubly stochastic, ``sinkhorn_iters`` (20) steps
      h = sum_s H_pre[s] H[s];   H_new = R^T H + H_post (outer) y
  i.e. mHC is HC with A_m = H_pre, A_r = R, beta = H_post.

**Transpose convention (all classes).** Every mixing matrix is stored and returned as
``[source stream, destination]``: ``A_r[i, j]`` is how much of old stream i goes into new stream
j, and new = A_r^T H (the HC paper's convention). mHC's paper writes ``x_{l+1} = H_res x_l``;
our R is H_res^T (so R's *columns* are the convex combinations; Sinkhorn ends with them summed
to exactly 1). Column 0 of HC's ``Alpha`` is the read-out A_m.

**Memory: ``recompute``.** ``read`` (coefficients, their norm, the width mixing) runs under
``jax.checkpoint``: the backward pass keeps only the stream state H it was given and recomputes
the [..., n, d] intermediates (normalised H, the f32 copy, the mixed rows), as the HC paper does
for its +16-26% memory. Outputs and gradients are identical either way (tested). Defaults from
the gradient's compiled temp memory for TPU v5e (libtpu AOT, d 128, 6 layers, 16 x 128 tokens,
n = m = 4; results/bench/connections.md): HC 235 -> 137 MiB and mHC 271 -> 194 MiB with
recompute (default True); FC 165 -> 180 MiB (its state is only d wide, nothing to save: default
False). XLA:CPU's buffer assignment does not show the saving (its temp total barely moves).

**Precision.** Coefficients, their norms and the mixing/writing einsums run in float32 with
``Precision.HIGHEST``; ``read`` returns h and ``write`` returns H in the input dtype.

**Defaults for the papers' open ([I]) items:**
* HC/FC coefficient norm: ``coeff_norm="layernorm"`` (HC App. J pseudocode) with a learnable gain
  (init 1, no bias); "rmsnorm" and "none" available. eps from the caller (LM: ``norm_eps``).
* Optimizer labels: width-connection parameters (what the branch reads and how streams mix:
  HC/FC Alpha and its dynamic W, s_alpha, coefficient-norm gains; mHC pre/res) have
  ``lr_group="connection_width"``, depth-connection parameters (how the branch output is written:
  beta, its W, s_beta; mHC post) ``lr_group="connection_depth"``, so HC Table 3's frozen-WC /
  frozen-B ablations are ``train.lr_multipliers={"connection_width": 0.0}``. Static parts
  (HC/FC Alpha and beta, mHC b_pre/b_post/b_res) and coefficient-norm gains have no weight
  decay; dynamic projections (W, phi) and the scalar scales (s_alpha, s_beta, mHC a_*) decay.
* Stream reduction before the final norm: sum (HC paper). With identical streams at init the
  sum is n * h_prenorm, so the LM equals pre-norm only up to the final norm's eps (exact for
  eps = 0 or ``reduce_streams(..., "mean")``).
* mHC (init not stated by the paper): phi = 0, a_* = 0.01, b_post = 0 (H_post = 1),
  b_res = ``res_logit_init`` (2.0) * I (Sinkhorn gives 0.71 on the diagonal at n = 4; larger
  values start closer to HC's A_r = I but Sinkhorn converges slowly near a permutation matrix:
  with logit noise of std 0.5, 20 steps leave max row-sum errors of ~1e-3 at 2.0 and ~1e-2 at
  4.0 for n = 4, ~1e-6 at 1.0),
  b_pre = e_(k mod n) (logit 1 on one stream, 0 elsewhere: breaks the stream permutation symmetry
  like HC's A_m). ``pre_init="uniform"`` uses logit(1/n) (n = 1: logit 0): pre-norm equivalent at
  init, but a permutation-symmetric init keeps all streams identical forever (R never learns).
  Sinkhorn runs in the log domain: alternately normalise over destinations and over sources.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from seedjax.nn.params import constant_init, param
from seedjax.validation import check_bool, check_choice, check_int

F32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST
COEFF_NORMS = ("layernorm", "rmsnorm", "none")
REDUCTIONS = ("sum", "mean")
MHC_PRE_INITS = ("onehot", "uniform")
WIDTH, DEPTH = "connection_width", "connection_depth"  # lr groups


class Residual(nnx.Module):
    """Plain residual: x_{l+1} = x_l + F(norm(x_l))."""

    def read(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        return h, h

    def write(self, y: jax.Array, ctx: jax.Array) -> jax.Array:
        return ctx + y.astype(ctx.dtype)


# --------------------------------------------------------------------------- validation helpers

def _array_init(value) -> Any:
    """Initialiser returning a fixed array (key ignored)."""
    return lambda key, shape, dtype: jnp.asarray(value, dtype).reshape(shape)


def _static(value_or_init, shape, axes, group: str = WIDTH) -> nnx.Param:
    init = value_or_init if callable(value_or_init) else _array_init(value_or_init)
    return param(None, init, shape, axes, weight_decay=False, lr_group=group)


def _dynamic(value: float, shape, axes, group: str = WIDTH) -> nnx.Param:
    return param(None, constant_init(value), shape, axes, weight_decay=True, lr_group=group)


# --------------------------------------------------------------------------- stream utilities

def expand_streams(x: jax.Array, n: int) -> jax.Array:
    """HC/mHC expand: x [..., d] -> H [..., n, d] (n identical copies)."""
    n = check_int("expand_streams rate (n)", n, 1)
    return jnp.broadcast_to(x[..., None, :], (*x.shape[:-1], n, x.shape[-1]))


def reduce_streams(H: jax.Array, how: str = "sum") -> jax.Array:
    """HC/mHC reduce (before the final norm): H [..., n, d] -> [..., d], summed in float32."""
    check_choice("reduce_streams reduce", how, REDUCTIONS)
    out = jnp.sum(H.astype(F32), axis=-2)
    if how == "mean":
        out = out / H.shape[-2]
    return out.astype(H.dtype)


def split_fracs(x: jax.Array, m: int) -> jax.Array:
    """FC expand: x [..., d] -> H [..., m, d/m] (contiguous fractions)."""
    m = check_int("split_fracs rate (m)", m, 1)
    if x.shape[-1] % m:
        raise ValueError(f"FracConnection rate (m)={m} must divide the width d={x.shape[-1]}")
    return x.reshape(*x.shape[:-1], m, x.shape[-1] // m)


def merge_fracs(H: jax.Array) -> jax.Array:
    """FC reduce: H [..., m, d/m] -> [..., d]."""
    return H.reshape(*H.shape[:-2], H.shape[-2] * H.shape[-1])


# --------------------------------------------------------------------------- shared math

class ConnectionContext(NamedTuple):
    """What ``read`` hands to ``write``: mixed residual rows (f32), write weights (f32) and the
    dtype of the state."""
    res: jax.Array    # [..., n, w] float32
    beta: jax.Array   # [..., n] (or [n]) float32
    dtype: Any


def width_connection(H: jax.Array, alpha: jax.Array, n_read: int) -> tuple[jax.Array, jax.Array]:
    """Mix = alpha^T H over the stream axis, in float32.

    H [..., n, w]; alpha [..., n, n_read + n] (or [n, n_read + n]) as [source, destination].
    Returns (read rows [..., n_read, w], mixed residual rows [..., n, w]), both float32.
    """
    mix = jnp.einsum("...sj,...sw->...jw", alpha.astype(F32), H.astype(F32), precision=HIGHEST)
    return mix[..., :n_read, :], mix[..., n_read:, :]


def depth_connection(y_rows: jax.Array, res: jax.Array, beta: jax.Array) -> jax.Array:
    """H_new = res + beta * y in float32. y_rows [..., 1 or n, w] (HC broadcasts one output to
    every stream; FC passes the output's fractions), res [..., n, w], beta [..., n]."""
    return res + beta.astype(F32)[..., None] * y_rows.astype(F32)


def _coeff_norm(x: jax.Array, kind: str, gain: jax.Array | None, eps: float) -> jax.Array:
    """Per-row norm over the last axis (feeds only the coefficient predictors)."""
    if kind == "none":
        return x
    if kind == "layernorm":
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return x * gain


def _scales(init: float, rescale: bool):
    """(s_alpha, s_beta) scalars of the dynamic terms, or (None, None) without rescale."""
    if not rescale:
        return None, None
    return _dynamic(init, (), ()), _dynamic(init, (), (), DEPTH)


def _values(mod, names: tuple[str, ...]) -> dict:
    """{name: array or None} of a module's parameters (inputs of the jitted kernels below)."""
    return {k: None if getattr(mod, k) is None else getattr(mod, k)[...] for k in names}


_HC_PARAMS = ("static_alpha", "static_beta", "dynamic_alpha", "dynamic_beta", "scale_alpha",
              "scale_beta", "norm_scale")
_MHC_PARAMS = ("bias_pre", "bias_post", "bias_res", "phi", "scale_pre", "scale_post", "scale_res")

# The kernels below are jitted so eager callers run one compiled computation per shape instead
# of dozens of single-op dispatches; inside an outer jit they are inlined.


@functools.partial(jax.jit, static_argnames=("kind", "use_tanh", "eps"))
def _hc_coefficients(H: jax.Array, p: dict, *, kind: str, use_tanh: bool, eps: float):
    """Static (+ dynamic) HC/FC coefficients; each row of H predicts its own coefficient row."""
    alpha, beta = p["static_alpha"], p["static_beta"]
    if p["dynamic_alpha"] is None:
        return alpha, beta
    hn = _coeff_norm(H.astype(F32), kind, p["norm_scale"], eps)
    da = jnp.einsum("...sd,dj->...sj", hn, p["dynamic_alpha"], precision=HIGHEST)
    db = jnp.einsum("...sd,d->...s", hn, p["dynamic_beta"], precision=HIGHEST)
    if use_tanh:
        da, db = jnp.tanh(da), jnp.tanh(db)
    if p["scale_alpha"] is None:  # rescale=False: the dynamic terms enter unscaled
        return alpha + da, beta + db
    return alpha + p["scale_alpha"] * da, beta + p["scale_beta"] * db


@functools.partial(jax.jit, static_argnames=("n_read", "kind", "use_tanh", "eps"))
def _hc_read(H: jax.Array, p: dict, *, n_read: int, kind: str, use_tanh: bool, eps: float):
    alpha, beta = _hc_coefficients(H, p, kind=kind, use_tanh=use_tanh, eps=eps)
    rows, res = width_connection(H, alpha, n_read)
    return rows.astype(H.dtype), res, beta


@functools.partial(jax.jit, static_argnames=("dtype",))
def _write(y_rows: jax.Array, res: jax.Array, beta: jax.Array, dtype) -> jax.Array:
    return depth_connection(y_rows, res, beta).astype(dtype)


@functools.partial(jax.jit, static_argnames=("iters", "eps"))
def _mhc_coefficients(H: jax.Array, p: dict, *, iters: int, eps: float):
    n, d = H.shape[-2:]
    pre, post, res = p["bias_pre"], p["bias_post"], p["bias_res"]
    if p["phi"] is not None:
        flat = H.astype(F32).reshape(*H.shape[:-2], n * d)
        flat = flat * jax.lax.rsqrt(jnp.mean(flat * flat, axis=-1, keepdims=True) + eps)
        z = jnp.einsum("...c,cj->...j", flat, p["phi"], precision=HIGHEST)
        pre = pre + p["scale_pre"] * z[..., :n]
        post = post + p["scale_post"] * z[..., n:2 * n]
        res = res + p["scale_res"] * z[..., 2 * n:].reshape(*z.shape[:-1], n, n)
    return jax.nn.sigmoid(pre), 2.0 * jax.nn.sigmoid(post), _sinkhorn(res, iters)


@functools.partial(jax.jit, static_argnames=("iters", "eps"))
def _mhc_read(H: jax.Array, p: dict, *, iters: int, eps: float):
    pre, post, res = _mhc_coefficients(H, p, iters=iters, eps=eps)
    alpha = jnp.concatenate([jnp.broadcast_to(pre[..., None], res.shape[:-1] + (1,)), res], -1)
    rows, mixed = width_connection(H, alpha, 1)
    return rows[..., 0, :].astype(H.dtype), mixed, post


def sinkhorn(logits: jax.Array, iters: int = 20) -> jax.Array:
    """Sinkhorn-Knopp projection of exp(logits) [..., n, n] ([source, destination]) onto the
    doubly stochastic matrices, in float32 and the log domain. Each of ``iters`` steps normalises
    over destinations (each source's outgoing weights sum to 1), then over sources (each
    destination's incoming weights sum to 1; exact after the last step)."""
    return _sinkhorn(logits, check_int("sinkhorn sinkhorn_iters", iters, 1))


@functools.partial(jax.jit, static_argnames=("iters",))  # one compiled loop per shape, also eagerly
def _sinkhorn(logits: jax.Array, iters: int) -> jax.Array:
    log_p = logits.astype(F32)

    def step(_, lp):
        lp = lp - jax.nn.logsumexp(lp, axis=-1, keepdims=True)
        return lp - jax.nn.logsumexp(lp, axis=-2, keepdims=True)

    return jnp.exp(jax.lax.fori_loop(0, iters, step, log_p))


def _read_fn(fn, recompute: bool, **static):
    """``fn(H, params, **static)``, under ``jax.checkpoint`` when ``recompute``."""
    f = functools.partial(fn, **static)
    return jax.checkpoint(f) if recompute else f


def _check_state(owner: str, H: jax.Array, rows: int, width: int) -> None:
    if H.ndim < 2 or H.shape[-2:] != (rows, width):
        raise ValueError(f"{owner} expects a state [..., {rows}, {width}], got shape {H.shape}; "
                         "build it with the matching expand function")


# --------------------------------------------------------------------------- Hyper-Connections

class HyperConnection(nnx.Module):
    """Static or dynamic Hyper-Connection around one sublayer (see the module docstring).

    Args: ``dim`` d; ``rate`` n >= 1; ``sublayer_idx`` k (only sets the init value of A_m, so
    all sublayers are structurally identical); ``dynamic``; ``use_tanh`` (dynamic only);
    ``coeff_norm`` in ("layernorm", "rmsnorm", "none"); ``scale_init`` s_alpha = s_beta init;
    ``rescale`` (dynamic only): learn s_alpha, s_beta (False: the dynamic terms enter with
    weight 1, FC's "w/o rescale" ablation); ``eps`` of the coefficient norm.
    Parameters: ``static_alpha`` [n, n+1] = [A_m | A_r], ``static_beta`` [n]; dynamic:
    ``dynamic_alpha`` [d, n+1], ``dynamic_beta`` [d], ``scale_alpha`` [], ``scale_beta`` [],
    ``norm_scale`` [d]. With n = 1, static and the default init it is exactly ``Residual``.
    """

    def __init__(self, dim: int, rate: int = 4, *, sublayer_idx: int = 0, dynamic: bool = True,
                 use_tanh: bool = True, coeff_norm: str = "layernorm", scale_init: float = 0.01,
                 rescale: bool = True, eps: float = 1e-6, recompute: bool = True,
                 rngs: nnx.Rngs | None = None):
        owner = "HyperConnection"
        self.recompute = check_bool(f"{owner} recompute", recompute)
        d = check_int(f"{owner} dim", dim, 1)
        n = check_int(f"{owner} rate (expansion rate n)", rate, 1)
        k = check_int(f"{owner} sublayer_idx", sublayer_idx, 0)
        check_choice(f"{owner} coeff_norm", coeff_norm, COEFF_NORMS)
        self.dim, self.rate, self.dynamic, self.use_tanh = d, n, bool(dynamic), bool(use_tanh)
        self.coeff_norm, self.eps = coeff_norm, float(eps)
        alpha0 = np.zeros((n, n + 1), np.float32)
        alpha0[k % n, 0] = 1.0                       # A_m = e_(k mod n)
        alpha0[:, 1:] = np.eye(n, dtype=np.float32)  # A_r = I
        self.static_alpha = _static(alpha0, (n, n + 1), ("hc_streams", "hc_coeff"))
        self.static_beta = _static(constant_init(1.0), (n,), ("hc_streams",), DEPTH)
        if self.dynamic:
            self.dynamic_alpha = _dynamic(0.0, (d, n + 1), ("hc_dim", "hc_coeff"))
            self.dynamic_beta = _dynamic(0.0, (d,), ("hc_dim",), DEPTH)
            self.scale_alpha, self.scale_beta = _scales(scale_init, rescale)
            self.norm_scale = (None if coeff_norm == "none"
                               else _static(constant_init(1.0), (d,), ("hc_dim",)))
        else:
            self.dynamic_alpha = self.dynamic_beta = None
            self.scale_alpha = self.scale_beta = self.norm_scale = None

    def _kw(self) -> dict:
        return dict(kind=self.coeff_norm, use_tanh=self.use_tanh, eps=self.eps)

    def coefficients(self, H: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(Alpha [..., n, n+1] = [A_m | A_r] as [source, destination], beta [..., n]) in float32.
        Static: unbatched [n, n+1] and [n]."""
        return _hc_coefficients(H, _values(self, _HC_PARAMS), **self._kw())

    def read(self, H: jax.Array) -> tuple[jax.Array, ConnectionContext]:
        """H [..., n, d] -> (h [..., d] in H.dtype, context)."""
        _check_state("HyperConnection", H, self.rate, self.dim)
        rows, res, beta = _read_fn(_hc_read, self.recompute, n_read=1, **self._kw())(
            H, _values(self, _HC_PARAMS))
        return rows[..., 0, :], ConnectionContext(res, beta, H.dtype)

    def write(self, y: jax.Array, ctx: ConnectionContext) -> jax.Array:
        """y [..., d] -> H_new [..., n, d] in the state dtype."""
        return _write(y[..., None, :], ctx.res, ctx.beta, ctx.dtype)


# --------------------------------------------------------------------------- Frac-Connections

class FracConnection(nnx.Module):
    """Static or dynamic Frac-Connection around one sublayer (see the module docstring).

    Args: ``dim`` d; ``rate`` m >= 1 dividing d; ``dynamic``; ``use_tanh``; ``coeff_norm``;
    ``scale_init``; ``rescale`` (as for HyperConnection); ``eps``. Parameters: ``static_alpha`` [m, 2m] = [Y | A],
    ``static_beta`` [m]; dynamic: ``dynamic_alpha`` [d/m, 2m], ``dynamic_beta`` [d/m],
    ``scale_alpha`` [], ``scale_beta`` [], ``norm_scale`` [d/m]. Init Y = A = I, beta = 1:
    exactly the pre-norm residual for every m. ``sublayer_idx`` is accepted and unused.
    """

    def __init__(self, dim: int, rate: int = 4, *, sublayer_idx: int = 0, dynamic: bool = True,
                 use_tanh: bool = True, coeff_norm: str = "layernorm", scale_init: float = 0.01,
                 rescale: bool = True, eps: float = 1e-6, recompute: bool = False,
                 rngs: nnx.Rngs | None = None):
        owner = "FracConnection"
        self.recompute = check_bool(f"{owner} recompute", recompute)
        d = check_int(f"{owner} dim", dim, 1)
        m = check_int(f"{owner} rate (frac rate m)", rate, 1)
        check_int(f"{owner} sublayer_idx", sublayer_idx, 0)
        if d % m:
            raise ValueError(f"{owner} rate (frac rate m)={m} must divide dim (width d)={d}")
        check_choice(f"{owner} coeff_norm", coeff_norm, COEFF_NORMS)
        f = d // m
        self.dim, self.rate, self.dynamic, self.use_tanh = d, m, bool(dynamic), bool(use_tanh)
        self.coeff_norm, self.eps = coeff_norm, float(eps)
        eye = np.eye(m, dtype=np.float32)
        self.static_alpha = _static(np.concatenate([eye, eye], 1), (m, 2 * m),
                                    ("fc_fracs", "fc_coeff"))
        self.static_beta = _static(constant_init(1.0), (m,), ("fc_fracs",), DEPTH)
        if self.dynamic:
            self.dynamic_alpha = _dynamic(0.0, (f, 2 * m), ("fc_dim", "fc_coeff"))
            self.dynamic_beta = _dynamic(0.0, (f,), ("fc_dim",), DEPTH)
            self.scale_alpha, self.scale_beta = _scales(scale_init, rescale)
            self.norm_scale = (None if coeff_norm == "none"
                               else _static(constant_init(1.0), (f,), ("fc_dim",)))
        else:
            self.dynamic_alpha = self.dynamic_beta = None
            self.scale_alpha = self.scale_beta = self.norm_scale = None

    _kw = HyperConnection._kw

    def coefficients(self, H: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(Alpha [..., m, 2m] = [Y | A] as [source, destination], beta [..., m]) in float32."""
        return _hc_coefficients(H, _values(self, _HC_PARAMS), **self._kw())

    def read(self, H: jax.Array) -> tuple[jax.Array, ConnectionContext]:
        """H [..., m, d/m] -> (h [..., d] in H.dtype, context)."""
        m = self.rate
        _check_state("FracConnection", H, m, self.dim // m)
        rows, res, beta = _read_fn(_hc_read, self.recompute, n_read=m, **self._kw())(
            H, _values(self, _HC_PARAMS))
        return merge_fracs(rows), ConnectionContext(res, beta, H.dtype)

    def write(self, y: jax.Array, ctx: ConnectionContext) -> jax.Array:
        """y [..., d] -> H_new [..., m, d/m]: fraction i of y is scaled by beta_i."""
        return _write(split_fracs(y, self.rate), ctx.res, ctx.beta, ctx.dtype)


# --------------------------------------------------------------------------- mHC

class ManifoldHyperConnection(nnx.Module):
    """mHC: HC with sigmoid read/write weights and a Sinkhorn-projected (doubly stochastic)
    residual mixing matrix (see the module docstring for the equations and init defaults).

    Args: ``dim`` d; ``rate`` n >= 1; ``sublayer_idx`` k (init of b_pre only); ``dynamic``
    (False: coefficients from the biases only); ``sinkhorn_iters`` >= 1 (20); ``scale_init``
    (a_pre = a_post = a_res, 0.01); ``res_logit_init`` (b_res = value * I); ``pre_init`` in
    ("onehot", "uniform"); ``eps`` of the flattened RMSNorm.
    Parameters: ``bias_pre`` [n], ``bias_post`` [n], ``bias_res`` [n, n] ([source, destination]);
    dynamic: ``phi`` [n*d, 2n + n^2] (columns: pre | post | res row-major), ``scale_pre``,
    ``scale_post``, ``scale_res`` [].
    """

    def __init__(self, dim: int, rate: int = 4, *, sublayer_idx: int = 0, dynamic: bool = True,
                 sinkhorn_iters: int = 20, scale_init: float = 0.01, res_logit_init: float = 2.0,
                 pre_init: str = "onehot", eps: float = 1e-6, recompute: bool = True,
                 rngs: nnx.Rngs | None = None):
        owner = "ManifoldHyperConnection"
        self.recompute = check_bool(f"{owner} recompute", recompute)
        d = check_int(f"{owner} dim", dim, 1)
        n = check_int(f"{owner} rate (expansion rate n)", rate, 1)
        k = check_int(f"{owner} sublayer_idx", sublayer_idx, 0)
        self.sinkhorn_iters = check_int(f"{owner} sinkhorn_iters", sinkhorn_iters, 1)
        check_choice(f"{owner} pre_init", pre_init, MHC_PRE_INITS)
        self.dim, self.rate, self.dynamic, self.eps = d, n, bool(dynamic), float(eps)
        if pre_init == "onehot":
            pre0 = np.zeros((n,), np.float32)
            pre0[k % n] = 1.0
        else:
            pre0 = np.full((n,), -math.log(n - 1) if n > 1 else 0.0, np.float32)  # logit(1/n)
        self.bias_pre = _static(pre0, (n,), ("hc_streams",))
        self.bias_post = _static(constant_init(0.0), (n,), ("hc_streams",), DEPTH)
        self.bias_res = _static(res_logit_init * np.eye(n, dtype=np.float32), (n, n),
                                ("hc_streams", "hc_streams_out"))
        if self.dynamic:
            self.phi = _dynamic(0.0, (n * d, n * n + 2 * n), ("hc_flat", "hc_coeff"))
            self.scale_pre = _dynamic(scale_init, (), ())
            self.scale_post = _dynamic(scale_init, (), (), DEPTH)
            self.scale_res = _dynamic(scale_init, (), ())
        else:
            self.phi = self.scale_pre = self.scale_post = self.scale_res = None

    def coefficients(self, H: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(H_pre [..., n], H_post [..., n], R [..., n, n] doubly stochastic, [source, dest.]),
        float32. Static: unbatched."""
        return _mhc_coefficients(H, _values(self, _MHC_PARAMS), iters=self.sinkhorn_iters,
                                 eps=self.eps)

    def mixing_matrix(self, H: jax.Array) -> jax.Array:
        """The Sinkhorn-normalised residual mixing matrix R [..., n, n] ([source, destination])."""
        return self.coefficients(H)[2]

    def read(self, H: jax.Array) -> tuple[jax.Array, ConnectionContext]:
        """H [..., n, d] -> (h [..., d] in H.dtype, context)."""
        _check_state("ManifoldHyperConnection", H, self.rate, self.dim)
        h, mixed, post = _read_fn(_mhc_read, self.recompute, iters=self.sinkhorn_iters,
                                  eps=self.eps)(H, _values(self, _MHC_PARAMS))
        return h, ConnectionContext(mixed, post, H.dtype)

    def write(self, y: jax.Array, ctx: ConnectionContext) -> jax.Array:
        """y [..., d] -> H_new [..., n, d] in the state dtype."""
        return _write(y[..., None, :], ctx.res, ctx.beta, ctx.dtype)
