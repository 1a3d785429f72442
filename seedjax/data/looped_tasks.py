"""The Ouro paper's section-6 manipulation tasks: seeded NumPy generators of symbolic episodes.

Both tasks use a small symbolic vocabulary (``cfg.symbols``): symbol ``i`` is token id
``SYMBOL_OFFSET + i`` (128 + i: above ASCII, inside the byte tokenizer's 256 ids, so a
``task:`` stream can mix them with the byte-text tasks). ``cfg.vocab_size`` is one more than
the largest id; a ``task:`` source refuses a config whose ids do not fit the tokenizer.
``cfg.decode(tokens)`` renders an episode as its symbols. Episodes are
``seedjax.data.episodes.Episode`` records; ``answer_mask`` marks the single answer token, the
only token a ``task:`` stream trains on (``loss_on = "answers"``, as in the paper), and the
only token ``seedjax.eval.task_scoring`` scores (exact match of that token).

* ``mano`` (``ManoConfig``) -- knowledge manipulation (paper App. B.2, Allen-Zhu's Mano):
  a random expression tree with ``l`` operations over F_p (``modulus`` p, default 23; ops
  ``+ - *`` mod p, leaves uniform in 0..p-1) in prefix notation. ``l ~ U[1, max_ops]`` (L) in
  the train and val splits; the test split uses ``l = L`` only (the paper's evaluation).
  Tokens (``2 l + 5``; ``cfg.length = 2 L + 5``, shorter episodes are right-padded with 0 when
  stacked)::

      <bos> len_3 - * 4 7 + 2 9 <ans> 17         # (4*7 - (2+9)) mod 23 = (5 - 11) mod 23

  The tree shape: the root's left subtree gets ``U[0, l-1]`` of the remaining ``l - 1``
  operations, recursively (every shape has non-zero probability; not uniform over shapes).
  Vocabulary: ``<bos> <ans> + - *``, the numbers ``0..p-1``, ``len_1..len_L`` (3 + p + 2 + L).

* ``multihop`` (``MultiHopConfig``) -- multi-hop QA over a random knowledge graph (paper
  Sec. 6.2 / App. B.3): ``n_layers`` (K) layers of ``people_per_layer`` people, each a single
  name token; for each of ``n_relations`` (|R|) relations every person of layer j < K-1 links to
  a uniformly drawn person of layer j+1. A question starts at a layer-0 person and follows
  ``hops`` (k) relations; the answer is the layer-k person reached. Tokens (``k + 3``)::

      n3 r5 r0 r2 <ans> n41      # n41 = r2(r0(r5(n3))): the first relation is applied first

  All ``people_per_layer * |R|^k`` questions (the paper's 100 * 20^3 = 8e5 pairs) are split
  once per ``world_seed``: ``n_test`` held-out questions (the test split samples only these),
  and ``round(train_fraction * (n_pairs - n_test))`` training questions (the train and val
  splits sample only these), disjoint from the test set. The graph and the split depend on
  ``world_seed`` only (identical for every episode seed and split). Vocabulary: ``<ans>``, the
  relations ``r0..``, the names ``n0..`` (layer-major: layer j's person i is
  ``n{j * people_per_layer + i}``) = ``1 + |R| + K * people_per_layer`` symbols. The paper's
  size (500 names, 20 relations) needs 521 symbols, more than the byte tokenizer holds: its
  episodes can be generated and scored, not streamed by ``task:`` (a clear ValueError).

Differences from the paper: packed episodes are separated by an ``eos`` token but attend to
each other (the paper masks attention across packed pieces); the small defaults fit a CPU.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import numpy as np

from seedjax.data.episodes import (MAX_SIZE, SYMBOL_OFFSET, Episode, TaskConfig, check_fraction,
                                   check_range)
from seedjax.validation import check_int

__all__ = ["ManoConfig", "MultiHopConfig", "LOOPED_TASKS", "mano_value", "multihop_world",
           "SymbolicTask"]

_MAX_PAIRS = 1 << 22  # multihop questions enumerated per world (the paper's 8e5 fits)


class SymbolicTask(TaskConfig):
    """Shared methods of tasks over a symbolic vocabulary (``symbols``, ids from 128)."""

    loss_on: ClassVar[str] = "answers"
    fixed_size: ClassVar[bool] = True

    @property
    def symbols(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        return SYMBOL_OFFSET + len(self.symbols)

    def token(self, symbol: str) -> int:
        """The token id of ``symbol``."""
        return SYMBOL_OFFSET + self._index()[symbol]

    def _index(self) -> dict:
        return _symbol_index(self.symbols)

    def decode(self, tokens) -> str:
        """The symbols of ``tokens`` joined by spaces (padding/eos 0 dropped)."""
        syms = self.symbols
        return " ".join(syms[int(t) - SYMBOL_OFFSET] for t in np.asarray(tokens).reshape(-1)
                        if int(t) != 0)

    def _episode(self, tokens: list[int]) -> Episode:
        """An episode whose last token is the single answer (query 0)."""
        toks = np.asarray(tokens, np.int32)
        ans = np.zeros(len(toks), bool)
        ans[-1] = True
        return Episode(toks, ans, np.zeros(len(toks), bool), np.where(ans, 0, -1).astype(np.int32))


@functools.lru_cache(maxsize=16)
def _symbol_index(symbols: tuple[str, ...]) -> dict:
    return {s: i for i, s in enumerate(symbols)}


_OPS = ("+", "-", "*")


def mano_value(op: str, a: int, b: int, p: int) -> int:
    """``a op b`` in F_p."""
    return {"+": a + b, "-": a - b, "*": a * b}[op] % p


@dataclasses.dataclass(frozen=True)
class ManoConfig(SymbolicTask):
    """Mano: prefix modular-arithmetic trees (module docstring). Length ``2 * max_ops + 5``."""

    modulus: int = 23
    max_ops: int = 8
    name: ClassVar[str] = "mano"
    code: ClassVar[int] = 5
    size_field: ClassVar[str] = "max_ops"

    def __post_init__(self):
        check_range("mano.modulus", self.modulus, 2, MAX_SIZE)
        check_range("mano.max_ops", self.max_ops, 1, 64)

    @property
    def length(self) -> int:
        return 2 * self.max_ops + 5

    @property
    def symbols(self) -> tuple[str, ...]:
        return (("<bos>", "<ans>") + _OPS + tuple(str(i) for i in range(self.modulus))
                + tuple(f"len_{i}" for i in range(1, self.max_ops + 1)))

    @property
    def chance(self) -> float:
        return 1.0 / self.modulus

    def _tree(self, rng: np.random.Generator, n_ops: int, out: list[str]) -> int:
        """Appends a random prefix expression with ``n_ops`` operations to ``out``; its value."""
        if n_ops == 0:
            v = int(rng.integers(self.modulus))
            out.append(str(v))
            return v
        op = _OPS[int(rng.integers(len(_OPS)))]
        n_left = int(rng.integers(n_ops))
        out.append(op)
        a = self._tree(rng, n_left, out)
        b = self._tree(rng, n_ops - 1 - n_left, out)
        return mano_value(op, a, b, self.modulus)

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        n_ops = self.max_ops if split == "test" else int(rng.integers(1, self.max_ops + 1))
        expr: list[str] = []
        value = self._tree(rng, n_ops, expr)
        syms = ["<bos>", f"len_{n_ops}", *expr, "<ans>", str(value)]
        return self._episode([self.token(s) for s in syms])


@functools.lru_cache(maxsize=8)
def multihop_world(n_layers: int, people_per_layer: int, n_relations: int, hops: int,
                   n_test: int, n_train: int, world_seed: int):
    """``(edges, train_q, test_q)`` of a multihop world: ``edges`` int32 [K-1, P, R] (layer j's
    person i --relation r--> layer j+1's person ``edges[j, i, r]``); ``train_q`` and
    ``test_q``: disjoint sorted int64 question ids, question ``q`` = start person
    ``q // R**k`` with relation ``(q // R**(k-1-h)) % R`` at hop h (base-R digits)."""
    rng = np.random.default_rng(np.random.SeedSequence([world_seed, 0x40B5]))
    edges = rng.integers(0, people_per_layer, size=(n_layers - 1, people_per_layer, n_relations),
                         dtype=np.int32)
    perm = rng.permutation(people_per_layer * n_relations ** hops)
    test_q = np.sort(perm[:n_test])
    train_q = np.sort(perm[n_test:n_test + n_train])
    for a in (edges, test_q, train_q):
        a.flags.writeable = False
    return edges, train_q, test_q


@dataclasses.dataclass(frozen=True)
class MultiHopConfig(SymbolicTask):
    """Multi-hop QA over a random layered graph (module docstring). Length ``hops + 3``."""

    n_layers: int = 4
    people_per_layer: int = 16
    n_relations: int = 8
    hops: int = 3
    train_fraction: float = 0.5
    n_test: int = 512
    world_seed: int = 0
    name: ClassVar[str] = "multihop"
    code: ClassVar[int] = 6
    size_field: ClassVar[str] = "hops"

    def __post_init__(self):
        check_range("multihop.n_layers", self.n_layers, 2, MAX_SIZE)
        check_range("multihop.people_per_layer", self.people_per_layer, 2, 1 << 16)
        check_range("multihop.n_relations", self.n_relations, 1, MAX_SIZE)
        check_range("multihop.hops", self.hops, 1, self.n_layers - 1)
        if self.n_pairs > _MAX_PAIRS:
            raise ValueError(
                f"multihop: people_per_layer * n_relations ** hops = {self.n_pairs} questions, "
                f"more than the {_MAX_PAIRS} allowed; lower people_per_layer, n_relations or "
                "hops.")
        check_range("multihop.n_test", self.n_test, 1, self.n_pairs - 1)
        check_fraction("multihop.train_fraction", self.train_fraction)
        check_int("multihop.world_seed", self.world_seed, 0)

    @property
    def n_pairs(self) -> int:
        """All (question, answer) pairs: layer-0 people x relation chains."""
        return self.people_per_layer * self.n_relations ** self.hops

    @property
    def n_train(self) -> int:
        """Training questions: ``train_fraction`` of the pairs not held out (at least 1)."""
        return max(1, round(self.train_fraction * (self.n_pairs - self.n_test)))

    @property
    def length(self) -> int:
        return self.hops + 3

    @property
    def symbols(self) -> tuple[str, ...]:
        return (("<ans>",) + tuple(f"r{i}" for i in range(self.n_relations))
                + tuple(f"n{i}" for i in range(self.n_layers * self.people_per_layer)))

    @property
    def chance(self) -> float:
        return 1.0 / self.people_per_layer

    def world(self):
        """``(edges, train_q, test_q)`` (``multihop_world``)."""
        return multihop_world(self.n_layers, self.people_per_layer, self.n_relations,
                              self.hops, self.n_test, self.n_train, self.world_seed)

    def question(self, q: int) -> tuple[int, list[int], int]:
        """``(start person, relations in hop order, answer person)`` of question id ``q``."""
        edges, _, _ = self.world()
        r, k = self.n_relations, self.hops
        start, rels = int(q) // r ** k, [int(q) // r ** (k - 1 - h) % r for h in range(k)]
        x = start
        for h, rel in enumerate(rels):
            x = int(edges[h, x, rel])
        return start, rels, x

    def tokens(self, q: int) -> list[int]:
        """The token ids of question ``q``: ``name r.. <ans> answer-name``."""
        start, rels, ans = self.question(q)
        base = SYMBOL_OFFSET + 1 + self.n_relations  # first name id
        return ([base + start] + [SYMBOL_OFFSET + 1 + rel for rel in rels]
                + [SYMBOL_OFFSET, base + self.hops * self.people_per_layer + ans])

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        _, train_q, test_q = self.world()
        pool = test_q if split == "test" else train_q
        return self._episode(self.tokens(pool[int(rng.integers(len(pool)))]))


LOOPED_TASKS: dict[str, type] = {"mano": ManoConfig, "multihop": MultiHopConfig}
