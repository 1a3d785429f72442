"""Synthetic context-free grammars: Allen-Zhu & Li's cfg3f, a sampler and an exact recogniser.

The Over-Tokenized Transformer's motivation experiment (arXiv 2501.16975, Sec. 3.1 / App. B.2;
spec ``over_tokenized.md`` A.2) trains GPT-2 models on sentences of the synthetic grammar
"cfg3f" of *Physics of Language Models, Part 1* (Allen-Zhu & Li, arXiv 2305.13673) and scores
**generation accuracy**, the fraction of sampled sentences the grammar accepts
(``seedjax.eval.cfg_accuracy``). NumPy only (no jax import).

Provenance of the rules
-----------------------
``CFG3F`` is transcribed from the authors' released configuration file
``data-synthetic-pretrain/Lano-cfg/configs/cfg3f.json`` of github.com/facebookresearch/PhysicsLM4
(Apache-2.0, snapshot commit 7580696). That repository is the code release the paper names,
and its App. A.1 describes the synthetic CFGs. The rules are exact, not inferred.
They were not compared character by character with the figure in the paper's appendix. The
symbol ids are the file's: terminals 1, 2, 3; nonterminals 7..22 (level by level from the
bottom, root 22). Rule order per symbol is the file's too. That matters only to reproduce the
official sampler's draws: the tests replay its depth-first ``randint`` sampling with Python's
``random.Random(7711)`` and get the sequence printed in the repository's ``demo0_basic.py``.

Structure: 7 levels. The root 22 sits at level 0; levels 1..5 hold 3 nonterminals each; the
terminals 1, 2, 3 form level 6. Every nonterminal has 3 or 4 rules, each a sequence of 2 or 3
symbols of the next level (no two rules of a level are equal). Sentences are therefore 2^6 = 64
to 3^6 = 729 terminals long. The paper samples rules uniformly, and so does ``sample_sentences``.

Presets (``GRAMMARS``; ``cfg.rooted_at(symbol)`` builds others). ``cfg3f_dK`` is cfg3f cut to
the sub-grammar below one of its nonterminals that sits K levels above the terminals. It is a
subtree of the real grammar: every ``cfg3f_d5`` sentence is a constituent of cfg3f sentences.
The roots were picked for lengths that suit a CPU context window. Exact length statistics come
from the generating-function DP ``length_distribution``; the sampler matches it (tests):

    ==========  ====  ======  ===  ===  =====  ====  ===  ===  ===
    preset      root  levels  min  max  mean   std   p5   p50  p95
    ==========  ====  ======  ===  ===  =====  ====  ===  ===  ===
    cfg3f       22    6 + T   64   729  249.9  69.4  148  248  365
    cfg3f_d5    20    5 + T   32   243  97.0   27.5  63   90   148
    cfg3f_d4    16    4 + T   16   81   40.0   9.8   27   38   59
    cfg3f_d3    13    3 + T   8    27   17.7   4.1   11   18   24
    ==========  ====  ======  ===  ===  =====  ====  ===  ===  ===

("6 + T": six nonterminal levels, then the terminals.) The other level-1 roots give similar
lengths: 19 spans 40..243 (mean 106.8), 21 spans 36..243 (mean 97.0). ``cfg3f_d5`` is the
CPU-scale default of the ``task:cfg`` source (``seedjax.data.synthetic``). Its episodes are at
most 244 tokens (bos + 243), so one fits a 256-token window; the mean is 98. ``cfg3f_d3`` fits
a 32-token window and is for tests.

Token ids (``CFG`` requires terminals ``1..T``)::

    0        eos: ends a sentence; separates sentences in a packed stream and pads blocks
             (the byte tokenizer's eos, ``seedjax.data.tokenizers``)
    1..T     the terminal symbols (cfg3f: 1, 2, 3, the released file's ids)
    T + 1    bos: starts every sentence episode (cfg3f: 4); the prompt for generation
    > T + 1  nonterminals (cfg3f: 7..22); internal to the grammar, never in a token stream

So a model needs ``cfg.vocab_size = T + 2`` ids (5 for cfg3f). The official code numbers EOS 4,
MASK 5 and SEP 6 instead. A ``task:cfg`` stream writes ``bos s_1 .. s_n`` per sentence, then
one eos.

Recogniser (``accepts``, ``accepts_batch``): exact membership. Grammars without recursion (all
of the above) use a batched, vectorised CYK over span lengths. The chart of a symbol is a
boolean array [sentence, length - shortest, start position], limited to the lengths the symbol
can derive, and built bottom-up. A rule's chart is the left-to-right product of its children's
charts, and rules share prefixes. The start symbol and long symbols (able to derive more than
128 terminals: cfg3f's root and level 1) get no chart. They are expanded top-down instead, as
sets of reachable end positions starting from position 0. Recursive grammars fall back to a
plain set-based CYK, for small grammars and short sentences only. Measured on one core of a
shared 2-core machine (numpy 2.4, CPython 3.11, load average ~4), judging 1,000 cfg3f sentences
of 240..260 terminals takes 1.4-2.2 s (about 2 ms each). 1,000 random 250-symbol strings take
0.8 s and 1,000 ``cfg3f_d5`` sentences 0.5 s.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Iterable, Sequence

import numpy as np

from seedjax.data.episodes import Episode, TaskConfig
from seedjax.validation import check_choice, check_int

__all__ = ["CFG", "CFG3F", "GRAMMARS", "EOS_ID", "CfgTaskConfig", "get_grammar",
           "sample_sentences", "sample_sentence", "accepts", "accepts_batch",
           "length_distribution", "length_stats", "derivable_strings", "ngram_ids",
           "ngram_targets"]

EOS_ID = 0

_MAX_SAMPLE_LEN = 1 << 20  # a recursive grammar whose sentences grow past this is an error


@dataclasses.dataclass(frozen=True)
class CFG:
    """A context-free grammar over the terminals ``1..T`` without empty rules.

    * ``levels``: nonterminal ids by level; ``levels[0]`` holds ``start``. In a *layered*
      grammar (cfg3f) every rule of a level-d symbol uses only level-(d+1) symbols (terminals
      after the last level). Other grammars may group their nonterminals freely; recursion is
      allowed, but only non-recursive grammars get the fast recogniser and the exact length
      distribution.
    * ``rules``: ``(lhs, rhs)`` pairs, ``rhs`` a non-empty tuple of symbol ids. Rule order per
      symbol is kept (the uniform sampler indexes into it).
    * ``terminals``: ``(1, .., T)``.

    ``ValueError`` for an unknown symbol, a nonterminal without rules, a duplicate rule, an id
    clash with the token layout (module docstring), or a nonterminal that derives no string.
    """

    name: str
    start: int
    levels: tuple[tuple[int, ...], ...]
    rules: tuple[tuple[int, tuple[int, ...]], ...]
    terminals: tuple[int, ...] = (1, 2, 3)

    def __post_init__(self):
        t = len(self.terminals)
        if t < 1 or tuple(self.terminals) != tuple(range(1, t + 1)):
            raise ValueError(f"CFG {self.name!r}: terminals must be (1, .., T), got "
                             f"{self.terminals}")
        nts = [x for lv in self.levels for x in lv]
        if len(set(nts)) != len(nts) or not nts:
            raise ValueError(f"CFG {self.name!r}: levels must list each nonterminal once")
        bad = [x for x in nts if not isinstance(x, (int, np.integer)) or x <= t + 1]
        if bad:
            raise ValueError(f"CFG {self.name!r}: nonterminal ids must be integers > T + 1 = "
                             f"{t + 1} (0 is eos, 1..T terminals, T+1 bos); got {bad}")
        if self.start not in self.levels[0]:
            raise ValueError(f"CFG {self.name!r}: start {self.start} must be in levels[0]")
        known, seen = set(nts) | set(self.terminals), set()
        for lhs, rhs in self.rules:
            if lhs not in set(nts):
                raise ValueError(f"CFG {self.name!r}: rule lhs {lhs} is not a nonterminal")
            if not rhs or any(s not in known for s in rhs):
                raise ValueError(f"CFG {self.name!r}: rule {lhs} -> {rhs} must be a non-empty "
                                 "sequence of known symbols")
            if (lhs, tuple(rhs)) in seen:
                raise ValueError(f"CFG {self.name!r}: duplicate rule {lhs} -> {rhs}")
            seen.add((lhs, tuple(rhs)))
        missing = [x for x in nts if x not in {lhs for lhs, _ in self.rules}]
        if missing:
            raise ValueError(f"CFG {self.name!r}: nonterminals {missing} have no rules")
        productive = set(self.terminals)
        while True:
            new = {lhs for lhs, rhs in self.rules if all(s in productive for s in rhs)}
            if new <= productive:
                break
            productive |= new
        if set(nts) - productive:
            raise ValueError(f"CFG {self.name!r}: nonterminals {sorted(set(nts) - productive)} "
                             "derive no terminal string")

    # -- token layout -------------------------------------------------------------------------
    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def bos_id(self) -> int:
        return len(self.terminals) + 1

    @property
    def vocab_size(self) -> int:
        """Token ids a model needs: eos, the terminals, bos."""
        return len(self.terminals) + 2

    # -- structure ----------------------------------------------------------------------------
    @property
    def nonterminals(self) -> tuple[int, ...]:
        return tuple(x for lv in self.levels for x in lv)

    @functools.cached_property
    def productions(self) -> dict:
        """``{nonterminal: (rhs, ..)}`` in rule order."""
        out: dict = {x: [] for x in self.nonterminals}
        for lhs, rhs in self.rules:
            out[lhs].append(tuple(rhs))
        return {k: tuple(v) for k, v in out.items()}

    @functools.cached_property
    def topo_order(self) -> tuple[int, ...] | None:
        """Nonterminals children-first, or None when the grammar is recursive."""
        order, state = [], {}

        def visit(x) -> bool:
            if x in self.terminals or state.get(x) == 2:
                return True
            if state.get(x) == 1:
                return False
            state[x] = 1
            for rhs in self.productions[x]:
                for s in rhs:
                    if not visit(s):
                        return False
            state[x] = 2
            order.append(x)
            return True

        for x in self.nonterminals:
            if not visit(x):
                return None
        return tuple(order)

    @property
    def is_recursive(self) -> bool:
        return self.topo_order is None

    @property
    def is_layered(self) -> bool:
        """Every rule of a level-d nonterminal uses level-(d+1) symbols only."""
        nxt = list(self.levels[1:]) + [self.terminals]
        return all(set(s for rhs in self.productions[x] for s in rhs) <= set(nxt[d])
                   for d, lv in enumerate(self.levels) for x in lv)

    @functools.cached_property
    def length_ranges(self) -> dict:
        """``{symbol: (shortest, longest)}`` derivable lengths (non-recursive grammars)."""
        self._need_acyclic("length_ranges")
        rng = {t: (1, 1) for t in self.terminals}
        for x in self.topo_order:
            spans = [(sum(rng[s][0] for s in rhs), sum(rng[s][1] for s in rhs))
                     for rhs in self.productions[x]]
            rng[x] = (min(a for a, _ in spans), max(b for _, b in spans))
        return rng

    @property
    def min_len(self) -> int:
        return self.length_ranges[self.start][0]

    @property
    def max_len(self) -> int:
        return self.length_ranges[self.start][1]

    def rooted_at(self, symbol: int, name: str | None = None) -> "CFG":
        """The sub-grammar of the nonterminals reachable from ``symbol``, which becomes the
        start symbol (levels keep their order; empty ones are dropped)."""
        if symbol not in self.productions:
            raise ValueError(f"CFG {self.name!r}: {symbol} is not a nonterminal")
        keep, todo = {symbol}, [symbol]
        while todo:
            for rhs in self.productions[todo.pop()]:
                for s in rhs:
                    if s in self.productions and s not in keep:
                        keep.add(s)
                        todo.append(s)
        levels = [tuple(x for x in lv if x in keep) for lv in self.levels]
        first = next(d for d, lv in enumerate(levels) if symbol in lv)
        levels = [(symbol,)] + [tuple(x for x in lv if x != symbol) for lv in levels[first:]]
        return CFG(name or f"{self.name}@{symbol}", symbol, tuple(lv for lv in levels if lv),
                   tuple((l, r) for l, r in self.rules if l in keep), self.terminals)

    def _need_acyclic(self, what: str) -> None:
        if self.is_recursive:
            raise ValueError(f"CFG {self.name!r} is recursive: {what} needs a grammar without "
                             "recursion (finite language)")

    def __repr__(self) -> str:
        return (f"CFG({self.name!r}, start={self.start}, {len(self.nonterminals)} nonterminals, "
                f"{len(self.rules)} rules, T={len(self.terminals)})")


def _cfg3f() -> CFG:
    # (lhs, (rhs, ..)) exactly as in PhysicsLM4's configs/cfg3f.json (module docstring)
    table = (
        (22, ((20, 21), (20, 19, 21), (21, 19, 19), (20, 20))),
        (19, ((18, 16, 18), (17, 18), (18, 18))),
        (20, ((16, 16), (16, 17), (17, 16, 18))),
        (21, ((18, 17), (17, 16), (16, 17, 18), (16, 18))),
        (16, ((15, 15), (13, 15, 13), (14, 13), (14, 14))),
        (17, ((15, 14, 13), (14, 15), (15, 14))),
        (18, ((14, 15, 13), (15, 13, 13), (13, 15))),
        (13, ((11, 12), (12, 11, 12), (10, 12, 11))),
        (14, ((10, 12), (12, 10, 12), (12, 11), (10, 12, 12))),
        (15, ((10, 11, 11), (11, 11, 10), (10, 10), (12, 12, 11))),
        (10, ((8, 9, 9), (9, 7, 9), (7, 9, 9))),
        (11, ((8, 8), (9, 7), (9, 7, 7))),
        (12, ((7, 9, 7), (9, 8), (8, 8, 9))),
        (7, ((2, 2, 1), (3, 2, 2), (3, 1, 2), (3, 2))),
        (8, ((3, 1, 1), (1, 2), (3, 3, 1))),
        (9, ((1, 2, 1), (3, 3), (1, 1))),
    )
    levels = ((22,), (19, 20, 21), (16, 17, 18), (13, 14, 15), (10, 11, 12), (7, 8, 9))
    return CFG("cfg3f", 22, levels, tuple((l, r) for l, rs in table for r in rs), (1, 2, 3))


CFG3F = _cfg3f()

GRAMMARS: dict[str, CFG] = {
    "cfg3f": CFG3F,
    "cfg3f_d5": CFG3F.rooted_at(20, "cfg3f_d5"),
    "cfg3f_d4": CFG3F.rooted_at(16, "cfg3f_d4"),
    "cfg3f_d3": CFG3F.rooted_at(13, "cfg3f_d3"),
}


def get_grammar(name: str) -> CFG:
    """``GRAMMARS[name]``; ``ValueError`` listing the presets otherwise."""
    if name not in GRAMMARS:
        raise ValueError(f"grammar={name!r} is not a preset; allowed: {tuple(GRAMMARS)}")
    return GRAMMARS[name]


# --------------------------------------------------------------------------------------------
# sampling

@functools.lru_cache(maxsize=32)
def _tables(cfg: CFG):
    """Per-symbol-id arrays: number of rules, first rule index; rule rhs table and lengths."""
    size = max(cfg.nonterminals) + 1
    n_rules = np.zeros(size, np.int64)
    first = np.zeros(size, np.int64)
    rhs_list = []
    for x in cfg.nonterminals:
        first[x], n_rules[x] = len(rhs_list), len(cfg.productions[x])
        rhs_list.extend(cfg.productions[x])
    width = max(len(r) for r in rhs_list)
    rhs = np.zeros((len(rhs_list), width), np.int32)
    rhs_len = np.array([len(r) for r in rhs_list], np.int64)
    for i, r in enumerate(rhs_list):
        rhs[i, :len(r)] = r
    return n_rules, first, rhs, rhs_len


def sample_sentences(cfg: CFG, n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` sentences (int32 arrays of terminal ids ``1..T``, no bos/eos), each drawn by
    expanding the start symbol with a uniformly chosen rule per nonterminal occurrence. All
    sentences expand together, one rewrite of every nonterminal per step (vectorised); the
    draws depend only on ``rng`` and ``n``."""
    n = check_int("n", n, 0)
    if n == 0:
        return []
    n_rules, first, rhs, rhs_len = _tables(cfg)
    seq = np.full(n, cfg.start, np.int32)
    owner = np.arange(n)
    while True:
        nt = n_rules[seq] > 0
        if not nt.any():
            break
        rule = first[seq[nt]] + rng.integers(0, n_rules[seq[nt]])
        lens = np.ones(len(seq), np.int64)
        lens[nt] = rhs_len[rule]
        start = np.cumsum(lens) - lens
        total = int(start[-1] + lens[-1])
        if total > _MAX_SAMPLE_LEN and np.bincount(owner, lens).max() > _MAX_SAMPLE_LEN:
            raise ValueError(f"CFG {cfg.name!r}: sampling grew past {_MAX_SAMPLE_LEN} symbols "
                             "(a recursive grammar whose expansion does not terminate)")
        out = np.empty(total, np.int32)
        out[start[~nt]] = seq[~nt]
        pos = start[nt]
        for j in range(rhs.shape[1]):
            m = rhs_len[rule] > j
            out[pos[m] + j] = rhs[rule[m], j]
        owner = np.repeat(owner, lens)
        seq = out
    cuts = np.cumsum(np.bincount(owner, minlength=n))[:-1]
    return [s.copy() for s in np.split(seq, cuts)]


