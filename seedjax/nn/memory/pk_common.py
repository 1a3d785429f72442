"""Pieces shared by the product-key layers (PKM ``product_key.py``, PEER ``peer.py``, Memory+
``memory_plus.py``): config checks, the per-head query (+ optional LayerNorm) and sub-key
parameters, and the exact product-key top-k through ``seedjax.ops.product_key_topk``.

``ProductKeyRetrieval`` is a method-only base class: a subclass calls ``_init_retrieval`` in its
``__init__`` and gets ``query`` / ``retrieve``. It reads the config fields d_model, heads, k_dim,
topk, topk_side, norm_eps, implementation and, where present, query_norm ("layernorm" adds the
per-head LayerNorm), query_init_std and qk_norm. Parameters (logical axes; optimizer labels):

    w_query      [d_model, H*Dk]       ("embed", "mem_query")
    b_query      [H*Dk]                ("mem_query",)       weight_decay=False; query_bias=True
    query_scale, query_bias [H*Dk]     ("mem_query",)       weight_decay=False; LayerNorm only
    sub_keys     [H, 2, n, Dk/2]       ("mem_heads", None, "mem_keys", "mem_kdim")

Shapes: ``query(x [..., d_model])`` -> [..., H, Dk] (float32 or wider); ``retrieve(x)`` ->
(raw scores [..., H, k] float32, slot indices [..., H, k] int32 in [0, n^2)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from seedjax.nn.linear import project
from seedjax.nn.params import constant_init, normal_init, param
from seedjax.ops import IMPLEMENTATIONS, product_key_topk
from seedjax.validation import check_int

QUERY_NORMS = ("layernorm", "none")
_INT32_MAX = 2**31 - 1


def uniform_init(bound: float):
    """U(-bound, bound) initialiser."""
    return lambda key, shape, dtype: jax.random.uniform(key, shape, dtype, -bound, bound)


def positive_float_or_none(owner: str, name: str, value) -> None:
    """ValueError unless ``value`` is None or a number > 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{owner}.{name}={value!r} must be a positive number or None")


def check_k_dim_and_keys(owner: str, k_dim: int, n_keys: int) -> None:
    """Dk must be even (two half-queries) and n_keys**2 slots must fit int32 indices."""
    if k_dim % 2:
        raise ValueError(f"{owner}.k_dim={k_dim} must be even (it is split into two "
                         "half-queries of k_dim/2)")
    if n_keys * n_keys > _INT32_MAX:
        raise ValueError(f"{owner}.n_keys={n_keys} gives more slots than int32 "
                         "indices can address (n_keys <= 46340)")


def check_query_norm(owner: str, value) -> None:
    """One of QUERY_NORMS; a BatchNorm request is told why it is not offered."""
    if value not in QUERY_NORMS:
        hint = (" (BatchNorm is not offered: its batch statistics leak future tokens in a "
                "causal LM)" if "batch" in str(value).lower() else "")
        raise ValueError(f"{owner}.query_norm={value!r} is not one of {QUERY_NORMS}{hint}")


def check_implementation_field(owner: str, value) -> None:
    if value not in IMPLEMENTATIONS:
        raise ValueError(f"{owner}.implementation={value!r} is not one of {IMPLEMENTATIONS}")


class ExactTopkFields:
    """Mixin of the PEER / Memory+ config dataclasses (fields n_keys, topk): the slot count and
    the per-side candidate count min(topk, n_keys), which keeps the product-key top-k exact."""

    @property
    def n_slots(self) -> int:
        return self.n_keys * self.n_keys

    @property
    def topk_side(self) -> int:
        return min(self.topk, self.n_keys)


def check_exact_topk(c, owner: str) -> None:
    """Shared checks of PEER / Memory+ configs (exact top-k: topk_side = min(topk, n_keys))."""
    for name in ("d_model", "n_keys", "heads", "k_dim", "topk"):
        check_int(f"{owner}.{name}", getattr(c, name))
    check_k_dim_and_keys(owner, c.k_dim, c.n_keys)
    if c.topk > c.n_keys ** 2:
        raise ValueError(f"{owner}.topk={c.topk} must be <= n_keys**2={c.n_keys ** 2}")
    positive_float_or_none(owner, "norm_eps", c.norm_eps)
    check_implementation_field(owner, c.implementation)


