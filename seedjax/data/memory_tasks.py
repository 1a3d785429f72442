"""Memory-intensive synthetic tasks: seeded, NumPy-only generators of byte-token episodes.

Proxies for UltraMemV2's memory evaluations (Table 2: long-context memorisation, multi-round
memorisation, in-context learning; those suites are not public). Every episode is printable
ASCII, so ``ByteTokenizer().decode(ep.tokens)`` is readable, and in the first three tasks every
answer is recoverable from the episode's own earlier text (``facts`` is the exception: its
answers are a fixed world the model must memorise in training).

Tasks (``MEMORY_TASKS``: name -> frozen config dataclass; examples with small sizes):

* ``mqar`` (``MQARConfig``) -- multi-query associative recall; proxies long-context
  memorisation. ``n_pairs`` distinct lowercase keys with random values, ``" |"``, then
  ``n_queries`` distinct keys from the context, each followed by its value (scored)::

      kq:37 fz:02 ab:91 | ab:91 kq:37

* ``multi_round`` (``MultiRoundConfig``) -- multi-round recall; proxies multi-round
  memorisation. One line per round stating ``facts_per_round`` new ``name=value`` facts (names
  unique in the episode); from round ``min_lag + 1`` on, the line ends with a question
  ``? name=value`` about a fact stated at least ``min_lag`` rounds earlier (scored value)::

      tom=48 ann=15
      pat=31 kim=07 ? tom=48
      bob=22 eve=90 ? ann=15

* ``icl`` (``ICLConfig``) -- in-context learning of a random bijection ``f`` of the first
  ``n_symbols`` uppercase letters, drawn per episode; proxies in-context learning.
  ``n_demos`` demonstrations ``x->f(x)`` cover every symbol except ``n_unseen`` withheld ones,
  then ``" |"`` and queries ``x->f(x)``: ``n_queries`` of demonstrated ``x`` (scored) and
  ``n_unseen_queries`` of withheld ``x`` (the control: ``f(x)`` is not inferable; a model that
  knows ``f`` is a bijection can at best pick among the outputs not yet shown, so its accuracy
  is at most ``1 / (n_unseen - i)`` for the ``i``-th control query)::

      C->K D->A F->F C->K | D->A B->J

* ``facts`` (``FactsConfig``) -- parametric fact recall (ours; proxies the knowledge tasks on
  which UltraMem gains most, e.g. TriviaQA in UltraMem Table 1): a fixed world of ``n_facts``
  random ``key=value`` pairs shared by all splits; each episode asks ``n_queries`` of them, so
  the answers come from what training stored in the parameters, not from the context::

      qzk=41 abf=07 mmr=93

Episodes are ``seedjax.data.episodes.Episode`` records (tokens, answer_mask, control_mask,
query_id; shapes and the answer-token convention there) of printable ASCII bytes.

Sizes: ``cfg.length`` is exact, ``cfg.check_fits(seq_len)`` raises a ``ValueError`` naming the
size field when an episode is too long, ``cfg.scaled_to(seq_len)`` picks the largest size that
fits. Train on the tasks with ``data.source="task:..."`` (``seedjax.data.synthetic``); score a
model with ``seedjax.eval.task_scoring``. Determinism: ``seedjax.data.episodes.generate_episodes``
(seed streams ``[seed, split, cfg.code]`` with codes mqar 1, multi_round 2, icl 3, facts 4).
"""
from __future__ import annotations

import dataclasses
import functools
import string
from typing import ClassVar

import numpy as np

from seedjax.data.episodes import (MAX_SIZE, Episode, TaskConfig, TextBuilder, check_range,
                                   distinct_strings, random_strings)
from seedjax.validation import check_choice, check_int

__all__ = ["MQARConfig", "MultiRoundConfig", "ICLConfig", "FactsConfig", "MEMORY_TASKS",
           "CHARSETS", "fact_world"]

CHARSETS = {"digits": string.digits, "lower": string.ascii_lowercase,
            "upper": string.ascii_uppercase}


