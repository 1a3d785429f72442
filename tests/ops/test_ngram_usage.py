"""Over-encoding table usage (``seedjax.ops.ngram_usage``): hit and collision counts on
hand-made streams, agreement with the JAX row ids, and the structured collisions of a modulus
that is a multiple of V (the paper's Table 4)."""
import pathlib
import textwrap
import warnings

import jax.numpy as jnp
import numpy as np
import pytest

from seedjax.ops.ngram_usage import table_usage, usage_metrics
from seedjax.nn.over_encoding import OverEncodingConfig
from seedjax.ops.ngram_rows import ngram_rows, segments_of


def test_known_counts_on_a_hand_made_stream():
    """Known values: V = 10, 2-grams of [1, 2, 1, 2, 4] have ids 1, 12, 21, 12, 24 (4 distinct,
    (2,1) twice). m = 13: rows 1, 12, 8, 12, 11, no collision. m = 11: rows 1, 1, 10, 1, 2, so
    ids 1 and 12 share row 1: 2 of 4 n-grams and 3 of 5 positions collide."""
    c = OverEncodingConfig(10, 4, m=13, n=2, boundary="none")
    u = table_usage(c, [1, 2, 1, 2, 4])[0]
    assert (u["ngrams"], u["rows_hit"], u["collision_rate"], u["max_row_hits"]) == (4, 4, 0.0, 2)
    c = OverEncodingConfig(10, 4, m=11, n=2, boundary="none")
    u = table_usage(c, [1, 2, 1, 2, 4])[0]
    assert (u["ngrams"], u["rows_hit"], u["max_ngrams_per_row"]) == (4, 3, 2)
    assert u["collision_rate"] == 0.5 and u["token_collision_rate"] == 0.6
    assert usage_metrics([u])["oe/collision_rate/s0"] == 0.5


def test_rows_agree_with_the_jax_path():
    """Property: the host-side rows give the same row multiset as ``ngram_rows`` (int32 JAX)."""
    c = OverEncodingConfig(50_000, 8, m=999_983, n=3, k=2)
    toks = np.random.default_rng(0).integers(0, 50_000, (2, 64))
    toks[:, 10] = 0
    rows = np.asarray(ngram_rows(jnp.asarray(toks), vocab_size=c.vocab_size,
                                 orders=c.slice_orders, moduli=c.moduli,
                                 segments=segments_of(jnp.asarray(toks), "eos", 0, None)))
    usage = table_usage(c, toks)
    for s, u in enumerate(usage):
        assert u["rows_hit"] == len(np.unique(rows[..., s]))
        assert u["positions"] == toks.size


def test_multiple_of_v_collides_structurally():
    """Property: with m = 16 V the previous token enters only mod 16, so on real text (bytes of a
    stdlib module: ~1-2k distinct 2-grams for 4k rows) many more distinct 2-grams share rows
    than with the nearby prime 16 V - 15, whose collisions are the random-hashing ones."""
    toks = np.frombuffer(pathlib.Path(textwrap.__file__).read_bytes(), np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = table_usage(OverEncodingConfig(256, 8, m=16 * 256, n=2, allow_collisions=True),
                          toks)[0]
    good = table_usage(OverEncodingConfig(256, 8, m=16 * 256 - 15, n=2), toks)[0]
    assert bad["ngrams"] == good["ngrams"] and bad["ngrams"] < 16 * 256
    assert bad["collision_rate"] > 2 * good["collision_rate"], (bad, good)


def test_bad_tokens_raise():
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 10\)"):
        table_usage(OverEncodingConfig(10, 4, m=13, n=2), [1, 10])