def sample_sentence(cfg: CFG, rng: np.random.Generator) -> np.ndarray:
    """One sentence (``sample_sentences(cfg, 1, rng)[0]``)."""
    return sample_sentences(cfg, 1, rng)[0]


# --------------------------------------------------------------------------------------------
# length distribution

@functools.lru_cache(maxsize=32)
def _length_pmfs(cfg: CFG) -> dict:
    cfg._need_acyclic("length_distribution")
    pmf = {t: np.array([0.0, 1.0]) for t in cfg.terminals}
    for x in cfg.topo_order:
        rules = []
        for rhs in cfg.productions[x]:
            p = np.array([1.0])
            for s in rhs:
                p = np.convolve(p, pmf[s])
            rules.append(p)
        out = np.zeros(max(len(p) for p in rules))
        for p in rules:
            out[:len(p)] += p / len(rules)
        pmf[x] = out
    return pmf


def length_distribution(cfg: CFG) -> np.ndarray:
    """float64 ``p`` with ``p[l]`` = P(a sampled sentence has ``l`` terminals), exact (the
    generating function of the uniform rule choice; non-recursive grammars)."""
    return _length_pmfs(cfg)[cfg.start].copy()


def length_stats(cfg: CFG, quantiles: Sequence[float] = (0.05, 0.5, 0.95)) -> dict:
    """Exact ``min``, ``max``, ``mean``, ``std`` and quantiles ``p<q>`` of the sentence length."""
    p = length_distribution(cfg)
    l = np.arange(len(p))
    mean = float((p * l).sum())
    out = {"min": cfg.min_len, "max": cfg.max_len, "mean": mean,
           "std": float(np.sqrt((p * (l - mean) ** 2).sum()))}
    cdf = np.cumsum(p)
    for q in quantiles:
        out[f"p{round(q * 100):d}"] = int(np.searchsorted(cdf, q - 1e-12))
    return out


