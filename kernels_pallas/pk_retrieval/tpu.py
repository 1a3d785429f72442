"""Mosaic TPU kernels for product-key retrieval (PKM and TDQKR/MCS), fused from sub-key scoring
to the final top-k: the [tokens, n] side-score matrix and the candidate grid live only in VMEM.

Grid ``(H, T_pad / token_tile)``, head outer so a head's sub-keys stay resident in VMEM while the
token tiles stream past (Pallas skips the re-copy of an unchanged block). Inside one step:

1. side scores ``K @ q^T`` on the MXU -> [n_pad, token_tile] f32: sub-keys on sublanes, tokens
   on lanes, so every reduction below is over sublanes (elementwise vreg max/min plus one
   sublane reduce) and each lane is an independent token;
2. per side, top-k_s by iterative max extraction (``_extract``): max over rows, lowest row
   among the maxima (iota + where + min: the lowest-index-first tie rule of ``lax.top_k``),
   mask it to -inf, repeat; rows are processed in ``chunk_rows`` slices with a running
   (max, first-row) pair, so values are never larger than one chunk;
3. the candidate grid, in lexicographic (a, b) row order so that "lowest row" is
   ``lax.top_k``'s tie rule on the flattened a * k_s + b grid:
   * PKM: only cells with (a + 1)(b + 1) <= topk are built. Both sides are sorted, so cell
     (a, b) is beaten or tied-and-preceded by the (a+1)(b+1) - 1 cells (a' <= a, b' <= b); the
     pruning is exact, ties and float rounding included (addition is monotone). For k_s = topk
     = 32 this is 296 rows (one 8-row-padded block per a) instead of 1024.
   * TDQKR: the full k_s x k_s grid of summed core scores (stride ceil8(k_s) per row a),
     written block by block in the reference's operation order;
4. the final top-``topk`` by the same extraction; per-core TDQKR scores and sub-key indices
   of each winner are gathered from the k_s-row side buffers with one-hot sublane sums
   (exact), and PKM candidate indices ride along as a payload.

Not tiled: the sub-key axis n. A head's whole [n_pad, d] sub-key block sits in VMEM (at most
1152 x 512 bf16 = 1.1 MiB per side and rank in the production specs) and the side scores take
n_pad x token_tile x 4 bytes; n in the tens of thousands would need gpu.py's streaming merge.
NaN scores are not handled like lax.top_k (which ranks NaN highest).

Padding: tokens to ``token_tile`` (zeros, sliced off), sub-key rows to the extraction chunk
(zeros, scored -inf), k_s to a multiple of 8 sublanes. Outputs are written head-major
[H, topk, T_pad] (tokens on lanes, topk a full-extent block dim) and transposed outside.

Shapes: see ``product_key_topk_tpu`` and ``tucker_topk_tpu``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels_pallas.pk_retrieval import config as _config

_BIG = 2**30


def _ceil(x: int, m: int) -> int:
    return -(-x // m) * m


def row_chunks(rows: int, max_chunk: int) -> tuple[int, int]:
    """(chunk, padded rows): the fewest chunks of at most ``max_chunk`` rows (a multiple of 16)
    covering ``rows``, each chunk a multiple of 16 rows."""
    r16 = _ceil(rows, 16)
    nch = -(-r16 // max_chunk)
    chunk = _ceil(-(-r16 // nch), 16)
    return chunk, chunk * nch


def pk_candidate_blocks(topk_side: int, topk: int):
    """PKM candidate rows: per side-1 rank a, the cells b < m_a = min(k_s, topk // (a + 1)),
    padded to m8 = ceil8(m_a). Returns ((a, m_a, m8, row offset), ...) and the total rows."""
    blocks, off = [], 0
    for a in range(min(topk_side, topk)):
        m = min(topk_side, topk // (a + 1))
        m8 = _ceil(m, 8)
        blocks.append((a, m, m8, off))
        off += m8
    return tuple(blocks), off


def _rank_sum(terms):
    acc = terms[0]
    for x in terms[1:]:
        acc = acc + x
    return acc


def _extract(score_ref, k: int, emit, *, chunk: int, payloads=()):
    """Iterative max extraction of the top-``k`` rows of ``score_ref`` [rows, lanes] per lane.

    For j < k: (best, first) = max over rows and the lowest row attaining it; payload p (a
    ``(getter(start, size) -> [size, lanes], dtype)`` pair) is read at row ``first``; then
    ``emit(j, best [1, lanes], first [1, lanes] int32, payload values)``. The selected row is
    set to -inf at the start of the next pass (fused with that pass's loads). Destroys
    ``score_ref``.
    """
    rows, lanes = score_ref.shape
    nch = rows // chunk

    def step(j, prev):
        def scan(ci, carry):
            best, first, pay = carry
            start = ci * chunk if isinstance(ci, int) else pl.multiple_of(ci * chunk, chunk)
            x = score_ref[pl.ds(start, chunk), :]
            fl = start + lax.broadcasted_iota(jnp.int32, (chunk, lanes), 0)
            x = jnp.where(fl == prev, -jnp.inf, x)
            score_ref[pl.ds(start, chunk), :] = x
            cm = jnp.max(x, axis=0, keepdims=True)
            cf = jnp.min(jnp.where(x == cm, fl, _BIG), axis=0, keepdims=True)
            take = (cm > best) | ((cm == best) & (cf < first))
            hit = fl == cf
            new = tuple(
                jnp.where(take, jnp.sum(jnp.where(hit, get(start, chunk), jnp.zeros((), dt)),
                                        axis=0, keepdims=True), pv)
                for (get, dt), pv in zip(payloads, pay))
            return jnp.where(take, cm, best), jnp.where(take, cf, first), new

        init = (jnp.full((1, lanes), -jnp.inf, jnp.float32), jnp.full((1, lanes), _BIG, jnp.int32),
                tuple(jnp.zeros((1, lanes), dt) for _, dt in payloads))
        best, first, pay = scan(0, init) if nch == 1 else lax.fori_loop(0, nch, scan, init)
        emit(j, best, first, pay)
        return first

    lax.fori_loop(0, k, step, jnp.full((1, lanes), -1, jnp.int32))


def _floor_div(x, m: int):
    """x // m for 0 <= x < 2^24 without vector integer division: a float estimate, then an
    exact integer correction (robust to an approximate reciprocal)."""
    a = jnp.floor((x.astype(jnp.float32) + 0.5) * (1.0 / m)).astype(jnp.int32)
    a = jnp.where(a * m > x, a - 1, a)
    return jnp.where((a + 1) * m <= x, a + 1, a)


def _nt_dot(k, q, precision):
    """k [n, d] . q [t, d]^T -> [n, t] f32 on the MXU."""
    return lax.dot_general(k, q, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32,
                           precision=precision)


# ----------------------------------------------------------------------------------------- PKM

def _pk_kernel(q1_ref, q2_ref, k1_ref, k2_ref, so_ref, io_ref,
               s_ref, v1_ref, i1_ref, v2_ref, i2_ref, c_ref, ci_ref, *,
               n, ks, topk, side_chunk, cand_chunk, blocks, cand_used, precision):
    lanes = so_ref.shape[-1]
    for q_ref, k_ref, v_ref, i_ref in ((q1_ref, k1_ref, v1_ref, i1_ref),
                                       (q2_ref, k2_ref, v2_ref, i2_ref)):
        s = _nt_dot(k_ref[...], q_ref[...], precision)                     # [n_pad, lanes]
        rows = lax.broadcasted_iota(jnp.int32, s.shape, 0)
        s_ref[...] = jnp.where(rows < n, s, -jnp.inf)

        def emit_side(j, best, first, _, v_ref=v_ref, i_ref=i_ref):
            v_ref[pl.ds(j, 1), :] = best
            i_ref[pl.ds(j, 1), :] = first
        _extract(s_ref, ks, emit_side, chunk=side_chunk)

    for a, m, m8, off in blocks:                                           # pruned grid
        b = lax.broadcasted_iota(jnp.int32, (m8, lanes), 0)
        c_ref[pl.ds(off, m8), :] = jnp.where(
            b < m, v1_ref[pl.ds(a, 1), :] + v2_ref[pl.ds(0, m8), :], -jnp.inf)
        ci_ref[pl.ds(off, m8), :] = i1_ref[pl.ds(a, 1), :] * n + i2_ref[pl.ds(0, m8), :]
    rows_total = c_ref.shape[0]
    if rows_total > cand_used:
        c_ref[pl.ds(cand_used, rows_total - cand_used), :] = jnp.full(
            (rows_total - cand_used, lanes), -jnp.inf, jnp.float32)
        ci_ref[pl.ds(cand_used, rows_total - cand_used), :] = jnp.zeros(
            (rows_total - cand_used, lanes), jnp.int32)

    def emit_final(j, best, first, pay):
        so_ref[pl.ds(j, 1), :] = best
        io_ref[pl.ds(j, 1), :] = pay[0]
    _extract(c_ref, topk, emit_final, chunk=cand_chunk,
             payloads=((lambda st, sz: ci_ref[pl.ds(st, sz), :], jnp.int32),))


def _compute_dtype(*xs):
    return jnp.bfloat16 if all(x.dtype == jnp.bfloat16 for x in xs) else jnp.float32


def _precision(dt):
    """Explicit, so a global ``jax_default_matmul_precision`` cannot ask Mosaic for an fp32
    contraction of bf16 operands (which it rejects: "Bad lhs type")."""
    return lax.Precision.HIGHEST if dt == jnp.float32 else lax.Precision.DEFAULT


def _compiler_params(tiles: _config.TpuTiles):
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"),
                                vmem_limit_bytes=tiles.vmem_limit_bytes)


def product_key_topk_tpu(q1, q2, k1, k2, *, topk_side: int, topk: int,
                         tiles: _config.TpuTiles | None = None, interpret: bool = False):
    """Fused PKM retrieval (forward only; see api.py for the differentiable entry point).

    q1, q2 [..., H, d]; k1, k2 [H, n, d] (bf16 stays bf16 on the MXU, anything else runs in
    f32) -> (scores [..., H, topk] f32 descending, indices [..., H, topk] int32 = i1 * n + i2).
    """
    if tiles is None:
        tiles = _config.INTERPRET_TILES if interpret else _config.tpu_tiles()
    heads, n, d = k1.shape
    lead = q1.shape[:-2]
    cdt = _compute_dtype(q1, q2, k1, k2)
    tt = tiles.token_tile
    tokens = q1.size // (heads * d)
    t_pad = _ceil(max(tokens, 1), tt)
    side_chunk, n_pad = row_chunks(n, tiles.chunk_rows)
    blocks, used = pk_candidate_blocks(topk_side, topk)
    cand_chunk, cand_rows = row_chunks(used, tiles.chunk_rows)
    ks8 = _ceil(topk_side, 8)

    def prep_q(x):                                                          # -> [H, T_pad, d]
        x = x.reshape(tokens, heads, d).astype(cdt).transpose(1, 0, 2)
        return jnp.pad(x, ((0, 0), (0, t_pad - tokens), (0, 0)))

    def prep_k(k):                                                          # -> [H, n_pad, d]
        return jnp.pad(k.astype(cdt), ((0, 0), (0, n_pad - n), (0, 0)))

    kernel = functools.partial(_pk_kernel, n=n, ks=topk_side, topk=topk, side_chunk=side_chunk,
                               cand_chunk=cand_chunk, blocks=blocks, cand_used=used,
                               precision=_precision(cdt))
    q_spec = pl.BlockSpec((None, tt, d), lambda h, t: (h, t, 0))
    k_spec = pl.BlockSpec((None, n_pad, d), lambda h, t: (h, 0, 0))
    o_spec = pl.BlockSpec((None, topk, tt), lambda h, t: (h, 0, t))
    itemsize = jnp.dtype(cdt).itemsize
    cost = pl.CostEstimate(
        flops=2 * 2 * t_pad * heads * n_pad * d, transcendentals=0,
        bytes_accessed=itemsize * (2 * t_pad * heads * d + 2 * heads * n_pad * d)
        + 8 * t_pad * heads * topk)
    so, io = pl.pallas_call(
        kernel, grid=(heads, t_pad // tt),
        in_specs=[q_spec, q_spec, k_spec, k_spec], out_specs=[o_spec, o_spec],
        out_shape=[jax.ShapeDtypeStruct((heads, topk, t_pad), jnp.float32),
                   jax.ShapeDtypeStruct((heads, topk, t_pad), jnp.int32)],
        scratch_shapes=[pltpu.VMEM((n_pad, tt), jnp.float32),
                        pltpu.VMEM((ks8, tt), jnp.float32), pltpu.VMEM((ks8, tt), jnp.int32),
                        pltpu.VMEM((ks8, tt), jnp.float32), pltpu.VMEM((ks8, tt), jnp.int32),
                        pltpu.VMEM((cand_rows, tt), jnp.float32),
                        pltpu.VMEM((cand_rows, tt), jnp.int32)],
        compiler_params=_compiler_params(tiles), interpret=interpret, cost_estimate=cost,
        name="pk_retrieval_pkm",
    )(prep_q(q1), prep_q(q2), prep_k(k1), prep_k(k2))
    scores = so[:, :, :tokens].transpose(2, 0, 1).reshape(*lead, heads, topk)
    indices = io[:, :, :tokens].transpose(2, 0, 1).reshape(*lead, heads, topk)
    return scores, indices


# --------------------------------------------------------------------------------------- TDQKR

def _rank_rows(ref, rho, start, size):
    """Rows [start, start + size) of rank ``rho`` of a [r, rows, lanes] scratch ref."""
    return ref[rho, pl.ds(start, size), :]


def _tucker_kernel(qr_ref, qc_ref, kr_ref, kc_ref, cores_ref, vec_ref, so_ref, io_ref,
                   s_ref, sp_ref, selr_ref, selc_ref, ir_ref, ic_ref, p_ref, g_ref, *,
                   n, ks, topk, rank, n_cores, heads, use_abs, side_chunk, grid_chunk, precision):
    h = pl.program_id(0)
    lanes = so_ref.shape[-1]
    ks8 = selr_ref.shape[1]

    def core(c, rho, sg):
        return cores_ref[((c * heads + h) * rank + rho) * rank + sg]

    for side, (q_ref, k_ref, sel_ref, i_ref) in enumerate(((qr_ref, kr_ref, selr_ref, ir_ref),
                                                           (qc_ref, kc_ref, selc_ref, ic_ref))):
        terms = []
        for rho in range(rank):
            s = _nt_dot(k_ref[rho], q_ref[rho], precision)                 # [n_pad, lanes]
            sp_ref[rho] = s
            terms.append(s * vec_ref[(side * heads + h) * rank + rho])
        approx = _rank_sum(terms)
        if use_abs:
            approx = jnp.abs(approx)
        rows = lax.broadcasted_iota(jnp.int32, approx.shape, 0)
        s_ref[...] = jnp.where(rows < n, approx, -jnp.inf)
        sel_ref[...] = jnp.zeros(sel_ref.shape, jnp.float32)

        def emit_side(j, best, first, pay, sel_ref=sel_ref, i_ref=i_ref):
            i_ref[pl.ds(j, 1), :] = first
            for rho in range(rank):
                sel_ref[rho, pl.ds(j, 1), :] = pay[rho]
        _extract(s_ref, ks, emit_side, chunk=side_chunk,
                 payloads=tuple((functools.partial(_rank_rows, sp_ref, rho), jnp.float32)
                                for rho in range(rank)))

    for c in range(n_cores):                                               # P_c[b, rho]
        for rho in range(rank):
            p_ref[c, rho] = _rank_sum([core(c, rho, sg) * selc_ref[sg] for sg in range(rank)])
    b_valid = lax.broadcasted_iota(jnp.int32, (ks8, lanes), 0) < ks

    def row_block(a, carry):                                               # G[a, :] for all b
        srow = [selr_ref[rho, pl.ds(a, 1), :] for rho in range(rank)]
        g = _rank_sum([_rank_sum([srow[rho] * p_ref[c, rho] for rho in range(rank)])
                       for c in range(n_cores)])
        g_ref[pl.ds(pl.multiple_of(a * ks8, 8), ks8), :] = jnp.where(b_valid, g, -jnp.inf)
        return carry
    lax.fori_loop(0, ks, row_block, 0)
    used = ks * ks8
    if g_ref.shape[0] > used:
        g_ref[pl.ds(used, g_ref.shape[0] - used), :] = jnp.full(
            (g_ref.shape[0] - used, lanes), -jnp.inf, jnp.float32)

    kiota = lax.broadcasted_iota(jnp.int32, (ks8, lanes), 0)

    def pick(onehot, x):
        return jnp.sum(jnp.where(onehot, x, jnp.zeros((), x.dtype)), axis=0, keepdims=True)

    def emit_final(j, best, first, _):
        a = _floor_div(first, ks8)
        b = first - a * ks8
        oa, ob = kiota == a, kiota == b
        sr = [pick(oa, selr_ref[rho]) for rho in range(rank)]
        sc = [pick(ob, selc_ref[sg]) for sg in range(rank)]
        for c in range(n_cores):
            p = [_rank_sum([core(c, rho, sg) * sc[sg] for sg in range(rank)])
                 for rho in range(rank)]
            so_ref[c, pl.ds(j, 1), :] = _rank_sum([sr[rho] * p[rho] for rho in range(rank)])
        io_ref[pl.ds(j, 1), :] = pick(oa, ir_ref[...]) * n + pick(ob, ic_ref[...])
    _extract(g_ref, topk, emit_final, chunk=grid_chunk)


def tucker_topk_tpu(q_row, q_col, k_row, k_col, cores, u, t, *, topk_side: int, topk: int,
                    preselect: str = "top", tiles: _config.TpuTiles | None = None,
                    interpret: bool = False):
    """Fused TDQKR + MCS retrieval (forward only; see api.py for the differentiable entry).

    q_row, q_col [..., H, r, Dk]; k_row, k_col [H, n, r, Dk]; cores [h_c, H, r, r];
    u, t [H, r] pre-selection vectors -> (scores [..., H, topk, h_c] f32 by descending summed
    score, indices [..., H, topk] int32 = row * n + col).
    """
    if tiles is None:
        tiles = _config.INTERPRET_TILES if interpret else _config.tpu_tiles()
    heads, n, rank, dk = k_row.shape
    n_cores = cores.shape[0]
    lead = q_row.shape[:-3]
    cdt = _compute_dtype(q_row, q_col, k_row, k_col)
    tt = tiles.token_tile
    tokens = q_row.size // (heads * rank * dk)
    t_pad = _ceil(max(tokens, 1), tt)
    side_chunk, n_pad = row_chunks(n, tiles.chunk_rows)
    ks8 = _ceil(topk_side, 8)
    grid_chunk, grid_rows = row_chunks(topk_side * ks8, tiles.chunk_rows)

    def prep_q(x):                                                          # [H, r, T_pad, Dk]
        x = x.reshape(tokens, heads, rank, dk).astype(cdt).transpose(1, 2, 0, 3)
        return jnp.pad(x, ((0, 0), (0, 0), (0, t_pad - tokens), (0, 0)))

    def prep_k(k):                                                          # [H, r, n_pad, Dk]
        k = k.astype(cdt).transpose(0, 2, 1, 3)
        return jnp.pad(k, ((0, 0), (0, 0), (0, n_pad - n), (0, 0)))

    kernel = functools.partial(
        _tucker_kernel, n=n, ks=topk_side, topk=topk, rank=rank, n_cores=n_cores, heads=heads,
        use_abs=preselect == "abs", side_chunk=side_chunk, grid_chunk=grid_chunk,
        precision=_precision(cdt))
    q_spec = pl.BlockSpec((None, rank, tt, dk), lambda h, i: (h, 0, i, 0))
    k_spec = pl.BlockSpec((None, rank, n_pad, dk), lambda h, i: (h, 0, 0, 0))
    smem = pl.BlockSpec(memory_space=pltpu.SMEM)
    itemsize = jnp.dtype(cdt).itemsize
    cost = pl.CostEstimate(
        flops=2 * 2 * rank * t_pad * heads * n_pad * dk
        + 2 * t_pad * heads * topk_side ** 2 * n_cores * rank, transcendentals=0,
        bytes_accessed=itemsize * 2 * rank * dk * (t_pad * heads + heads * n_pad)
        + 4 * t_pad * heads * topk * (n_cores + 1))
    so, io = pl.pallas_call(
        kernel, grid=(heads, t_pad // tt),
        in_specs=[q_spec, q_spec, k_spec, k_spec, smem, smem],
        out_specs=[pl.BlockSpec((None, n_cores, topk, tt), lambda h, i: (h, 0, 0, i)),
                   pl.BlockSpec((None, topk, tt), lambda h, i: (h, 0, i))],
        out_shape=[jax.ShapeDtypeStruct((heads, n_cores, topk, t_pad), jnp.float32),
                   jax.ShapeDtypeStruct((heads, topk, t_pad), jnp.int32)],
        scratch_shapes=[pltpu.VMEM((n_pad, tt), jnp.float32),
                        pltpu.VMEM((rank, n_pad, tt), jnp.float32),
                        pltpu.VMEM((rank, ks8, tt), jnp.float32),
                        pltpu.VMEM((rank, ks8, tt), jnp.float32),
                        pltpu.VMEM((ks8, tt), jnp.int32), pltpu.VMEM((ks8, tt), jnp.int32),
                        pltpu.VMEM((n_cores, rank, ks8, tt), jnp.float32),
                        pltpu.VMEM((grid_rows, tt), jnp.float32)],
        compiler_params=_compiler_params(tiles), interpret=interpret, cost_estimate=cost,
        name="pk_retrieval_tdqkr",
    )(prep_q(q_row), prep_q(q_col), prep_k(k_row), prep_k(k_col),
      cores.astype(jnp.float32).reshape(-1),
      jnp.concatenate([u.astype(jnp.float32).reshape(-1), t.astype(jnp.float32).reshape(-1)]))
    scores = so[..., :tokens].transpose(3, 0, 2, 1).reshape(*lead, heads, topk, n_cores)
    indices = io[:, :, :tokens].transpose(2, 0, 1).reshape(*lead, heads, topk)
    return scores, indices
