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

The exact recogniser (``accepts``, ``accepts_batch``) is ``seedjax.data.cfg_recognise``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar, Sequence

import numpy as np

from seedjax.data.episodes import Episode, TaskConfig
from seedjax.validation import check_choice, check_int

__all__ = ["CFG", "CFG3F", "GRAMMARS", "EOS_ID", "CfgTaskConfig", "get_grammar",
           "sample_sentences", "sample_sentence", "length_distribution", "length_stats", "ngram_ids",
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