# --------------------------------------------------------------------------------------------
# recognition

def _as_sentence(cfg: CFG, sentence) -> np.ndarray | None:
    """int64 terminal ids, or None when the sequence cannot be a sentence (empty, non-terminal
    ids such as eos/bos, not 1-D)."""
    s = np.asarray(sentence)
    if s.ndim != 1 or s.size == 0 or s.dtype.kind not in "iub":
        return None
    s = s.astype(np.int64)
    if s.min() < 1 or s.max() > len(cfg.terminals):
        return None
    return s


class _Chart:
    """A symbol's (or rule prefix's) chart over a batch of sentences."""

    __slots__ = ("lo", "hi", "arr")

    def __init__(self, lo: int, hi: int, arr: np.ndarray):
        # arr bool [S, hi - lo + 1, P]: arr[s, l - lo, p] = derives tokens p .. p+l-1 of s
        self.lo, self.hi, self.arr = lo, hi, arr


# Symbols that can derive more than _EXPAND_ABOVE terminals get no chart: they are expanded
# top-down from the start positions reachable so far (cfg3f: the root and level 1), provided
# all their parents are expanded and at most _MAX_PATHS rule paths lead to them from the start.
_EXPAND_ABOVE = 128
_MAX_PATHS = 64


@functools.lru_cache(maxsize=32)
def _expanded(cfg: CFG) -> frozenset:
    ranges = cfg.length_ranges
    paths = dict.fromkeys(cfg.nonterminals, 0)
    paths[cfg.start] = 1
    needs_chart, out = set(), set()
    for x in reversed(cfg.topo_order):  # parents before children
        if x == cfg.start or (x not in needs_chart and ranges[x][1] > _EXPAND_ABOVE
                              and paths[x] <= _MAX_PATHS):
            out.add(x)
            for rhs in cfg.productions[x]:
                for y in rhs:
                    if y in paths:
                        paths[y] += paths[x]
        else:
            needs_chart.update(y for rhs in cfg.productions[x] for y in rhs)
    return frozenset(out)


