"""Triton-via-Pallas kernels for product-key retrieval (PKM and TDQKR/MCS) on GPU.

Status: lowers with ``jax.export(..., platforms=["cuda"])`` at the production shapes and matches
the reference in interpret mode, but it is NOT the GPU default: ``api.py`` keeps XLA on GPU.
Nothing here has run on a GPU, and the design spends registers where XLA's sort-based
``top_k`` does not: the k_s x k_s candidate grid of one token block lives in registers
(token_block * next_pow2(k_s)^2 floats: 16 K at k_s = 32, 256 K at k_s = 128, which spills),
and every extraction step is a full pass over it. Until it is timed on a GPU against XLA it
stays opt-in (``implementation="pallas_gpu"``).

One program = (head h, a block of ``token_block`` tokens), tokens on rows:
1. sub-keys stream in chunks of NB = max(128, next_pow2(k_s)) rows; each chunk's scores
   ``q @ K_chunk^T`` [BT, NB] (tl.dot) are merged into a running per-token top-k_s by k_s
   extraction steps over (running set, chunk), ties to the lowest sub-key index;
2. the full candidate grid (PKM: v1[a] + v2[b]; TDQKR: per-core bilinear forms summed) in
   lexicographic (a, b) order with stride next_pow2(k_s), then topk extraction steps;
   per-core scores and indices of the winners are gathered with one-hot sums.
Triton needs power-of-two block dims: d, n, k_s and topk are padded (zeros / -inf).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from kernels_pallas.pk_retrieval import config as _config

_BIG = 2**30


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _rank_sum(terms):
    acc = terms[0]
    for x in terms[1:]:
        acc = acc + x
    return acc


def _pick(onehot, x):
    """Per-row value of x [BT, K] at the single True column of onehot [BT, K] -> [BT, 1]."""
    return jnp.sum(jnp.where(onehot, x, jnp.zeros((), x.dtype)), axis=1, keepdims=True)


def _side_topk(q_ref, k_ref, vec, *, n, ks, ksp, nb, n_chunks, rank, use_abs):
    """Running top-k_s over streamed sub-key chunks. q_ref block [r, BT, Dp] (PKM: r = 1,
    vec None), k_ref [r, n_p, Dp]. Returns (ranking values [BT, ksp], indices [BT, ksp],
    per-rank scores [BT, ksp] x r)."""
    qs = [q_ref[rho] for rho in range(rank)]
    bt = qs[0].shape[0]
    n_pay = 0 if vec is None else rank                   # PKM needs no per-rank payload
    kcol = lax.broadcasted_iota(jnp.int32, (bt, ksp), 1)
    ccol = lax.broadcasted_iota(jnp.int32, (bt, nb), 1)

    def chunk(ci, run):
        rv, ri, rp = run
        start = pl.multiple_of(ci * nb, nb)
        sc = [lax.dot_general(qs[rho], k_ref[rho, pl.ds(start, nb), :], (((1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32) for rho in range(rank)]
        val = sc[0] if vec is None else _rank_sum([sc[rho] * vec[rho] for rho in range(rank)])
        if use_abs:
            val = jnp.abs(val)
        idx = start + ccol
        cv = jnp.where(idx < n, val, -jnp.inf)

        def step(j, carry):
            rv, cv, ov, oi, op = carry
            m = jnp.maximum(jnp.max(rv, axis=1, keepdims=True), jnp.max(cv, axis=1, keepdims=True))
            f = jnp.minimum(jnp.min(jnp.where(rv == m, ri, _BIG), axis=1, keepdims=True),
                            jnp.min(jnp.where(cv == m, idx, _BIG), axis=1, keepdims=True))
            hr, hc = ri == f, idx == f
            pay = tuple(_pick(hr, rp[rho]) + _pick(hc, sc[rho]) for rho in range(n_pay))
            put = kcol == j
            return (jnp.where(hr, -jnp.inf, rv), jnp.where(hc, -jnp.inf, cv),
                    jnp.where(put, m, ov), jnp.where(put, f, oi),
                    tuple(jnp.where(put, p, o) for p, o in zip(pay, op)))
        init = (rv, cv, jnp.full((bt, ksp), -jnp.inf, jnp.float32), -1 - kcol,
                tuple(jnp.zeros((bt, ksp), jnp.float32) for _ in range(n_pay)))
        _, _, ov, oi, op = lax.fori_loop(0, ks, step, init)
        return ov, oi, op

    init = (jnp.full((bt, ksp), -jnp.inf, jnp.float32), -1 - kcol,
            tuple(jnp.zeros((bt, ksp), jnp.float32) for _ in range(n_pay)))
    return lax.fori_loop(0, n_chunks, chunk, init)


def _final_topk(grid, topk, kop, emit_init, emit):
    """topk extraction steps over grid [BT, G] (column = lexicographic flat index)."""
    bt, g = grid.shape
    flat = lax.broadcasted_iota(jnp.int32, (bt, g), 1)
    ocol = lax.broadcasted_iota(jnp.int32, (bt, kop), 1)

    def step(j, carry):
        grid, outs = carry
        m = jnp.max(grid, axis=1, keepdims=True)
        f = jnp.min(jnp.where(grid == m, flat, _BIG), axis=1, keepdims=True)
        vals = emit(m, f)
        outs = tuple(jnp.where(ocol == j, v, o) for v, o in zip(vals, outs))
        return jnp.where(flat == f, -jnp.inf, grid), outs
    return lax.fori_loop(0, topk, step, (grid, emit_init))[1]


def _pk_kernel(q1_ref, q2_ref, k1_ref, k2_ref, so_ref, io_ref, *, n, ks, topk, nb, n_chunks):
    ksp, kop = _pow2(ks), so_ref.shape[-1]
    side = functools.partial(_side_topk, vec=None, n=n, ks=ks, ksp=ksp, nb=nb,
                             n_chunks=n_chunks, rank=1, use_abs=False)
    v1, i1, _ = side(q1_ref, k1_ref)
    v2, i2, _ = side(q2_ref, k2_ref)
    bt = v1.shape[0]
    a_ok = lax.broadcasted_iota(jnp.int32, (bt, ksp, ksp), 1) < ks
    b_ok = lax.broadcasted_iota(jnp.int32, (bt, ksp, ksp), 2) < ks
    grid = jnp.where(a_ok & b_ok, v1[:, :, None] + v2[:, None, :], -jnp.inf)
    kcol = lax.broadcasted_iota(jnp.int32, (bt, ksp), 1)
    shift = ksp.bit_length() - 1

    def emit(m, f):
        a, b = jnp.right_shift(f, shift), jnp.bitwise_and(f, ksp - 1)
        return m, _pick(kcol == a, i1) * n + _pick(kcol == b, i2)
    so, io = _final_topk(grid.reshape(bt, ksp * ksp), topk, kop,
                         (jnp.zeros((bt, kop), jnp.float32), jnp.zeros((bt, kop), jnp.int32)),
                         emit)
    so_ref[...] = so
    io_ref[...] = io


def _tucker_kernel(qr_ref, qc_ref, kr_ref, kc_ref, cores_ref, vec_ref, io_ref, *so_refs,
                   n, ks, topk, rank, n_cores, heads, use_abs, nb, n_chunks):
    h = pl.program_id(0)
    ksp, kop = _pow2(ks), io_ref.shape[-1]
    vec = [[vec_ref[(side * heads + h) * rank + rho] for rho in range(rank)] for side in (0, 1)]
    core = [[[cores_ref[((c * heads + h) * rank + rho) * rank + sg] for sg in range(rank)]
             for rho in range(rank)] for c in range(n_cores)]
    side = functools.partial(_side_topk, n=n, ks=ks, ksp=ksp, nb=nb, n_chunks=n_chunks,
                             rank=rank, use_abs=use_abs)
    _, ir, sr = side(qr_ref, kr_ref, vec[0])
    _, ic, sc = side(qc_ref, kc_ref, vec[1])
    bt = ir.shape[0]
    per_core = []
    for c in range(n_cores):
        p = [_rank_sum([core[c][rho][sg] * sc[sg] for sg in range(rank)]) for rho in range(rank)]
        per_core.append(_rank_sum([sr[rho][:, :, None] * p[rho][:, None, :]
                                   for rho in range(rank)]))
    a_ok = lax.broadcasted_iota(jnp.int32, (bt, ksp, ksp), 1) < ks
    b_ok = lax.broadcasted_iota(jnp.int32, (bt, ksp, ksp), 2) < ks
    grid = jnp.where(a_ok & b_ok, _rank_sum(per_core), -jnp.inf)
    kcol = lax.broadcasted_iota(jnp.int32, (bt, ksp), 1)
    shift = ksp.bit_length() - 1

    def emit(m, f):
        oa, ob = kcol == jnp.right_shift(f, shift), kcol == jnp.bitwise_and(f, ksp - 1)
        a_s = [_pick(oa, sr[rho]) for rho in range(rank)]
        b_s = [_pick(ob, sc[sg]) for sg in range(rank)]
        scores = []
        for c in range(n_cores):
            p = [_rank_sum([core[c][rho][sg] * b_s[sg] for sg in range(rank)])
                 for rho in range(rank)]
            scores.append(_rank_sum([a_s[rho] * p[rho] for rho in range(rank)]))
        return (_pick(oa, ir) * n + _pick(ob, ic), *scores)
    init = (jnp.zeros((bt, kop), jnp.int32),) + tuple(
        jnp.zeros((bt, kop), jnp.float32) for _ in range(n_cores))
    outs = _final_topk(grid.reshape(bt, ksp * ksp), topk, kop, init, emit)
    io_ref[...] = outs[0]
    for ref, val in zip(so_refs, outs[1:]):
        ref[...] = val


def _layout(tokens, n, d, ks, tiles):
    bt = tiles.token_block
    nb = max(128, _pow2(ks))
    n_p = -(-n // nb) * nb
    return bt, -(-max(tokens, 1) // bt) * bt, _pow2(d), nb, n_p


def _compute_dtype(*xs):
    return jnp.bfloat16 if all(x.dtype == jnp.bfloat16 for x in xs) else jnp.float32


def product_key_topk_gpu(q1, q2, k1, k2, *, topk_side: int, topk: int,
                         tiles: _config.GpuTiles | None = None, interpret: bool = False):
    """PKM retrieval, forward only. q1, q2 [..., H, d]; k1, k2 [H, n, d] ->
    (scores [..., H, topk] f32, indices [..., H, topk] int32)."""
    tiles = tiles or _config.GPU_TILES["default"]
    heads, n, d = k1.shape
    lead = q1.shape[:-2]
    tokens = q1.size // (heads * d)
    cdt = _compute_dtype(q1, q2, k1, k2)
    bt, t_pad, dp, nb, n_p = _layout(tokens, n, d, topk_side, tiles)
    kop = _pow2(topk)

    def prep_q(x):                                           # [H, 1, T_pad, Dp]
        x = x.reshape(tokens, heads, d).astype(cdt).transpose(1, 0, 2)[:, None]
        return jnp.pad(x, ((0, 0), (0, 0), (0, t_pad - tokens), (0, dp - d)))

    def prep_k(k):                                           # [H, 1, n_p, Dp]
        return jnp.pad(k.astype(cdt)[:, None], ((0, 0), (0, 0), (0, n_p - n), (0, dp - d)))

    kernel = functools.partial(_pk_kernel, n=n, ks=topk_side, topk=topk, nb=nb,
                               n_chunks=n_p // nb)
    q_spec = pl.BlockSpec((None, 1, bt, dp), lambda h, t: (h, 0, t, 0))
    k_spec = pl.BlockSpec((None, 1, n_p, dp), lambda h, t: (h, 0, 0, 0))
    o_spec = pl.BlockSpec((None, bt, kop), lambda h, t: (h, t, 0))
    so, io = pl.pallas_call(
        kernel, grid=(heads, t_pad // bt),
        in_specs=[q_spec, q_spec, k_spec, k_spec], out_specs=[o_spec, o_spec],
        out_shape=[jax.ShapeDtypeStruct((heads, t_pad, kop), jnp.float32),
                   jax.ShapeDtypeStruct((heads, t_pad, kop), jnp.int32)],
        compiler_params=pltriton.CompilerParams(num_warps=tiles.num_warps,
                                                num_stages=tiles.num_stages),
        interpret=interpret, name="pk_retrieval_pkm_triton",
    )(prep_q(q1), prep_q(q2), prep_k(k1), prep_k(k2))
    scores = so[:, :tokens, :topk].transpose(1, 0, 2).reshape(*lead, heads, topk)
    indices = io[:, :tokens, :topk].transpose(1, 0, 2).reshape(*lead, heads, topk)
    return scores, indices


def tucker_topk_gpu(q_row, q_col, k_row, k_col, cores, u, t, *, topk_side: int, topk: int,
                    preselect: str = "top", tiles: _config.GpuTiles | None = None,
                    interpret: bool = False):
    """TDQKR + MCS retrieval, forward only (shapes as ``tpu.tucker_topk_tpu``)."""
    tiles = tiles or _config.GPU_TILES["default"]
    heads, n, rank, dk = k_row.shape
    n_cores = cores.shape[0]
    lead = q_row.shape[:-3]
    tokens = q_row.size // (heads * rank * dk)
    cdt = _compute_dtype(q_row, q_col, k_row, k_col)
    bt, t_pad, dp, nb, n_p = _layout(tokens, n, dk, topk_side, tiles)
    kop = _pow2(topk)

    def prep_q(x):                                           # [H, r, T_pad, Dp]
        x = x.reshape(tokens, heads, rank, dk).astype(cdt).transpose(1, 2, 0, 3)
        return jnp.pad(x, ((0, 0), (0, 0), (0, t_pad - tokens), (0, dp - dk)))

    def prep_k(k):                                           # [H, r, n_p, Dp]
        k = k.astype(cdt).transpose(0, 2, 1, 3)
        return jnp.pad(k, ((0, 0), (0, 0), (0, n_p - n), (0, dp - dk)))

    def flat_pow2(x):
        x = x.astype(jnp.float32).reshape(-1)
        return jnp.pad(x, (0, _pow2(x.size) - x.size))

    kernel = functools.partial(_tucker_kernel, n=n, ks=topk_side, topk=topk, rank=rank,
                               n_cores=n_cores, heads=heads, use_abs=preselect == "abs",
                               nb=nb, n_chunks=n_p // nb)
    cores_f = flat_pow2(cores)
    vec_f = flat_pow2(jnp.concatenate([u.reshape(-1), t.reshape(-1)]))
    q_spec = pl.BlockSpec((None, rank, bt, dp), lambda h, i: (h, 0, i, 0))
    k_spec = pl.BlockSpec((None, rank, n_p, dp), lambda h, i: (h, 0, 0, 0))
    o_spec = pl.BlockSpec((None, bt, kop), lambda h, i: (h, i, 0))
    outs = pl.pallas_call(
        kernel, grid=(heads, t_pad // bt),
        in_specs=[q_spec, q_spec, k_spec, k_spec,
                  pl.BlockSpec(cores_f.shape, lambda h, i: (0,)),
                  pl.BlockSpec(vec_f.shape, lambda h, i: (0,))],
        out_specs=[o_spec] * (1 + n_cores),
        out_shape=[jax.ShapeDtypeStruct((heads, t_pad, kop), jnp.int32)]
        + [jax.ShapeDtypeStruct((heads, t_pad, kop), jnp.float32)] * n_cores,
        compiler_params=pltriton.CompilerParams(num_warps=tiles.num_warps,
                                                num_stages=tiles.num_stages),
        interpret=interpret, name="pk_retrieval_tdqkr_triton",
    )(prep_q(q_row), prep_q(q_col), prep_k(k_row), prep_k(k_col), cores_f, vec_f)
    indices = outs[0][:, :tokens, :topk].transpose(1, 0, 2).reshape(*lead, heads, topk)
    scores = jnp.stack([o[:, :tokens, :topk] for o in outs[1:]], axis=-1)
    scores = scores.transpose(1, 0, 2, 3).reshape(*lead, heads, topk, n_cores)
    return scores, indices