def retrieval_flops(c) -> dict[str, int]:
    """Query projection 2 d H Dk and sub-key scores 2 H n Dk (both sides) per token."""
    return {"mem_query": 2 * c.d_model * c.heads * c.k_dim,
            "mem_keys": 2 * c.heads * c.n_keys * c.k_dim}


def _l2_normalize(x: jax.Array, eps: float) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


class ProductKeyRetrieval(nnx.Module):
    """Per-head query + exact product-key top-k (see the module docstring)."""

    def _init_retrieval(self, c, rngs: nnx.Rngs, *, query_init=None, key_bound=None,
                        query_bias: bool = False) -> None:
        """Creates w_query, [b_query], [query_scale, query_bias], sub_keys (in this order).
        Defaults (PKM reference code): W_q ~ N(0, std^2) with std = ``c.query_init_std`` or
        d_model**-0.5; sub-keys ~ U(+-1/sqrt(Dk/2)); the LayerNorm when
        ``c.query_norm == "layernorm"`` (configs without that field have none)."""
        if query_init is None:
            std = getattr(c, "query_init_std", None)
            query_init = normal_init(std if std is not None else c.d_model ** -0.5)
        key_bound = (c.k_dim // 2) ** -0.5 if key_bound is None else key_bound
        layernorm = getattr(c, "query_norm", "none") == "layernorm"
        hq = c.heads * c.k_dim
        self.w_query = param(rngs, query_init, (c.d_model, hq), ("embed", "mem_query"))
        if query_bias:
            self.b_query = param(None, constant_init(0.0), (hq,), ("mem_query",),
                                 weight_decay=False)
        if layernorm:
            self.query_scale = param(None, constant_init(1.0), (hq,), ("mem_query",),
                                     weight_decay=False)
            self.query_bias = param(None, constant_init(0.0), (hq,), ("mem_query",),
                                    weight_decay=False)
        else:
            self.query_scale = self.query_bias = None
        half = c.k_dim // 2
        self.sub_keys = param(rngs, uniform_init(key_bound), (c.heads, 2, c.n_keys, half),
                              ("mem_heads", None, "mem_keys", "mem_kdim"))

    def query(self, x: jax.Array) -> jax.Array:
        """x [..., d_model] -> (normalised) queries [..., H, Dk] (float32 or wider)."""
        c, dt = self.config, self.dtype
        if x.shape[-1] != c.d_model:
            raise ValueError(f"{type(self).__name__} input last dim {x.shape[-1]} != d_model="
                             f"{c.d_model}")
        q = project(x.astype(dt), self.w_query[...].astype(dt))
        q = q.astype(jnp.promote_types(q.dtype, jnp.float32))
        if getattr(self, "b_query", None) is not None:
            q = q + self.b_query[...].astype(q.dtype)
        q = q.reshape(*q.shape[:-1], c.heads, c.k_dim)
        if self.query_scale is not None:
            mean = jnp.mean(q, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(q - mean), axis=-1, keepdims=True)
            q = (q - mean) * jax.lax.rsqrt(var + c.norm_eps)
            q = q * self.query_scale[...].reshape(c.heads, c.k_dim).astype(q.dtype)
            q = q + self.query_bias[...].reshape(c.heads, c.k_dim).astype(q.dtype)
        return q

    def retrieve(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x [..., d_model] -> (raw scores [..., H, k] float32, indices [..., H, k] int32).
        With ``qk_norm`` each half-query and each sub-key is L2-normalised first."""
        c = self.config
        q = self.query(x)
        half = c.k_dim // 2
        keys = self.sub_keys[...].astype(q.dtype)
        q1, q2, k1, k2 = q[..., :half], q[..., half:], keys[:, 0], keys[:, 1]
        if getattr(c, "qk_norm", False):
            q1, q2, k1, k2 = (_l2_normalize(t, c.norm_eps) for t in (q1, q2, k1, k2))
        return product_key_topk(q1, q2, k1, k2, topk_side=c.topk_side, topk=c.topk,
                                implementation=c.implementation)


def flat_heads(scores: jax.Array, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[..., H, k] scores and indices -> per-head softmax weights and indices, both [..., H*k]
    (one bag per token over every head's selection)."""
    lead = indices.shape[:-2]
    weights = jax.nn.softmax(scores, axis=-1)
    return weights.reshape(*lead, -1), indices.reshape(*lead, -1)