@dataclasses.dataclass(frozen=True)
class MQARConfig(TaskConfig):
    """Multi-query associative recall. Length ``(n_pairs + n_queries) * (key_len + value_len
    + 2) + 2`` tokens."""

    n_pairs: int = 12
    n_queries: int = 8
    key_len: int = 2
    value_len: int = 2
    value_chars: str = "digits"
    name: ClassVar[str] = "mqar"
    code: ClassVar[int] = 1
    size_field: ClassVar[str] = "n_pairs"

    def __post_init__(self):
        check_range("mqar.key_len", self.key_len, 1, 3)
        check_range("mqar.n_pairs", self.n_pairs, 1, min(26 ** self.key_len, MAX_SIZE))
        check_range("mqar.n_queries", self.n_queries, 1, self.n_pairs)
        check_range("mqar.value_len", self.value_len, 1, 4)
        check_choice("mqar.value_chars", self.value_chars, tuple(CHARSETS))

    @property
    def length(self) -> int:
        return (self.n_pairs + self.n_queries) * (self.key_len + self.value_len + 2) + 2

    @property
    def alphabet(self) -> str:
        return CHARSETS[self.value_chars]

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        keys = distinct_strings(rng, string.ascii_lowercase, self.n_pairs, self.key_len)
        values = random_strings(rng, self.alphabet, self.n_pairs, self.value_len)
        b = TextBuilder()
        b.text(" ".join(f"{k}:{v}" for k, v in zip(keys, values)) + " |")
        for i, j in enumerate(rng.choice(self.n_pairs, size=self.n_queries, replace=False)):
            b.text(f" {keys[j]}:")
            b.answer(values[j], i)
        b.text("\n")
        return b.build()


