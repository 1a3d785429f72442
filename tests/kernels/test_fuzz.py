"""Hypothesis property fuzzing of both Pallas kernels (tier 1 numerics, interpret mode).

Every property compares ``implementation="interpret"`` with ``implementation="xla"``
(reference.py), forward and VJP in one jit per implementation, on drawn shapes and data:

* pk_retrieval, PKM (``api.product_key_topk``) and TDQKR + MCS (``api.tucker_topk``):
  indices equal the reference exactly (ties break like ``lax.top_k``: lowest sub-key index per
  side, lexicographically smallest rank pair in the candidate grid), scores allclose, and the
  custom VJP (rescore from the returned indices) allclose to autodiff of the reference w.r.t.
  queries, keys and cores. Drawn: leading token shape (none, 1-d, 2-d), heads, sub-keys per side
  n, key dim, Tucker rank and core count, k_s in 1..n (k_s == n included), topk in
  {1, k_s, k_s^2 = the whole candidate grid, any}, the extraction chunk (one or several chunks),
  f32 / bf16 inputs, "top" / "abs" pre-selection, SVD or dyadic pre-selection vectors. Data is
  either continuous (the arg_specs init) or small integers (zeros included) with duplicated
  sub-key rows, where every score is exact and ties are everywhere (one distinct row: every
  slot ties), including ties between -0.0 and +0.0 (``test_signed_zero_scores_tie``).
* embedding_bag (PKM bag, value slices S, groups G as in MCS / IVE) and row_dot (PEER's
  pre-value coefficients): forward and VJP (d_values and d_weights; d_table and d_x) allclose to
  jax.grad of the reference (run on float32 copies for bf16 tables). Drawn: table rows N, row
  dim, bag size K, leading shape (none, 1-d, 2-d), S, G, TPU tiles (several tiles, megacore
  split, token and K padding), f32 / bf16 tables; indices with forced duplicates within a bag
  (up to K copies of one id) and out-of-range pad ids (negative, >= N, the int32 extremes: they
  read zero rows and get no gradient), exact-zero weights (up to all of them), group ids outside
  [0, G), G = 1 included (they select no group; ``test_single_group_stray_ids``).

The default suite runs a few examples per property plus explicit edge cases (``@example``);
the ``slow`` versions draw many more. ``derandomize=True`` makes the examples the same on every
run; a failure prints the drawn case, which rebuilds its arguments deterministically.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import seedjax.ops as seedjax_ops
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from kernels_pallas.embedding_bag.arg_specs import ArgSpec
from kernels_pallas.embedding_bag.config import TpuTiles as BagTiles
from kernels_pallas.pk_retrieval import api as pk_api
from kernels_pallas.pk_retrieval import arg_specs as pk_specs
from kernels_pallas.pk_retrieval.config import TpuTiles as PkTiles
from tests.kernels.test_embedding_bag import _check_against_reference
from tests.kernels.test_pk_retrieval import _assert_grads_close, _assert_same

DTYPES = ("float32", "bfloat16")
INT32_MIN, INT32_MAX = -2**31, 2**31 - 1


def _settings(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


FAST = _settings(2)      # default suite
SLOW = _settings(30)     # -m slow


# ------------------------------------------------------------------------------ pk_retrieval

@dataclasses.dataclass(frozen=True)
class PkCase:
    """One drawn retrieval problem. ``levels`` 0: continuous data (``spec.make(seed)``);
    L > 0: integers in [-L, L] where sub-key rows ``distinct``.. of each side repeat earlier
    rows (Tucker: diagonally dominant integer cores; see ``_pk_args``). ``rank1``: Tucker (u, t) as nested tuples of nonzero dyadics, None -> SVD."""
    spec: Any                        # pk_specs.PKSpec | pk_specs.TuckerSpec
    seed: int = 0
    levels: int = 0
    distinct: int = 1
    rank1: Any = None
    chunk_rows: int = 64


@st.composite
def _topk_shape(draw):
    """(n, k_s, topk) with the edge cases k_s == n and topk == k_s^2 drawn often."""
    ks = draw(st.integers(1, 7))
    n = draw(st.one_of(st.just(ks), st.integers(ks, 24)))
    topk = draw(st.one_of(st.sampled_from([ks * ks, ks, 1]), st.integers(1, ks * ks)))
    return n, ks, topk


@st.composite
def _lead(draw):
    """Leading token shape: none, 1-d or 2-d."""
    return draw(st.one_of(st.just(()), st.tuples(st.integers(1, 12)),
                          st.tuples(st.integers(1, 4), st.integers(1, 4))))


def _pk_case(draw, spec, levels, rank=None):
    rank1 = None
    if rank is not None and draw(st.booleans()):
        dyadic = st.sampled_from([-1.0, -0.5, 0.5, 1.0])
        vec = st.tuples(*[st.tuples(*[dyadic] * rank)] * spec.heads)
        rank1 = (draw(vec), draw(vec))
    return PkCase(spec, seed=draw(st.integers(0, 2**16)), levels=levels,
                  distinct=draw(st.integers(1, spec.n)) if levels else spec.n, rank1=rank1,
                  chunk_rows=draw(st.sampled_from([16, 64])))


_LEVELS = st.sampled_from([0, 1, 2, 3])


@st.composite
def pk_cases(draw):
    n, ks, topk = draw(_topk_shape())
    spec = pk_specs.PKSpec("fuzz_pk", draw(_lead()), heads=draw(st.integers(1, 3)), n=n,
                           half_dim=draw(st.integers(1, 8)), topk_side=ks, topk=topk,
                           dtype=draw(st.sampled_from(DTYPES)))
    return _pk_case(draw, spec, draw(_LEVELS))


@st.composite
def tucker_cases(draw):
    n, ks, topk = draw(_topk_shape())
    rank, levels = draw(st.integers(1, 3)), draw(_LEVELS)
    dk = 2 * draw(st.integers(0, 2)) + 1 if levels else draw(st.integers(1, 6))
    spec = pk_specs.TuckerSpec("fuzz_tucker", draw(_lead()), heads=draw(st.integers(1, 2)), n=n,
                               rank=rank, dk=dk, n_cores=draw(st.integers(1, 3)), topk_side=ks,
                               topk=topk, dtype=draw(st.sampled_from(DTYPES)),
                               preselect=draw(st.sampled_from(["top", "abs"])))
    return _pk_case(draw, spec, levels, rank)


def _pk_args(case: PkCase):
    """The case's arrays (queries, sub-keys, cores in spec order). Integer data makes every
    score exact, so ties are exact in both implementations; zeros make -0.0 / +0.0 ties."""
    spec = case.spec
    if not case.levels:
        return spec.make(case.seed)
    rng = np.random.default_rng(case.seed)
    ints = lambda shape: rng.integers(-case.levels, case.levels + 1, size=shape)  # noqa
    out = []
    for i, s in enumerate(spec.shapes()):
        x = ints(s.shape)
        if i in (2, 3):                                               # sub-keys [H, n, ...]
            x[:, case.distinct:] = x[:, rng.integers(0, case.distinct, spec.n - case.distinct)]
        elif i == 4:                                                  # cores [h_c, H, r, r]
            x = rng.integers(-1, 2, size=s.shape)
            diag = np.arange(spec.rank)
            x[..., diag, diag] = spec.rank * rng.choice([-1, 1], size=s.shape[:-1])
        out.append(jnp.asarray(x, s.dtype))
    return tuple(out)


def _fwd_vjp(call, impl, args, seed, **kw):
    """jit -> ((scores, indices), grads of all args) for a fixed random score cotangent."""
    def f(*a):
        scores, pull, indices = jax.vjp(lambda *a: call(*a, **kw, implementation=impl), *a,
                                        has_aux=True)
        ct = jnp.asarray(np.random.default_rng(seed).normal(size=scores.shape), scores.dtype)
        return (scores, indices), pull(ct)
    return jax.jit(f)(*args)


def _check_pk(case: PkCase):
    spec, args = case.spec, _pk_args(case)
    kw = dict(spec.kwargs())
    if isinstance(spec, pk_specs.PKSpec):
        call = pk_api.product_key_topk
    else:
        call = pk_api.tucker_topk
        if case.rank1 is not None:
            kw["rank1"] = tuple(jnp.asarray(v, jnp.float32) for v in case.rank1)
    tiles = PkTiles(token_tile=128, chunk_rows=case.chunk_rows, vmem_limit_bytes=None)
    got, g_got = _fwd_vjp(call, "interpret", args, case.seed, tiles=tiles, **kw)
    want, g_want = _fwd_vjp(call, "xla", args, case.seed, **kw)
    _assert_same(got, want)
    _assert_grads_close(g_got, g_want, spec.dtype)


def _pk_example(dtype, levels, **shape):
    spec = pk_specs.PKSpec(f"edge_pk_{dtype}", **shape, dtype=dtype)
    return PkCase(spec, seed=1, levels=levels, distinct=max(1, spec.n // 2), chunk_rows=16)


@FAST
@example(_pk_example("bfloat16", 1, lead=(5,), heads=2, n=6, half_dim=3, topk_side=6, topk=36))
@example(_pk_example("float32", 2, lead=(), heads=1, n=20, half_dim=2, topk_side=5, topk=25))
@example(dataclasses.replace(_pk_example("float32", 1, lead=(2, 3), heads=2, n=9, half_dim=4,
                                         topk_side=4, topk=7), levels=0))
@given(pk_cases())
def test_pk_fuzz(case):
    """PKM: interpret kernel == reference (indices exact, scores and VJP allclose)."""
    _check_pk(case)


@pytest.mark.slow
@SLOW
@given(pk_cases())
def test_pk_fuzz_many(case):
    """test_pk_fuzz with many more examples."""
    _check_pk(case)


def _tucker_example(dtype, levels, rank1=None, **shape):
    spec = pk_specs.TuckerSpec(f"edge_tucker_{dtype}", **shape, dtype=dtype)
    return PkCase(spec, seed=2, levels=levels, distinct=max(1, spec.n // 2), rank1=rank1,
                  chunk_rows=16)


@FAST
@example(_tucker_example("bfloat16", 1, lead=(4,), heads=1, n=5, rank=2, dk=3, n_cores=2,
                         topk_side=5, topk=25, preselect="abs"))
@example(_tucker_example("float32", 2, rank1=(((1.0, -0.5),), ((0.5, 0.5),)), lead=(),
                         heads=1, n=18, rank=2, dk=3, n_cores=3, topk_side=4, topk=16))
@given(tucker_cases())
def test_tucker_fuzz(case):
    """TDQKR + MCS: interpret kernel == reference (indices exact, per-core scores and VJP
    w.r.t. queries, keys and cores allclose)."""
    _check_pk(case)


@pytest.mark.slow
@SLOW
@given(tucker_cases())
def test_tucker_fuzz_many(case):
    """test_tucker_fuzz with many more examples."""
    _check_pk(case)


@pytest.mark.parametrize("variant", ["pkm", "tdqkr"])
def test_signed_zero_scores_tie(variant):
    """Property: -0.0 and +0.0 tie, so the lowest index wins in both the kernel and the
    reference (found by fuzzing: bare lax.top_k ranks -0 below +0). One token, one head, n = 2,
    d = 1, k_s = topk = 1, zero query, sub-keys -1 and +1: side scores [-0.0, +0.0] -> index 0."""
    keys = jnp.asarray([[[-1.0], [1.0]]])                            # [H=1, n=2, d=1]
    if variant == "pkm":
        args, call, kw = ((jnp.zeros((1, 1, 1)),) * 2 + (keys, jnp.ones((1, 2, 1))),
                          pk_api.product_key_topk, {})
    else:
        args = ((jnp.zeros((1, 1, 1, 1)),) * 2 + (keys[:, :, None], jnp.ones((1, 2, 1, 1)),
                                                   jnp.ones((1, 1, 1, 1))))
        call, kw = pk_api.tucker_topk, dict(rank1=(jnp.ones((1, 1)), jnp.ones((1, 1))))
    want = call(*args, topk_side=1, topk=1, **kw, implementation="xla")
    got = call(*args, topk_side=1, topk=1, **kw, implementation="interpret")
    _assert_same(got, want)
    assert int(want[1].ravel()[0]) == 0
    ops = {"pkm": seedjax_ops.product_key_topk, "tdqkr": seedjax_ops.tucker_topk}[variant]
    _assert_same(ops(*args, topk_side=1, topk=1, **kw, implementation="xla"), want)


# ----------------------------------------------------------------------------- embedding_bag

@dataclasses.dataclass(frozen=True)
class BagCase:
    """One drawn bag / row_dot problem: ``spec.make(seed, pad_frac, dup_frac, zero_frac)`` then
    ``dup`` ("pair": slot 1 repeats slot 0 in every bag; "all": every slot repeats slot 0),
    int32-extreme pad ids (``extreme_pads``), group ids -1 and G at ``stray_groups`` of the
    slots, weights cast to ``weight_dtype``; ``squeeze`` drops the leading (1,) (no lead dims)."""
    spec: ArgSpec
    seed: int = 0
    pad_frac: float = 0.0
    dup_frac: float = 0.0
    zero_frac: float = 0.0
    dup: str = "none"
    extreme_pads: bool = False
    stray_groups: float = 0.0
    weight_dtype: str = "float32"
    squeeze: bool = False
    tiles: BagTiles | None = None


_FRACS = st.sampled_from([0.0, 0.2, 0.5, 1.0])


@st.composite
def bag_cases(draw, op="bag"):
    dtype = draw(st.sampled_from(DTYPES))
    slices = draw(st.sampled_from([0, 1, 2, 3])) if op == "bag" else 0
    groups = draw(st.sampled_from([0, 1, 2, 4])) if op == "bag" else 0
    unit = max(slices, 1) * (2 if dtype == "bfloat16" else 1)      # Dv % S == 0, even for bf16
    lead = draw(_lead())
    spec = ArgSpec(f"fuzz_{op}", op, n_rows=draw(st.integers(1, 40)),
                   dim=unit * draw(st.integers(1, 6)), tokens=int(np.prod(lead or (1,))),
                   k=draw(st.integers(1, 12)), slices=slices, groups=groups, dtype=dtype,
                   lead=lead or (1,))
    tiles = draw(st.one_of(st.none(), st.builds(
        BagTiles, rows_per_tile=st.sampled_from([8, 16, 32, 64]),
        rows_per_dot=st.sampled_from([8, 16, 32]), num_cores=st.integers(1, 2),
        vmem_limit_bytes=st.just(16 << 20), dma_unroll=st.integers(1, 2))))
    return BagCase(spec, seed=draw(st.integers(0, 2**16)), pad_frac=draw(_FRACS),
                   dup_frac=draw(_FRACS), zero_frac=draw(_FRACS),
                   dup=draw(st.sampled_from(["none", "pair", "all"])),
                   extreme_pads=draw(st.booleans()),
                   stray_groups=draw(st.sampled_from([0.0, 0.3])),
                   weight_dtype=draw(st.sampled_from(["float32", dtype])), squeeze=not lead,
                   tiles=tiles)


def _bag_args(case: BagCase) -> dict:
    spec = case.spec
    a = spec.make(case.seed, pad_frac=case.pad_frac, dup_frac=case.dup_frac,
                  zero_frac=case.zero_frac)
    rng = np.random.default_rng(case.seed + 1)
    idx = np.array(a["indices"])
    if case.dup == "all":
        idx[...] = idx[..., :1]
    elif case.dup == "pair" and spec.k > 1:
        idx[..., 1] = idx[..., 0]
    if case.extreme_pads:
        idx[rng.random(idx.shape) < 0.2] = INT32_MAX
        idx.reshape(-1)[-1] = INT32_MIN
    a["indices"] = jnp.asarray(idx, jnp.int32)
    if "groups" in a and case.stray_groups:
        g = np.array(a["groups"])
        stray = rng.random(g.shape) < case.stray_groups
        g[stray] = np.where(rng.random(g.shape) < 0.5, -1, spec.n_groups)[stray]
        a["groups"] = jnp.asarray(g, jnp.int32)
    if "weights" in a:
        a["weights"] = a["weights"].astype(case.weight_dtype)
    if case.squeeze:                       # lead (1,) -> no leading dims
        a = {n: v if n in ("values", "table") else v[0] for n, v in a.items()}
    return a


def _check_bag(case: BagCase):
    kw = {} if case.tiles is None else {"tiles": case.tiles}
    _check_against_reference(case.spec, _bag_args(case), **kw)


def _bag_example(spec_kw, **case_kw):
    spec = ArgSpec(f"edge_{spec_kw['op']}_{spec_kw['dtype']}", **spec_kw)
    return BagCase(spec, seed=3, **{**dict(pad_frac=0.2, dup_frac=0.5, zero_frac=0.2, dup="pair",
                                           extreme_pads=True), **case_kw})


@FAST
@example(_bag_example(dict(op="bag", n_rows=7, dim=6, tokens=6, k=5, slices=3, groups=4,
                           dtype="bfloat16", lead=(2, 3)),
                      stray_groups=0.3, weight_dtype="bfloat16",
                      tiles=BagTiles(rows_per_tile=16, rows_per_dot=8, num_cores=2,
                                     vmem_limit_bytes=16 << 20, dma_unroll=1)))
@example(_bag_example(dict(op="bag", n_rows=3, dim=5, tokens=1, k=9, dtype="float32"),
                      squeeze=True, dup="all", zero_frac=1.0))
@given(bag_cases())
def test_embedding_bag_fuzz(case):
    """embedding_bag (slices, groups): interpret forward and VJP (d_values, d_weights) ==
    reference with duplicate ids in a bag, pad ids, zero weights and stray group ids."""
    _check_bag(case)


@pytest.mark.slow
@SLOW
@given(bag_cases())
def test_embedding_bag_fuzz_many(case):
    """test_embedding_bag_fuzz with many more examples."""
    _check_bag(case)


@pytest.mark.parametrize("group", [-1, 1])
def test_single_group_stray_ids(group):
    """Property: with G = 1, a slot whose group id is outside [0, G) contributes nothing in the
    kernel path too (forward, d_values, d_weights), as in the reference (found by fuzzing: the
    kernels mask groups only for G > 1; api.embedding_bag now zeroes such weights)."""
    spec = ArgSpec("g1_stray", "bag", n_rows=1, dim=1, tokens=1, k=1, groups=1)
    _check_against_reference(spec, dict(values=jnp.full((1, 1), 2.0), weights=jnp.full((1, 1), 3.0),
                                        indices=jnp.zeros((1, 1), jnp.int32),
                                        groups=jnp.full((1, 1), group, jnp.int32)))


@FAST
@example(_bag_example(dict(op="row_dot", n_rows=4, dim=4, tokens=3, k=6, dtype="bfloat16"),
                      dup="all", pad_frac=0.5))
@given(bag_cases("row_dot"))
def test_row_dot_fuzz(case):
    """row_dot (PEER pre-values): interpret forward and VJP (d_table, d_x) == reference with
    duplicate and pad ids."""
    _check_bag(case)


@pytest.mark.slow
@SLOW
@given(bag_cases("row_dot"))
def test_row_dot_fuzz_many(case):
    """test_row_dot_fuzz with many more examples."""
    _check_bag(case)
