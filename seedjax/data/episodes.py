"""Synthetic-task episodes: the record, the config base class, seed streams and stacking.

Every synthetic task (``seedjax.data.memory_tasks``, ``seedjax.data.looped_tasks``,
``seedjax.data.capo``) is a frozen config dataclass deriving from ``TaskConfig``; its
``generate(rng, split)`` draws one ``Episode`` from a ``np.random.Generator``. NumPy only.

Episode arrays (``Episode``; ``generate_episodes`` stacks N episodes along a leading axis):

* ``tokens`` int32 [T]: token ids. Byte-text tasks use printable ASCII (< 128); symbolic tasks
  use ids from ``SYMBOL_OFFSET = 128`` up (disjoint from ASCII, inside the byte tokenizer's 256,
  so both kinds mix in one ``task:`` stream). ``T <= cfg.length`` (``cfg.length`` is exact for
  fixed-length tasks and the maximum for variable-length ones);
* ``answer_mask`` bool [T]: True exactly on the scored answer tokens themselves. The convention
  throughout is *answer tokens*: a model scores token ``t`` by its prediction from position
  ``t - 1`` (answers never start an episode);
* ``control_mask`` bool [T]: answer tokens of control queries (ICL withheld symbols; otherwise
  all False), reported separately and never part of the task accuracy;
* ``query_id`` int32 [T]: index of the query an answer/control token belongs to, -1 elsewhere
  (for per-query exact match).

Determinism: ``generate_episodes(cfg, n, seed, split)`` draws from
``episode_rng(seed, split, cfg.code)`` = ``np.random.default_rng(SeedSequence([seed,
SPLITS[split], cfg.code]))`` sequentially, so the same arguments give the same episodes, the
first ``k`` of ``n`` episodes do not depend on ``n``, and the ``train``/``val``/``test`` splits
use disjoint seed streams. A task may also define its held-out set by ``split`` (the ``test``
split of ``mano`` uses only the longest expressions, that of ``multihop`` only held-out
questions).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import numpy as np

from seedjax.validation import check_choice, check_int

__all__ = ["Episode", "TaskConfig", "TextBuilder", "SPLITS", "SYMBOL_OFFSET", "MAX_SIZE",
           "check_range", "check_fraction", "distinct_strings", "random_strings", "episode_rng",
           "pad_episode", "generate_episodes"]

SPLITS = {"train": 1, "val": 2, "test": 3}
SYMBOL_OFFSET = 128  # first token id of symbolic (non-ASCII) task vocabularies
MAX_SIZE = 1024  # upper bound of the size fields (episodes are meant to fit a context window)


class Episode(NamedTuple):
    tokens: np.ndarray        # int32 [T]
    answer_mask: np.ndarray   # bool [T]: scored answer tokens
    control_mask: np.ndarray  # bool [T]: control (unscored, reported separately) answer tokens
    query_id: np.ndarray      # int32 [T]: query index on answer/control tokens, else -1

    @property
    def text(self) -> str:
        """The episode as text (byte-text tasks only; symbolic tasks: ``cfg.decode``)."""
        return self.tokens.astype(np.uint8).tobytes().decode("ascii")


def check_range(field: str, value, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]``; ValueError naming the field and range otherwise."""
    try:
        v = check_int(field, value, lo)
    except ValueError:
        v = None
    if v is None or v > hi:
        raise ValueError(f"{field}={value!r} must be an integer in [{lo}, {hi}]")
    return v


def check_fraction(field: str, value) -> float:
    """``value`` as a float in (0, 1]; ValueError naming the field otherwise."""
    ok = (not isinstance(value, bool) and isinstance(value, (int, float))
          and 0.0 < float(value) <= 1.0)
    if not ok:
        raise ValueError(f"{field}={value!r} must be a number in (0, 1]")
    return float(value)


class TextBuilder:
    """Accumulates text pieces; answer pieces carry a query id and scored/control flag."""

    def __init__(self):
        self.pieces: list[tuple[str, int, int]] = []  # (text, query id, 0 text/1 answer/2 control)

    def text(self, s: str) -> None:
        self.pieces.append((s, -1, 0))

    def answer(self, s: str, qid: int, scored: bool = True) -> None:
        self.pieces.append((s, qid, 1 if scored else 2))

    def build(self) -> Episode:
        text = "".join(p for p, _, _ in self.pieces)
        tokens = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int32)
        kind = np.concatenate([np.full(len(p), k, np.int8) for p, _, k in self.pieces])
        qid = np.concatenate([np.full(len(p), q, np.int32) for p, q, _ in self.pieces])
        return Episode(tokens, kind == 1, kind == 2, qid)


def random_strings(rng: np.random.Generator, chars: str, n: int, length: int) -> list[str]:
    idx = rng.integers(0, len(chars), size=(n, length))
    return ["".join(chars[i] for i in row) for row in idx]