@dataclasses.dataclass(frozen=True)
class MultiRoundConfig(TaskConfig):
    """Multi-round recall. Length ``n_rounds * facts_per_round * (name_len + value_len + 2)
    + (n_rounds - min_lag) * (name_len + value_len + 4)`` tokens; ``n_rounds - min_lag``
    questions."""

    n_rounds: int = 6
    facts_per_round: int = 2
    name_len: int = 2
    value_len: int = 2
    value_chars: str = "digits"
    min_lag: int = 1
    name: ClassVar[str] = "multi_round"
    code: ClassVar[int] = 2
    size_field: ClassVar[str] = "n_rounds"

    def __post_init__(self):
        check_range("multi_round.name_len", self.name_len, 1, 3)
        if self.facts_per_round == 1:  # round r could only ask round r - min_lag's fact
            raise ValueError(
                "multi_round.facts_per_round=1 must be >= 2 (allowed: 2..16): with one fact per "
                "round every question asks the fact stated exactly min_lag rounds earlier, a "
                "fixed-offset copy rather than recall.")
        check_range("multi_round.facts_per_round", self.facts_per_round, 2, 16)
        hi = min(MAX_SIZE, 26 ** self.name_len // self.facts_per_round)  # names are unique
        check_range("multi_round.n_rounds", self.n_rounds, 2, max(hi, 2))
        if self.n_rounds * self.facts_per_round > 26 ** self.name_len:
            raise ValueError(
                f"multi_round.n_rounds * facts_per_round = {self.n_rounds * self.facts_per_round}"
                f" exceeds the {26 ** self.name_len} distinct names of name_len={self.name_len}")
        check_range("multi_round.min_lag", self.min_lag, 1, self.n_rounds - 1)
        check_range("multi_round.value_len", self.value_len, 1, 4)
        check_choice("multi_round.value_chars", self.value_chars, tuple(CHARSETS))

    @property
    def length(self) -> int:
        w = self.name_len + self.value_len
        return (self.n_rounds * self.facts_per_round * (w + 2)
                + (self.n_rounds - self.min_lag) * (w + 4))

    @property
    def alphabet(self) -> str:
        return CHARSETS[self.value_chars]

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        r_, f_ = self.n_rounds, self.facts_per_round
        names = distinct_strings(rng, string.ascii_lowercase, r_ * f_, self.name_len)
        values = random_strings(rng, self.alphabet, r_ * f_, self.value_len)
        asked = np.zeros(r_ * f_, bool)
        b = TextBuilder()
        for r in range(r_):
            b.text(" ".join(f"{names[i]}={values[i]}" for i in range(r * f_, (r + 1) * f_)))
            if r >= self.min_lag:
                pool = np.arange((r - self.min_lag + 1) * f_)  # facts of rounds <= r - min_lag
                fresh = pool[~asked[pool]]
                i = int(rng.choice(fresh if len(fresh) else pool))
                asked[i] = True
                b.text(f" ? {names[i]}=")
                b.answer(values[i], r - self.min_lag)
            b.text("\n")
        return b.build()


@dataclasses.dataclass(frozen=True)
class ICLConfig(TaskConfig):
    """In-context learning of a random bijection. Length ``5 * (n_demos + n_queries
    + n_unseen_queries) + 2`` tokens."""

    n_symbols: int = 12
    n_demos: int = 16
    n_queries: int = 6
    n_unseen: int = 3
    n_unseen_queries: int = 1
    name: ClassVar[str] = "icl"
    code: ClassVar[int] = 3
    size_field: ClassVar[str] = "n_demos"

    def __post_init__(self):
        check_range("icl.n_symbols", self.n_symbols, 2, 26)
        check_range("icl.n_unseen", self.n_unseen, 0, self.n_symbols - 1)
        n_seen = self.n_symbols - self.n_unseen
        check_range("icl.n_demos", self.n_demos, n_seen, MAX_SIZE)  # every seen x shown
        check_range("icl.n_queries", self.n_queries, 1, n_seen)
        check_range("icl.n_unseen_queries", self.n_unseen_queries, 0,
                     max(self.n_unseen - 1, 0))  # never enough to pin down the last output

    @property
    def length(self) -> int:
        return 5 * (self.n_demos + self.n_queries + self.n_unseen_queries) + 2

    @property
    def alphabet(self) -> str:
        return string.ascii_uppercase[:self.n_symbols]

    @property
    def unseen_chance(self) -> float:
        """Accuracy bound on control queries of a model that knows ``f`` is a bijection."""
        return 1.0 / max(self.n_unseen, 1)

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        sym = self.alphabet
        f = rng.permutation(self.n_symbols)
        order = rng.permutation(self.n_symbols)
        seen, unseen = order[self.n_unseen:], order[:self.n_unseen]
        extra = rng.choice(seen, size=self.n_demos - len(seen), replace=True)
        demos = rng.permutation(np.concatenate([seen, extra]))
        xs = np.concatenate([rng.choice(seen, self.n_queries, replace=False),
                             rng.choice(unseen, self.n_unseen_queries, replace=False)])
        scored = np.arange(len(xs)) < self.n_queries
        perm = rng.permutation(len(xs))
        b = TextBuilder()
        b.text(" ".join(f"{sym[x]}->{sym[f[x]]}" for x in demos) + " |")
        for i, j in enumerate(perm):
            b.text(f" {sym[xs[j]]}->")
            b.answer(sym[f[xs[j]]], i, scored=bool(scored[j]))
        b.text("\n")
        return b.build()


@functools.lru_cache(maxsize=8)
def fact_world(n_facts: int, key_len: int, value_len: int, value_chars: str,
               world_seed: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The fixed (keys, values) of a ``facts`` world: the same for every split and seed."""
    rng = np.random.default_rng(np.random.SeedSequence([world_seed, 0xFAC75]))
    keys = distinct_strings(rng, string.ascii_lowercase, n_facts, key_len)
    return tuple(keys), tuple(random_strings(rng, CHARSETS[value_chars], n_facts, value_len))


@dataclasses.dataclass(frozen=True)
class FactsConfig(TaskConfig):
    """Parametric fact recall. Length ``n_queries * (key_len + value_len + 2)`` tokens.

    Unlike the other tasks the answer is NOT in the episode: a fixed world of ``n_facts``
    ``key=value`` pairs (drawn from ``world_seed``, identical in every split) is only learnable
    from training data, so held-out accuracy measures how many facts the parameters hold --
    the knowledge-capacity claim behind memory layers (UltraMem Table 1's TriviaQA gains)."""

    n_facts: int = 8192
    n_queries: int = 20
    key_len: int = 3
    value_len: int = 2
    value_chars: str = "digits"
    world_seed: int = 0
    name: ClassVar[str] = "facts"
    code: ClassVar[int] = 4
    size_field: ClassVar[str] = "n_queries"

    def __post_init__(self):
        check_range("facts.key_len", self.key_len, 1, 4)
        check_range("facts.n_facts", self.n_facts, 1, min(26 ** self.key_len, 1 << 20))
        check_range("facts.n_queries", self.n_queries, 1, MAX_SIZE)
        check_range("facts.value_len", self.value_len, 1, 4)
        check_choice("facts.value_chars", self.value_chars, tuple(CHARSETS))
        check_int("facts.world_seed", self.world_seed, 0)

    @property
    def length(self) -> int:
        return self.n_queries * (self.key_len + self.value_len + 2)

    @property
    def alphabet(self) -> str:
        return CHARSETS[self.value_chars]

    def world(self) -> dict[str, str]:
        keys, values = fact_world(self.n_facts, self.key_len, self.value_len, self.value_chars,
                                  self.world_seed)
        return dict(zip(keys, values))

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        keys, values = fact_world(self.n_facts, self.key_len, self.value_len, self.value_chars,
                                  self.world_seed)
        b = TextBuilder()
        for i, j in enumerate(rng.integers(0, self.n_facts, size=self.n_queries)):
            b.text(("" if i == 0 else " ") + f"{keys[j]}=")
            b.answer(values[j], i)
        b.text("\n")
        return b.build()


MEMORY_TASKS: dict[str, type] = {"mqar": MQARConfig, "multi_round": MultiRoundConfig,
                                 "icl": ICLConfig, "facts": FactsConfig}
