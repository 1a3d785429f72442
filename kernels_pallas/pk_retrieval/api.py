"""Public entry points: ``product_key_topk`` (PKM) and ``tucker_topk`` (TDQKR + MCS), with an
``implementation=`` switch and a custom VJP around the kernels.

implementation:
  None          by ``jax.default_backend()``: "tpu" -> "pallas_tpu"; "gpu" and "cpu" -> "xla"
                (the Triton kernel is opt-in until it is timed on a GPU, see gpu.py)
  "xla"         reference.py (lax.top_k; differentiated by JAX through the top-k gathers)
  "pallas_tpu"  tpu.py (Mosaic)      "pallas_gpu"  gpu.py (Triton)
  "interpret"   tpu.py under ``interpret=True`` (any backend; for tests)

Kernels are forward-only; their VJP recomputes the selected scores from the returned indices
with plain JAX (``reference.pk_rescore`` / ``tucker_rescore``: gather the selected sub-key
rows, dot with the queries, rebuild the bilinear forms), which gives the reference's gradients
w.r.t. queries, keys and cores. The pre-selection vectors (u, t) get zero gradient, as in the
reference (they are stop-gradient there).

Under a device mesh, wrap calls in ``jax.shard_map`` (Mosaic kernels are not auto-partitioned):
tokens may be sharded freely, keys and cores must be replicated over the token axes.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from kernels_pallas.pk_retrieval import config as _config
from kernels_pallas.pk_retrieval import reference

IMPLEMENTATIONS = ("xla", "pallas_tpu", "pallas_gpu", "interpret")
PRESELECT = ("top", "abs")
_INT32_MAX = 2**31 - 1
_KERNEL_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16), jnp.dtype(jnp.float32))


def resolve_implementation(fn: str, implementation: str | None) -> str:
    """The implementation a call runs (None -> chosen by ``jax.default_backend()``)."""
    if implementation is None:
        return "pallas_tpu" if jax.default_backend() == "tpu" else "xla"
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"{fn}: implementation={implementation!r} is unknown; allowed: None or "
                         f"{IMPLEMENTATIONS}")
    return implementation


def _check_int(fn, name, v):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{fn}: {name}={v!r} must be a positive integer")


def _check_topk(fn, n, topk_side, topk):
    _check_int(fn, "topk_side", topk_side)
    _check_int(fn, "topk", topk)
    if n * n > _INT32_MAX:
        raise ValueError(f"{fn}: n={n} sub-keys per side give {n * n} slots, more than int32 "
                         "indices can address")
    if topk_side > n:
        raise ValueError(f"{fn}: topk_side={topk_side} exceeds the sub-keys per side n={n}")
    if topk > topk_side * topk_side:
        raise ValueError(f"{fn}: topk={topk} exceeds the candidate grid topk_side**2="
                         f"{topk_side * topk_side}")


def _check_dtypes(fn, impl, named):
    for name, x in named:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{fn}: {name} has dtype {x.dtype}; a floating dtype is required")
        if impl != "xla" and jnp.dtype(x.dtype) not in _KERNEL_DTYPES:
            raise ValueError(f"{fn}: {name} has dtype {x.dtype}; implementation={impl!r} accepts "
                             f"bfloat16, float16 or float32 (use implementation='xla')")


def _check_tiles(fn, impl, tiles):
    if tiles is None or impl == "xla":
        return
    want = _config.GpuTiles if impl == "pallas_gpu" else _config.TpuTiles
    if not isinstance(tiles, want):
        raise ValueError(f"{fn}: tiles={tiles!r} must be a {want.__name__} for "
                         f"implementation={impl!r}")


def _forward_fn(impl, tpu_fn, gpu_fn, tiles, **static):
    if impl == "pallas_gpu":
        return functools.partial(gpu_fn, tiles=tiles, **static)
    return functools.partial(tpu_fn, tiles=tiles, interpret=impl == "interpret", **static)


# ----------------------------------------------------------------------------------------- PKM

@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pk_diff(q1, q2, k1, k2, forward):
    return forward(q1, q2, k1, k2)


def _pk_fwd(q1, q2, k1, k2, forward):
    scores, indices = forward(q1, q2, k1, k2)
    return (scores, indices), (q1, q2, k1, k2, indices)


def _pk_bwd(forward, res, g):
    q1, q2, k1, k2, indices = res
    _, vjp = jax.vjp(lambda *a: reference.pk_rescore(*a, indices), q1, q2, k1, k2)
    return vjp(g[0])


_pk_diff.defvjp(_pk_fwd, _pk_bwd)


def product_key_topk(q1, q2, k1, k2, *, topk_side: int, topk: int,
                     implementation: str | None = None, tiles=None):
    """PKM retrieval: top-``topk`` of the n^2 product keys of each head (exact when
    topk <= topk_side or topk_side == n; otherwise the top of the k_s x k_s candidate grid).

    q1, q2 [..., H, d] (half-queries); k1, k2 [H, n, d] (sub-keys) ->
    (scores [..., H, topk] float32 (float64 under x64 with "xla") descending,
     indices [..., H, topk] int32 = i1 * n + i2). Ties go to the lowest sub-key index per side
    and to the lexicographically smallest rank pair in the grid (``lax.top_k``'s rule).
    ``tiles``: a config.TpuTiles / GpuTiles override (default: per chip, config.py).
    """
    fn = "product_key_topk"
    impl = resolve_implementation(fn, implementation)
    if q1.shape != q2.shape:
        raise ValueError(f"{fn}: q1 shape {q1.shape} != q2 shape {q2.shape}")
    if k1.shape != k2.shape:
        raise ValueError(f"{fn}: k1 shape {k1.shape} != k2 shape {k2.shape}")
    if k1.ndim != 3:
        raise ValueError(f"{fn}: sub-keys must be [H, n, d], got shape {k1.shape}")
    heads, n, d = k1.shape
    if q1.ndim < 2 or q1.shape[-2:] != (heads, d):
        raise ValueError(f"{fn}: half-queries must be [..., H, d] = [..., {heads}, {d}], got "
                         f"shape {q1.shape}")
    _check_topk(fn, n, topk_side, topk)
    _check_dtypes(fn, impl, (("q1", q1), ("q2", q2), ("k1", k1), ("k2", k2)))
    _check_tiles(fn, impl, tiles)
    if impl == "xla":
        return reference.product_key_topk_reference(q1, q2, k1, k2, topk_side=topk_side,
                                                    topk=topk)
    from kernels_pallas.pk_retrieval import gpu, tpu
    forward = _forward_fn(impl, tpu.product_key_topk_tpu, gpu.product_key_topk_gpu, tiles,
                          topk_side=topk_side, topk=topk)
    return _pk_diff(q1, q2, k1, k2, forward)


# --------------------------------------------------------------------------------------- TDQKR

@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _tucker_diff(q_row, q_col, k_row, k_col, cores, u, t, forward):
    return forward(q_row, q_col, k_row, k_col, cores, u, t)


def _tucker_fwd(q_row, q_col, k_row, k_col, cores, u, t, forward):
    scores, indices = forward(q_row, q_col, k_row, k_col, cores, u, t)
    return (scores, indices), (q_row, q_col, k_row, k_col, cores, u, t, indices)


def _tucker_bwd(forward, res, g):
    q_row, q_col, k_row, k_col, cores, u, t, indices = res
    _, vjp = jax.vjp(lambda *a: reference.tucker_rescore(*a, indices),
                     q_row, q_col, k_row, k_col, cores)
    return (*vjp(g[0]), jnp.zeros_like(u), jnp.zeros_like(t))


_tucker_diff.defvjp(_tucker_fwd, _tucker_bwd)


def tucker_topk(q_row, q_col, k_row, k_col, cores, *, topk_side: int, topk: int,
                rank1=None, preselect: str = "top", implementation: str | None = None,
                tiles=None):
    """TDQKR retrieval with Multi-Core Scoring (UltraMem / UltraMemV2).

    q_row, q_col [..., H, r, Dk]; k_row, k_col [H, n, r, Dk]; cores [h_c, H, r, r];
    rank1 = (u, t) [H, r] pre-selection vectors (default ``reference.tucker_rank1(cores)``);
    preselect "top" (papers) or "abs" (rank rows/columns by |S u|) ->
    (scores [..., H, topk, h_c] float32 per core, ordered by descending summed score,
     indices [..., H, topk] int32 = row * n + col). Ties as in ``product_key_topk``.
    """
    fn = "tucker_topk"
    impl = resolve_implementation(fn, implementation)
    for a, b, what in ((q_row, q_col, "queries"), (k_row, k_col, "keys")):
        if a.shape != b.shape:
            raise ValueError(f"{fn}: row and column {what} differ in shape: {a.shape} vs "
                             f"{b.shape}")
    if k_row.ndim != 4:
        raise ValueError(f"{fn}: keys must be [H, n, r, Dk], got shape {k_row.shape}")
    heads, n, rank, dk = k_row.shape
    if q_row.ndim < 3 or q_row.shape[-3:] != (heads, rank, dk):
        raise ValueError(f"{fn}: queries must be [..., H, r, Dk] = [..., {heads}, {rank}, {dk}], "
                         f"got shape {q_row.shape}")
    if cores.ndim != 4 or cores.shape[1:] != (heads, rank, rank):
        raise ValueError(f"{fn}: cores must be [h_c, H, r, r] = [h_c, {heads}, {rank}, {rank}], "
                         f"got shape {cores.shape}")
    _check_topk(fn, n, topk_side, topk)
    if preselect not in PRESELECT:
        raise ValueError(f"{fn}: preselect={preselect!r} is not one of {PRESELECT}")
    _check_dtypes(fn, impl, (("q_row", q_row), ("q_col", q_col), ("k_row", k_row),
                             ("k_col", k_col), ("cores", cores)))
    _check_tiles(fn, impl, tiles)
    if rank1 is not None:
        if len(rank1) != 2 or any(v.shape != (heads, rank) for v in rank1):
            raise ValueError(f"{fn}: rank1 must be a pair (u, t) of [H, r] = [{heads}, {rank}] "
                             f"arrays, got shapes {[getattr(v, 'shape', v) for v in rank1]}")
    if impl == "xla":
        return reference.tucker_topk_reference(q_row, q_col, k_row, k_col, cores,
                                               topk_side=topk_side, topk=topk, rank1=rank1,
                                               preselect=preselect)
    u, t = reference.tucker_rank1(cores) if rank1 is None else rank1
    from kernels_pallas.pk_retrieval import gpu, tpu
    forward = _forward_fn(impl, tpu.tucker_topk_tpu, gpu.tucker_topk_gpu, tiles,
                          topk_side=topk_side, topk=topk, preselect=preselect)
    return _tucker_diff(q_row, q_col, k_row, k_col, cores, u, t, forward)