def _product(a: _Chart, b: _Chart, n: int) -> _Chart | None:
    """Chart of the concatenation ``a b``: C[s, k + m, p] |= A[s, k, p] & B[s, m, p + k]
    (lengths offset by ``lo``), spans clipped to ``n`` tokens; loops over the narrower
    factor."""
    lo, hi = a.lo + b.lo, min(a.hi + b.hi, n)
    if lo > n:
        return None
    s_, _, p_ = a.arr.shape
    wa, wb, wc = a.hi - a.lo + 1, b.hi - b.lo + 1, hi - lo + 1
    c = np.zeros((s_, wc, p_), bool)
    if wa <= wb:
        for i in range(wa):
            k, cnt = a.lo + i, min(wb, wc - i)
            if k > n or cnt <= 0:
                break
            left = a.arr[:, i, :p_ - k]
            if left.any():
                c[:, i:i + cnt, :p_ - k] |= left[:, None, :] & b.arr[:, :cnt, k:]
    else:
        pad = np.zeros((s_, p_ + wa), bool)
        for j in range(wb):
            cnt = min(wa, wc - j)
            if cnt <= 0:
                break
            col = b.arr[:, j, :]
            if not col.any():
                continue
            pad[:, :p_ - a.lo] = col[:, a.lo:]
            pad[:, p_ - a.lo:] = False
            # win[s, kk, p] = pad[s, p + kk] = B[s, j, p + a.lo + kk]
            win = np.lib.stride_tricks.as_strided(
                pad, (s_, cnt, p_), (pad.strides[0], pad.strides[1], pad.strides[1]),
                writeable=False)
            c[:, j:j + cnt, :] |= a.arr[:, :cnt, :] & win
    return _Chart(lo, hi, c)


