"""Capo-lite: synthetic biographies for the knowledge-capacity probe (Ouro paper Sec. 6.1 / B.1,
after Allen-Zhu & Li's bioS(N)). Seeded, NumPy only; byte-text (ASCII) episodes.

A world (``world_seed``) holds ``n_people`` people with distinct names (first name from
``n_first`` pseudo-words, last name from ``n_last``: N0 = n_first * n_last possible names) and
five attributes drawn uniformly and independently from fixed-size value sets: birth date
(month of 12, day 1..28, year of ``n_years`` from 1900), birth city (``n_cities``), university
(``n_universities``), major (``n_majors``), employer (``n_employers``); S0 = 12 * 28 * n_years *
n_cities * n_universities * n_majors * n_employers possible attribute tuples (``cfg.name_sizes``,
``cfg.attr_sizes``). All values are capitalised pseudo-words of two (first names) or three
syllables, distinct across the pools.

An episode is one biography: a random person (uniform over the world, sampled online as in the
paper) in five sentences, each with a template drawn uniformly from three (``TEMPLATES``), the
name first::

    Bado Kesuri was born on March 7, 1954. They grew up in Tomafe. They graduated from Rulepa
    University. They majored in Sivota. They work for Gadume Inc.

* ``tokens`` int32 [T] bytes, ``T <= cfg.length`` (the longest possible biography);
* ``answer_mask`` bool [T]: the attribute-value characters (month, day, year, city, university,
  major, employer), ``query_id`` 0 (date), 1 (city), 2 (university), 3 (major), 4 (employer);
  ``seedjax.eval.task_scoring`` scores them (teacher-forced attribute recall);
* ``cfg.name_mask(ep)`` bool [T]: the name characters (first and last name, not the space).

A ``task:capo(...)`` stream trains on every token (``loss_on = "all"``, as the paper trains on
the whole biography). ``cfg.population(seed)`` gives one biography per person (the set on which
``seedjax.eval.capacity`` measures p1 and p2 and the capacity ratio R(F)). The test split draws
people of the same world (knowledge is memorised, nothing is held out). Differences from the
paper: pseudo-word values instead of real names and places, no gender attribute, fewer and
shorter templates, no attention masking between packed biographies.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import string
from typing import ClassVar

import numpy as np

from seedjax.data.episodes import (Episode, TaskConfig, TextBuilder, check_range, distinct_strings,
                                   episode_rng, pad_episode)
from seedjax.validation import check_int

__all__ = ["CapoConfig", "TEMPLATES", "MONTHS", "capo_world"]

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
N_DAYS = 28
FIRST_YEAR = 1900
_SYLLABLES = tuple(c + v for c in "bdfgklmnprstvz" for v in "aeiou")  # 70
_ATTRS = ("date", "city", "university", "major", "employer")  # query ids 0..4
TEMPLATES = {  # sentence order is fixed; each sentence picks one of its templates
    "date": ("{name} was born on {date}.", "{name} came into this world on {date}.",
             "{name} celebrates their birthday on {date}."),
    "city": (" They grew up in {city}.", " They spent their early years in {city}.",
             " They were raised in {city}."),
    "university": (" They studied at {university} University.",
                   " They graduated from {university} University.",
                   " They received their education at {university} University."),
    "major": (" They majored in {major}.", " Their field of study was {major}.",
              " They focused on {major}."),
    "employer": (" They work for {employer} Inc.", " They are employed by {employer} Inc.",
                 " They joined the staff of {employer} Inc."),
}
_SLOT = re.compile(r"(\{\w+\})")


@functools.lru_cache(maxsize=4)
def capo_world(n_people: int, n_first: int, n_last: int, pool_sizes: tuple[int, ...],
               n_years: int, world_seed: int):
    """``(first, last, pools, people)``: the name pools, the four attribute pools (city,
    university, major, employer) and ``people`` int32 [n_people, 9]: first- and last-name
    index, month 0..11, day 1..28, year index, then city, university, major, employer index."""
    rng = np.random.default_rng(np.random.SeedSequence([world_seed, 0xCA90]))
    first = [w.capitalize() for w in distinct_strings(rng, _SYLLABLES, n_first, 2)]
    words = [w.capitalize() for w in distinct_strings(rng, _SYLLABLES, n_last + sum(pool_sizes), 3)]
    last, pools, at = words[:n_last], [], n_last
    for n in pool_sizes:
        pools.append(words[at:at + n])
        at += n
    names = rng.choice(n_first * n_last, size=n_people, replace=False)
    cols = [names // n_last, names % n_last, rng.integers(0, 12, n_people),
            rng.integers(1, N_DAYS + 1, n_people), rng.integers(0, n_years, n_people)]
    cols += [rng.integers(0, n, n_people) for n in pool_sizes]
    people = np.stack(cols, axis=1).astype(np.int32)
    people.flags.writeable = False
    return tuple(first), tuple(last), tuple(tuple(p) for p in pools), people


@dataclasses.dataclass(frozen=True)
class CapoConfig(TaskConfig):
    """Synthetic biographies (module docstring)."""

    n_people: int = 1000
    n_first: int = 50
    n_last: int = 50
    n_years: int = 100
    n_cities: int = 50
    n_universities: int = 40
    n_majors: int = 30
    n_employers: int = 60
    world_seed: int = 0
    name: ClassVar[str] = "capo"
    code: ClassVar[int] = 7
    size_field: ClassVar[None] = None
    fixed_size: ClassVar[bool] = True

    def __post_init__(self):
        check_range("capo.n_first", self.n_first, 1, len(_SYLLABLES) ** 2)
        for f in ("n_last", "n_cities", "n_universities", "n_majors", "n_employers"):
            check_range(f"capo.{f}", getattr(self, f), 1, 4096)
        check_range("capo.n_years", self.n_years, 1, 100)
        check_range("capo.n_people", self.n_people, 1, min(self.n_first * self.n_last, 1 << 20))
        check_int("capo.world_seed", self.world_seed, 0)

    @property
    def name_sizes(self) -> tuple[int, ...]:
        """Value-set sizes of the name parts (their product is N0)."""
        return (self.n_first, self.n_last)

    @property
    def attr_sizes(self) -> tuple[int, ...]:
        """Value-set sizes of the attributes (month, day, year, city, university, major,
        employer; their product is S0)."""
        return (12, N_DAYS, self.n_years, self.n_cities, self.n_universities, self.n_majors,
                self.n_employers)

    @property
    def alphabet(self) -> str:
        return string.digits + string.ascii_letters

    def world(self):
        """``capo_world`` of this config."""
        pools = (self.n_cities, self.n_universities, self.n_majors, self.n_employers)
        return capo_world(self.n_people, self.n_first, self.n_last, pools, self.n_years,
                          self.world_seed)

    @property
    def length(self) -> int:
        widest = {"name": 4 + 1 + 6, "date": max(map(len, MONTHS)) + 1 + 2 + 2 + 4,
                  **{a: 6 for a in _ATTRS[1:]}}
        return sum(max(len(t) + sum(widest[s[1:-1]] - len(s) for s in _SLOT.findall(t))
                       for t in TEMPLATES[a]) for a in _ATTRS)

    def _values(self, person: int) -> dict:
        """``{slot: [(text, is_value)]}`` of one person."""
        first, last, pools, people = self.world()
        f, la, month, day, year, *rest = (int(v) for v in people[person])
        out = {"name": [(first[f], False), (" ", False), (last[la], False)],
               "date": [(MONTHS[month], True), (" ", False), (str(day), True), (", ", False),
                        (str(FIRST_YEAR + year), True)]}
        for attr, pool, i in zip(_ATTRS[1:], pools, rest):
            out[attr] = [(pool[i], True)]
        return out

    def biography(self, person: int, templates) -> Episode:
        """The biography of ``person`` with template index ``templates[j]`` for sentence j."""
        values, b = self._values(person), TextBuilder()
        for qid, (attr, t) in enumerate(zip(_ATTRS, templates)):
            for piece in _SLOT.split(TEMPLATES[attr][int(t)]):
                if _SLOT.fullmatch(piece):
                    for text, is_value in values[piece[1:-1]]:
                        if is_value:
                            b.answer(text, qid)
                        else:
                            b.text(text)
                elif piece:
                    b.text(piece)
        return b.build()

    def name_mask(self, ep: Episode) -> np.ndarray:
        """bool [len(ep.tokens)]: the first- and last-name characters (every template starts
        with the name)."""
        text = ep.tokens.astype(np.uint8).tobytes().decode("ascii", errors="replace")
        first, _, rest = text.partition(" ")
        last = rest.split(" ", 1)[0]
        mask = np.zeros(len(ep.tokens), bool)
        mask[:len(first)] = True
        mask[len(first) + 1:len(first) + 1 + len(last)] = True
        return mask

    def generate(self, rng: np.random.Generator, split: str = "train") -> Episode:
        person = int(rng.integers(self.n_people))
        return self.biography(person, rng.integers(0, 3, size=len(_ATTRS)))

    def population(self, seed: int = 0) -> dict:
        """One biography per person, in person order, templates drawn from
        ``episode_rng(seed, "test", code)``: ``{"tokens": int32 [N, T], "name_mask",
        "attr_mask": bool [N, T]}``, ``T = cfg.length``, rows right-padded with 0."""
        rng = episode_rng(seed, "test", self.code)
        tokens, names, attrs = [], [], []
        for person in range(self.n_people):
            ep = pad_episode(self.biography(person, rng.integers(0, 3, size=len(_ATTRS))),
                             self.length)
            tokens.append(ep.tokens)
            names.append(self.name_mask(ep))
            attrs.append(ep.answer_mask)
        return {"tokens": np.stack(tokens), "name_mask": np.stack(names),
                "attr_mask": np.stack(attrs)}
