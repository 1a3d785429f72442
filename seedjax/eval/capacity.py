"""Knowledge capacity (bits per parameter) of an LM trained on Capo-lite biographies
(``seedjax.data.capo``; Ouro paper Sec. 6.1 / App. B.1, after Allen-Zhu & Li's bioS).

The capacity ratio of a model F with P parameters trained on the biographies of N people::

    R(F) = [ N * log2(N0 / e**p1) + N * log2(S0 / e**p2) ] / P          (bits per parameter)

* ``p1``: cross-entropy in nats summed over a person's name tokens, averaged over the N people
  (so ``p1 = ln N0`` for a model that knows nothing about names and ``ln N`` for one that knows
  exactly which N names exist);
* ``p2``: the same over the attribute-value tokens (``ln S0`` knowing nothing, 0 knowing all);
* ``N0`` = product of the name value-set sizes (``name_sizes``, e.g. ``(n_first, n_last)``),
  ``S0`` = product of the attribute value-set sizes (``attr_sizes``, e.g. ``(12, 28, n_years,
  n_cities, n_universities, n_majors, n_employers)``); both enter as sums of ``log2`` sizes, so
  the paper's N0 = 400*400*1000 and S0 = 2*(12*28*200)*200*300*100*263 (log2 S0 = 47.6) work.

The spec (and the paper's Definition 1) prints the second term as ``log2(S0 * e**p2)``; with
that sign the bits would grow with the loss, so this follows the semantics (and Allen-Zhu & Li,
and rkstgr/LoopLM): ``log2(S0 / e**p2)``. Terms are not clipped at zero: a model worse than
uniform has negative bits. ``max_bits`` = the bits at ``p1 = ln N``, ``p2 = 0``.

Shapes: per-token losses ``nll`` float [N, T] (nats; ``nll[:, t]`` of token t predicted from
position t-1), masks bool [N, T] (one row per person); p1, p2 floats (nats per person).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from flax import nnx

from seedjax.eval.task_scoring import teacher_forced
from seedjax.validation import check_int

__all__ = ["person_ce", "capacity_bits", "capacity_ratio", "evaluate_capacity"]


def _log2_size(field: str, sizes) -> float:
    sizes = (sizes,) if isinstance(sizes, (int, np.integer)) else tuple(sizes)
    if not sizes:
        raise ValueError(f"{field}=() must be a positive integer or a non-empty sequence of them")
    return sum(math.log2(check_int(f"{field}[{i}]", s, 1)) for i, s in enumerate(sizes))


def person_ce(nll, name_mask, attr_mask) -> tuple[float, float]:
    """``(p1, p2)``: per-row sums of ``nll`` [N, T] over ``name_mask`` / ``attr_mask`` [N, T],
    averaged over the N rows (people)."""
    nll = np.asarray(nll, np.float64)
    name_mask, attr_mask = np.asarray(name_mask, bool), np.asarray(attr_mask, bool)
    if nll.ndim != 2 or name_mask.shape != nll.shape or attr_mask.shape != nll.shape:
        raise ValueError(f"nll, name_mask and attr_mask must be [N, T] of one shape; got "
                         f"{nll.shape}, {name_mask.shape}, {attr_mask.shape}")
    return (float((nll * name_mask).sum(1).mean()), float((nll * attr_mask).sum(1).mean()))


def capacity_bits(p1: float, p2: float, *, n_people: int, name_sizes: int | Sequence[int],
                  attr_sizes: int | Sequence[int]) -> dict:
    """``{"name_bits", "attr_bits", "bits", "max_bits"}`` (module docstring; bits)."""
    n = check_int("n_people", n_people, 1)
    log2_n0, log2_s0 = _log2_size("name_sizes", name_sizes), _log2_size("attr_sizes", attr_sizes)
    name_bits = n * (log2_n0 - p1 / math.log(2))
    attr_bits = n * (log2_s0 - p2 / math.log(2))
    return {"name_bits": name_bits, "attr_bits": attr_bits, "bits": name_bits + attr_bits,
            "max_bits": n * (log2_n0 - math.log2(n)) + n * log2_s0}


def capacity_ratio(p1: float, p2: float, *, n_people: int, name_sizes: int | Sequence[int],
                   attr_sizes: int | Sequence[int], n_params: int) -> float:
    """R(F) in bits per parameter (module docstring)."""
    bits = capacity_bits(p1, p2, n_people=n_people, name_sizes=name_sizes,
                         attr_sizes=attr_sizes)["bits"]
    return bits / check_int("n_params", n_params, 1)


def evaluate_capacity(model, cfg, *, seed: int = 0, batch_size: int = 32,
                      n_params: int | None = None, progress: bool = False) -> dict:
    """p1, p2, bits and R(F) of ``model`` on one biography per person of ``cfg`` (a
    ``CapoConfig``; ``cfg.population(seed)``), each preceded by the ``eos`` token 0 as in a
    ``task:capo`` stream (so the first name character is predicted too). ``n_params`` defaults
    to the model's ``nnx.Param`` count (all parameters, embeddings and head included)."""
    bios = cfg.population(seed)
    pad = ((0, 0), (1, 0))
    _, nll = teacher_forced(model, np.pad(bios["tokens"], pad), batch_size=batch_size,
                            progress=progress, desc="capo")
    p1, p2 = person_ce(nll, np.pad(bios["name_mask"], pad), np.pad(bios["attr_mask"], pad))
    if n_params is None:
        n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    bits = capacity_bits(p1, p2, n_people=cfg.n_people, name_sizes=cfg.name_sizes,
                         attr_sizes=cfg.attr_sizes)
    return {"p1": p1, "p2": p2, **bits, "n_params": int(n_params), "n_people": cfg.n_people,
            "bits_per_param": bits["bits"] / n_params}