def _accepts_acyclic(cfg: CFG, sents: list[np.ndarray]) -> np.ndarray:
    """Band CYK for a batch of sentences (module docstring)."""
    n = max(len(s) for s in sents)
    s_, p_ = len(sents), n + 1
    toks = np.zeros((s_, n), np.int64)
    for i, s in enumerate(sents):
        toks[i, :len(s)] = s
    charts: dict = {}
    for t in cfg.terminals:
        arr = np.zeros((s_, 1, p_), bool)
        arr[:, 0, :n] = toks == t
        charts[t] = _Chart(1, 1, arr)
    ranges = cfg.length_ranges
    expand = _expanded(cfg)
    prefix: dict = {}

    def chain(rhs: tuple) -> _Chart | None:
        if rhs in prefix:
            return prefix[rhs]
        if len(rhs) == 1:
            out = charts.get(rhs[0])
        else:
            head, last = chain(rhs[:-1]), charts.get(rhs[-1])
            out = None if head is None or last is None else _product(head, last, n)
        prefix[rhs] = out
        return out

    for x in cfg.topo_order:  # bottom-up charts of the symbols not expanded
        if x in expand or ranges[x][0] > n:
            continue
        lo, hi = ranges[x][0], min(ranges[x][1], n)
        arr = np.zeros((s_, hi - lo + 1, p_), bool)
        for rhs in cfg.productions[x]:
            r = chain(rhs)
            if r is not None:
                arr[:, r.lo - lo:r.hi - lo + 1, :] |= r.arr
        charts[x] = _Chart(lo, hi, arr)

    def advance(reach: np.ndarray, sym: int) -> np.ndarray:
        """Positions where ``sym`` can end, given the positions ``reach`` it may start at."""
        out = np.zeros_like(reach)
        if sym in expand:
            for rhs in cfg.productions[sym]:
                r = reach
                for y in rhs:
                    r = advance(r, y)
                    if not r.any():
                        break
                out |= r
            return out
        ch = charts.get(sym)
        if ch is not None:
            for i in range(ch.hi - ch.lo + 1):
                l = ch.lo + i
                out[:, l:] |= reach[:, :p_ - l] & ch.arr[:, i, :p_ - l]
        return out

    start = np.zeros((s_, p_), bool)
    start[:, 0] = True
    return advance(start, cfg.start)[np.arange(s_), [len(s) for s in sents]]