def distinct_strings(rng: np.random.Generator, chars, n: int, length: int) -> list[str]:
    """``n`` distinct random strings of ``length`` symbols of ``chars`` (a string or a sequence
    of strings, e.g. syllables), sampled without replacement."""
    codes = rng.choice(len(chars) ** length, size=n, replace=False)
    out = []
    for c in codes:
        s = []
        for _ in range(length):
            c, r = divmod(int(c), len(chars))
            s.append(chars[r])
        out.append("".join(s))
    return out


class TaskConfig:
    """Shared methods; subclasses define ``name``, ``code``, ``size_field``, ``length``,
    ``alphabet`` (or ``chance``), ``generate``; ``loss_on`` and ``vocab_size`` have defaults."""

    name: ClassVar[str]
    code: ClassVar[int]        # the task's seed-stream code (unique per task)
    size_field: ClassVar[str | None]  # the field ``scaled_to`` grows or shrinks (None: none)
    # "all": a ``task:`` stream trains on every token of the episode; "answers": only on its
    # answer tokens (the pipeline then emits a loss mask, ``seedjax.data.synthetic``)
    loss_on: ClassVar[str] = "all"
    # True: the sizes are the experiment's, not the context window's (``scaled_to`` keeps them)
    fixed_size: ClassVar[bool] = False

    @property
    def length(self) -> int:  # token count of every episode (the maximum if lengths vary)
        raise NotImplementedError

    @property
    def alphabet(self) -> str:  # characters an answer token can take
        raise NotImplementedError

    @property
    def chance(self) -> float:
        """Token accuracy of guessing uniformly over the answer alphabet."""
        return 1.0 / len(self.alphabet)

    @property
    def vocab_size(self) -> int:
        """One more than the largest token id an episode can hold (ASCII tasks: 128)."""
        return 128

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        raise NotImplementedError

    def _fields(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self))

    def check_fits(self, seq_len: int) -> None:
        """Raises ``ValueError`` if an episode (``self.length`` tokens) exceeds ``seq_len``."""
        seq_len = check_int("seq_len", seq_len, 1)
        if self.length > seq_len:
            fix = (f"raise seq_len to at least {self.length}" if self.size_field is None else
                   f"lower {self.name}.{self.size_field} (or the other sizes; "
                   f"{type(self).__name__}.scaled_to(seq_len) finds the largest "
                   f"{self.size_field} that fits) or raise seq_len")
            raise ValueError(
                f"task {self.name!r} ({self._fields()}): an episode is {self.length} tokens, more "
                f"than seq_len={seq_len}; {fix}.")

    def scaled_to(self, seq_len: int):
        """This config with the largest valid ``size_field`` whose episodes fit ``seq_len``
        (``fixed_size`` tasks: this config itself, ValueError if it does not fit)."""
        seq_len = check_int("seq_len", seq_len, 1)
        if self.fixed_size:
            self.check_fits(seq_len)
            return self
        best = None
        for v in range(1, MAX_SIZE + 1):  # length grows with the size field
            try:
                cfg = dataclasses.replace(self, **{self.size_field: v})
            except ValueError:
                continue
            if cfg.length > seq_len:
                break
            best = cfg
        if best is None:
            raise ValueError(
                f"task {self.name!r} ({self._fields()}): no {self.name}.{self.size_field} makes "
                f"an episode fit seq_len={seq_len}; shrink the other sizes or raise seq_len.")
        return best


def episode_rng(seed: int, split: str, code: int) -> np.random.Generator:
    """The generator of the ``split`` episodes of the task with seed-stream ``code`` (a task's
    ``cfg.code``; 0 is the ``task:`` mixture stream) for ``seed``."""
    seed = check_int("seed", seed, 0)
    check_choice("split", split, tuple(SPLITS))
    code = check_int("task code", code, 0)
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], code]))


def pad_episode(ep: Episode, length: int) -> Episode:
    """``ep`` right-padded to ``length`` tokens: token 0 (eos), masks False, query_id -1."""
    pad = length - len(ep.tokens)
    if pad < 0:
        raise ValueError(f"episode of {len(ep.tokens)} tokens exceeds length={length}")
    if pad == 0:
        return ep
    return Episode(*(np.pad(a, (0, pad), constant_values=v)
                     for a, v in zip(ep, (0, False, False, -1))))


def generate_episodes(cfg: TaskConfig, n: int, seed: int = 0, split: str = "test") -> dict:
    """``n`` episodes stacked: ``{"tokens": int32 [n, T], "answer_mask", "control_mask": bool
    [n, T], "query_id": int32 [n, T]}`` with ``T = cfg.length`` (shorter episodes right-padded
    by ``pad_episode``)."""
    n = check_int("n_episodes", n, 1)
    rng = episode_rng(seed, split, cfg.code)
    eps = [pad_episode(cfg.generate(rng, split), cfg.length) for _ in range(n)]
    return {k: np.stack([getattr(e, k) for e in eps]) for k in Episode._fields}

