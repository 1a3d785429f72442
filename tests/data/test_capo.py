"""Capo-lite biographies (seedjax.data.capo): every biography states its person's world values,
the masks mark exactly the names and values, the world and episodes are deterministic by seed,
the value-set sizes are the configured ones, and bad sizes are clear errors."""
import dataclasses

import numpy as np
import pytest

from seedjax.data.capo import MONTHS, TEMPLATES, CapoConfig
from seedjax.data.episodes import generate_episodes
from seedjax.data.synthetic import task_streams
from seedjax.data.tokenizers import ByteTokenizer

CFG = CapoConfig(n_people=60, n_first=10, n_last=10, n_years=20, n_cities=5, n_universities=4,
                 n_majors=3, n_employers=6)


def _spans(mask):
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def test_biographies_state_the_world_values_and_masks_mark_them_exactly():
    """For every person and template combination tried, the text names the person first, and
    the answer mask covers exactly month, day, year, city, university, major and employer (in
    that order, query ids 0,0,0,1,2,3,4) while name_mask covers first and last name."""
    first, last, pools, people = CFG.world()
    rng = np.random.default_rng(0)
    for person in range(CFG.n_people):
        templates = rng.integers(0, 3, size=5)
        ep = CFG.biography(person, templates)
        text = ByteTokenizer().decode(ep.tokens)
        f, la, month, day, year, *rest = people[person]
        want = [MONTHS[month], str(day), str(1900 + year)] + [p[i] for p, i in zip(pools, rest)]
        assert [text[s:e] for s, e in _spans(ep.answer_mask)] == want
        assert [int(ep.query_id[s]) for s, _ in _spans(ep.answer_mask)] == [0, 0, 0, 1, 2, 3, 4]
        assert [text[s:e] for s, e in _spans(CFG.name_mask(ep))] == [first[f], last[la]]
        values = dict(zip(("city", "university", "major", "employer"), want[3:]),
                      name=f"{first[f]} {last[la]}", date=f"{want[0]} {want[1]}, {want[2]}")
        assert text == "".join(TEMPLATES[a][t].format(**values)
                               for a, t in zip(TEMPLATES, templates))
        assert len(ep.tokens) <= CFG.length


def test_world_has_distinct_names_uniform_attributes_and_configured_value_sets():
    """Names are distinct (first, last) pairs; every attribute index lies in its value set;
    pools are distinct pseudo-words; name_sizes/attr_sizes are the configured sizes; no
    biography is longer than cfg.length and all are ASCII."""
    first, last, pools, people = CFG.world()
    assert len({(f, la) for f, la in people[:, :2]}) == CFG.n_people
    assert CFG.name_sizes == (10, 10) and CFG.attr_sizes == (12, 28, 20, 5, 4, 3, 6)
    for col, size in zip(people.T[2:], (12, 29, 20, 5, 4, 3, 6)):
        assert col.min() >= (1 if size == 29 else 0) and col.max() < size
    words = list(first) + list(last) + [w for p in pools for w in p]
    assert len(set(words)) == len(words) and [len(p) for p in pools] == [5, 4, 3, 6]
    eps = generate_episodes(CFG, 200, seed=0, split="train")
    assert eps["tokens"].shape == (200, CFG.length) and eps["tokens"].max() < 128


def test_generation_and_world_deterministic_by_seed():
    """Same seed/split -> same biographies; another seed -> others; the world depends on
    world_seed only; population() is one biography per person in order."""
    a = generate_episodes(CFG, 20, seed=1, split="train")["tokens"]
    np.testing.assert_array_equal(a, generate_episodes(CFG, 20, seed=1, split="train")["tokens"])
    assert (a != generate_episodes(CFG, 20, seed=2, split="train")["tokens"]).any()
    other = dataclasses.replace(CFG, world_seed=1)
    assert not np.array_equal(other.world()[3], CFG.world()[3])
    pop = CFG.population(seed=0)
    assert pop["tokens"].shape == (60, CFG.length)
    first, last, _, people = CFG.world()
    for row, names in zip(pop["tokens"][:5], people[:5]):
        assert ByteTokenizer().decode(row).startswith(f"{first[names[0]]} {last[names[1]]} ")
    np.testing.assert_array_equal(pop["tokens"], CFG.population(seed=0)["tokens"])


def test_capo_streams_train_on_every_token_and_bad_sizes_raise():
    """task:capo needs a window of cfg.length tokens (clear error otherwise) and has no loss
    mask (the paper trains on whole biographies); bad sizes name the field and range."""
    src = "task:capo(n_people=60,n_first=10,n_last=10);blocks=4"
    s = task_streams(src, seq_len=256, seed=0, val_fraction=0.25, tokenizer=ByteTokenizer())
    assert s.train_mask is None and ByteTokenizer().decode(s.train[:256]).split(" ")[2] in (
        "was", "came", "celebrates")
    with pytest.raises(ValueError, match=rf"raise seq_len to at least {CapoConfig().length}"):
        task_streams(src, seq_len=128, seed=0, val_fraction=0.25, tokenizer=ByteTokenizer())
    for kw, msg in [({"n_people": 101, "n_first": 10, "n_last": 10},
                     "capo.n_people=101 must be an integer in [1, 100]"),
                    ({"n_years": 0}, "capo.n_years=0 must be an integer in [1, 100]"),
                    ({"n_cities": 0}, "capo.n_cities=0 must be an integer in [1, 4096]")]:
        with pytest.raises(ValueError) as e:
            CapoConfig(**kw)
        assert str(e.value) == msg