@functools.lru_cache(maxsize=32)
def _binarised(cfg: CFG):
    """``(unit_closure, binary)`` for the generic CYK: ``binary[(B, C)]`` = lhs set of the
    binary rules (intermediate symbols are ``("mid", rule, k)`` tuples), ``unit_closure[Y]`` =
    the symbols deriving ``Y`` through unit rules (Y included)."""
    binary: dict = {}
    units: dict = {}
    for ri, (lhs, rhs) in enumerate(cfg.rules):
        if len(rhs) == 1:
            units.setdefault(rhs[0], set()).add(lhs)
            continue
        left = rhs[0]
        for k in range(1, len(rhs) - 1):
            mid = ("mid", ri, k)
            binary.setdefault((left, rhs[k]), set()).add(mid)
            left = mid
        binary.setdefault((left, rhs[-1]), set()).add(lhs)
    closure = {}
    for y in set(units) | set(cfg.terminals) | set(cfg.nonterminals):
        seen, todo = {y}, [y]
        while todo:
            for a in units.get(todo.pop(), ()):
                if a not in seen:
                    seen.add(a)
                    todo.append(a)
        closure[y] = frozenset(seen)
    return closure, binary


def _accepts_generic(cfg: CFG, s: np.ndarray) -> bool:
    closure, binary = _binarised(cfg)
    n = len(s)
    chart = [[None] * (n + 1) for _ in range(n)]  # chart[i][l]: symbols deriving s[i:i+l]
    for i in range(n):
        chart[i][1] = set(closure[int(s[i])])
    for l in range(2, n + 1):
        for i in range(n - l + 1):
            cell = set()
            for k in range(1, l):
                for b in chart[i][k]:
                    for c in chart[i + k][l - k]:
                        for a in binary.get((b, c), ()):
                            cell |= closure.get(a, {a})
            chart[i][l] = cell
    return cfg.start in chart[0][n]


def accepts_batch(cfg: CFG, sentences: Iterable, chunk: int = 64) -> np.ndarray:
    """bool [N]: whether the grammar derives each sentence (sequences of terminal ids; anything
    else, e.g. an empty sequence or one holding eos/bos, is rejected). Exact. Non-recursive
    grammars: band CYK on chunks of ``chunk`` sentences of similar length; recursive ones: a
    set-based CYK per sentence (slow; small grammars only)."""
    chunk = check_int("chunk", chunk, 1)
    sents = [_as_sentence(cfg, s) for s in sentences]
    ok = np.zeros(len(sents), bool)
    if cfg.is_recursive:
        for i, s in enumerate(sents):
            ok[i] = s is not None and _accepts_generic(cfg, s)
        return ok
    lo, hi = cfg.min_len, cfg.max_len
    idx = [i for i, s in enumerate(sents) if s is not None and lo <= len(s) <= hi]
    idx.sort(key=lambda i: len(sents[i]))
    for b in range(0, len(idx), chunk):
        part = idx[b:b + chunk]
        ok[part] = _accepts_acyclic(cfg, [sents[i] for i in part])
    return ok


def accepts(cfg: CFG, sentence) -> bool:
    """Whether ``cfg`` derives ``sentence`` (terminal ids 1..T; see ``accepts_batch``)."""
    return bool(accepts_batch(cfg, [sentence])[0])


def derivable_strings(cfg: CFG, max_len: int) -> set[tuple[int, ...]]:
    """Every terminal string of at most ``max_len`` symbols the grammar derives, by exhaustive
    leftmost derivation (sentential forms never shrink: no empty rules). Exponential; a
    brute-force reference for tiny grammars (tests)."""
    max_len = check_int("max_len", max_len, 1)
    out, seen, todo = set(), set(), [(cfg.start,)]
    prods = cfg.productions
    while todo:
        form = todo.pop()
        i = next((k for k, s in enumerate(form) if s in prods), None)
        if i is None:
            out.add(form)
            continue
        for rhs in prods[form[i]]:
            new = form[:i] + rhs + form[i + 1:]
            if len(new) <= max_len and new not in seen:
                seen.add(new)
                todo.append(new)
    return out


# --------------------------------------------------------------------------------------------
# n-gram ids (the paper's variants (ii) n-gram encoding and (iii) n-gram decoding)

def ngram_ids(tokens, n: int, vocab: int) -> np.ndarray:
    """int64, shaped like ``tokens`` (time on the last axis): position ``i`` holds the id of
    ``(x_{i-n+1}, .., x_i)`` in a ``vocab ** n`` table, ``sum_j x_{i-j} * vocab ** j``. The
    current token has weight 1 and the oldest ``vocab ** (n-1)``. Positions before the start
    count as id 0 (the paper's pad-0 rule, A.3.1 of the spec; 0 is also eos here). ``n = 1``
    returns the tokens. A bijection onto ``[0, vocab ** n)``. For a cfg token stream use
    ``vocab = cfg.vocab_size`` (5 for cfg3f: eos, 3 terminals, bos)."""
    x = np.asarray(tokens)
    n, vocab = check_int("n", n, 1), check_int("vocab", vocab, 2)
    if x.dtype.kind not in "iu":
        raise ValueError(f"ngram_ids: tokens must be integers, got dtype {x.dtype}")
    if vocab ** n >= 2 ** 63:
        raise ValueError(f"ngram_ids: vocab ** n = {vocab}**{n} does not fit int64 "
                         "(small vocabularies only; hash into a table for large ones)")
    x = x.astype(np.int64)
    if x.size and (x.min() < 0 or x.max() >= vocab):
        raise ValueError(f"ngram_ids: token ids must be in [0, {vocab}), got "
                         f"[{x.min()}, {x.max()}]")
    out = x.copy()
    t = x.shape[-1] if x.ndim else 0
    for j in range(1, min(n, t)):
        out[..., j:] += x[..., :t - j] * vocab ** j
    return out


def ngram_targets(tokens, n: int, vocab: int) -> np.ndarray:
    """The joint n-gram target of variant (iii): position ``i`` holds the id of the next ``n``
    tokens ``(x_{i+1}, .., x_{i+n})``. This is ``ngram_ids`` of the window ending at
    ``x_{i+n}``, with positions past the end counted as 0. The first predicted token (the one a
    sampler keeps) is ``id // vocab ** (n - 1)``."""
    x = np.asarray(tokens)
    pad = np.zeros(x.shape[:-1] + (n,), x.dtype if x.dtype.kind in "iu" else np.int64)
    full = ngram_ids(np.concatenate([x, pad], axis=-1), n, vocab)
    return full[..., n:]


# --------------------------------------------------------------------------------------------
# the ``task:cfg`` source

_MIN_ACCEPT = 0.05  # smallest P(length <= max_len) allowed (rejection sampling cost)


@dataclasses.dataclass(frozen=True)
class CfgTaskConfig(TaskConfig):
    """``task:cfg(grammar=<preset>,max_len=<int>)``: one grammar sentence per episode.

    Episode tokens are ``bos s_1 .. s_n`` (ids in the module docstring; the ``task:`` stream
    adds the eos separator). Each sentence is drawn with uniform rule choice. With ``max_len``
    (> 0) a sentence longer than ``max_len`` terminals is redrawn, so the length distribution is
    the grammar's truncated at ``max_len``; ``max_len`` must leave at least a 5% chance per
    draw. ``0`` (the default) means the grammar's longest sentence, so nothing is redrawn.
    ``length = max_len + 1`` (bos included) is what the block packing reserves. With
    ``cfg3f_d5`` (length 244, mean episode 98) a 256-token window holds one sentence; a
    512-token window about three. The splits draw from the same distribution with disjoint
    seed streams. Small grammars can repeat sentences across splits (``cfg3f_d3``'s language is
    finite and small).

    ``answer_mask`` marks the sentence's terminals (query 0). ``seedjax.eval.task_scoring``
    would report teacher-forced next-symbol accuracy over them, which is not the paper's
    metric: that is ``seedjax.eval.cfg_accuracy.generation_accuracy``. The loss covers every
    token (``loss_on = "all"``), so the model also learns to emit the eos after a complete
    sentence.
    """

    grammar: str = "cfg3f_d5"
    max_len: int = 0
    name: ClassVar[str] = "cfg"
    code: ClassVar[int] = 8
    size_field: ClassVar[str] = "max_len"

    def __post_init__(self):
        check_choice("cfg.grammar", self.grammar, tuple(GRAMMARS))
        check_int("cfg.max_len", self.max_len, 0)
        g = self.cfg
        if self.max_len:
            cdf = np.cumsum(length_distribution(g))
            p = float(cdf[min(self.max_len, len(cdf) - 1)])
            if self.max_len > g.max_len or p < _MIN_ACCEPT:
                low = int(np.searchsorted(cdf, _MIN_ACCEPT))
                raise ValueError(
                    f"cfg.max_len={self.max_len} must be 0 (no limit) or in [{low}, "
                    f"{g.max_len}] for grammar {self.grammar!r} (sentences are {g.min_len}.."
                    f"{g.max_len} terminals; P(length <= max_len) = {p:.3g} must be >= "
                    f"{_MIN_ACCEPT})")

    @property
    def cfg(self) -> CFG:
        return GRAMMARS[self.grammar]

    @property
    def limit(self) -> int:
        """The longest sentence an episode can hold (terminals)."""
        return self.max_len or self.cfg.max_len

    @property
    def length(self) -> int:
        return self.limit + 1

    @property
    def alphabet(self) -> str:  # the terminal ids as characters (\x01..)
        return "".join(chr(t) for t in self.cfg.terminals)

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        while True:
            s = sample_sentence(self.cfg, rng)
            if len(s) <= self.limit:
                break
        toks = np.concatenate([[self.cfg.bos_id], s]).astype(np.int32)
        ans = np.ones(len(toks), bool)
        ans[0] = False
        return Episode(toks, ans, np.zeros(len(toks), bool),
                       np.where(ans, 0, -1).astype(np.int32))
