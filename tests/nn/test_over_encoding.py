"""Over-encoding (``seedjax.nn.over_encoding``, ``seedjax.ops.ngram_rows``): exact n-gram row ids
against Python big integers, the injectivity check, Algorithm 1 against a direct numpy
computation, the flat-table / block-diagonal equivalence, decode with a history equal to the
full forward (across document boundaries), the optimizer labels, and bad kwargs."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.scipy.linalg import block_diag

from seedjax.models import LM, LMConfig
from seedjax.nn.over_encoding import OverEncodingConfig, OverEncodingEmbed, slice_layout
from seedjax.nn.params import param_metadata
from seedjax.ops.ngram_rows import check_moduli, lag_period, ngram_rows, segments_of


def _reference_rows(tokens, segments, vocab, orders, moduli, offsets):
    """Pure-Python big-integer Algorithm 1: sum_a x_{t-a} V^a mod M, pad 0 before the start or
    in another segment."""
    b, t = tokens.shape
    out = np.zeros((b, t, len(orders)), np.int64)
    for i in range(b):
        for j in range(t):
            for s, (n, m, off) in enumerate(zip(orders, moduli, offsets)):
                g = 0
                for a in range(n):
                    p = j - a
                    inside = p >= 0 and (segments is None or segments[i, p] == segments[i, j])
                    g += (int(tokens[i, p]) if inside else 0) * vocab**a
                out[i, j, s] = g % m + off
    return out


@pytest.mark.parametrize("vocab,orders,moduli", [
    (256, (2, 2, 3, 3), (65_521, 65_523, 65_525, 65_527)),
    (50_280, (2, 3), (12_800_000, 12_800_002)),
    (128_256, (2, 3, 4), (2**31 - 1, 2**31 - 3, 2**31 - 5)),
    (200_000, (2, 3, 4, 5), (2_147_483_629, 1_000_003, 3, 99_991)),
])
@pytest.mark.parametrize("boundary", ["eos", "segment", "none"])
def test_rows_equal_big_integer_reference(vocab, orders, moduli, boundary):
    """Property: int32 row ids (JAX in its default 32-bit mode) equal exact big-integer
    arithmetic for V up to 200k, n up to 5, moduli up to 2^31 - 1, with document boundaries."""
    assert not jax.config.jax_enable_x64
    rng = np.random.default_rng(vocab)
    tokens = rng.integers(0, vocab, (3, 24))
    tokens[:, [0, 5, 6, 13]] = 7                     # eos (id 7) at the start, twice, inside
    tokens[1] = np.maximum(tokens[1], vocab - 3)     # the largest ids
    seg_ids = np.cumsum(rng.random((3, 24)) < 0.2, axis=1)
    offsets = tuple(range(len(moduli)))              # flat-table offsets (rows stay < 2^31)
    segs = segments_of(jnp.asarray(tokens), boundary, 7, jnp.asarray(seg_ids))
    got = ngram_rows(jnp.asarray(tokens, jnp.int32), vocab_size=vocab, orders=orders,
                     moduli=moduli, offsets=offsets, segments=segs)
    ref_segs = None if segs is None else np.asarray(segs)
    want = _reference_rows(tokens, ref_segs, vocab, orders, moduli, offsets)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), want)


def test_eos_boundary_semantics():
    """Known values: the token after an eos looks back at nothing; the eos keeps its look-back."""
    tokens = jnp.array([[3, 4, 0, 5, 6]])     # eos id 0 at position 2
    segs = segments_of(tokens, "eos", 0, None)
    rows = np.asarray(ngram_rows(tokens, vocab_size=10, orders=(2,), moduli=(1000,),
                                 segments=segs))[0, :, 0]
    np.testing.assert_array_equal(rows, [3, 4 + 30, 0 + 40, 5, 6 + 50])


def test_injectivity_check_flags_the_papers_table():
    """Known value: m = 12,800,000 with Llama-3's V = 128,256 has lag-1 period 50,000 (spec
    A.13): a warning naming the period; a modulus that is a multiple of V is an error unless
    the table is exact (m >= V^n)."""
    assert lag_period(128_256, 12_800_000, 1) == 50_000
    assert lag_period(128_256, 12_800_000, 2) == 3_125
    with pytest.warns(UserWarning, match="lag 1 has period 50000"):
        notes = check_moduli(128_256, (12_800_000,), (3,))
    assert any("lag 2 has period 3125" in n for n in notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_moduli(50_280, (12_800_000,), (2,)) == []   # OLMoE's V is fine for 2-grams
        assert check_moduli(5, (125,), (3,)) == []                # exact 3-gram table (5^3 rows)
    with pytest.raises(ValueError, match="multiple of the vocabulary size 256"):
        check_moduli(256, (64 * 256,), (2,))


def _cfg(**kw):
    base = dict(vocab_size=64, d_model=24, m=997, n=3, k=2)
    return OverEncodingConfig(**{**base, **kw})


def test_layout_follows_algorithm_1():
    """Known values: S = k(n-1) slices of width D/(k(n-1)); moduli m, m+2, ...; flat offsets;
    rows padded to row_multiple; m * D n-gram parameters in total (OE-m)."""
    c = _cfg()
    assert (c.n_slices, c.slice_width, c.slice_orders) == (4, 6, (2, 2, 3, 3))
    assert c.moduli == (997, 999, 1001, 1003) and c.offsets == (0, 997, 1996, 2997)
    assert c.table_rows == 4096 and c.table_rows % c.row_multiple == 0
    assert [s["order"] for s in slice_layout(c)] == [2, 2, 3, 3]
    assert _cfg(orders=(3,), k=4).slice_orders == (3, 3, 3, 3)


@pytest.mark.parametrize("norm", ["mean", "ngram_mean", "sqrt"])
@pytest.mark.parametrize("unigram", [True, False])
def test_forward_equals_numpy_algorithm_1(norm, unigram):
    """Property: OE(x) = [E_V(x_t) + sum_s T[row_s] W_s] normalised per ``norm``, computed in
    numpy from the module's own parameters and the big-integer row ids."""
    c = _cfg(norm=norm, unigram=unigram, bias=True)
    oe = OverEncodingEmbed(c, rngs=nnx.Rngs(0))
    oe.proj_bias[...] = jax.random.normal(jax.random.key(3), oe.proj_bias.shape)
    tokens = np.random.default_rng(0).integers(0, 64, (2, 9))
    tokens[0, 4] = 0
    segs = np.asarray(segments_of(jnp.asarray(tokens), "eos", 0, None))
    rows = _reference_rows(tokens, segs, 64, c.slice_orders, c.moduli, c.offsets)
    table, proj = np.asarray(oe.ngram_table[...]), np.asarray(oe.proj[...])
    ngram = sum(table[rows[..., s]] @ proj[s] for s in range(c.n_slices))
    ngram = ngram + np.asarray(oe.proj_bias[...]).sum(0)
    x = np.asarray(oe.unigram.table[...])[tokens] if unigram else 0.0   # input term only
    n = c.n_slices + unigram
    want = {"mean": (x + ngram) / n, "ngram_mean": x + ngram / n,
            "sqrt": (x + ngram) / np.sqrt(n)}[norm]
    np.testing.assert_allclose(np.asarray(oe(jnp.asarray(tokens))), want, rtol=1e-5, atol=1e-7)


def test_flat_slices_times_block_diagonal_equal_per_slice_projections():
    """Property: the concatenated slices [.., S w] times the block-diagonal [S w, S D], summed
    over the S output blocks, equals sum_s e_s W_s (what ``project_slices`` computes)."""
    oe = OverEncodingEmbed(_cfg(), rngs=nnx.Rngs(1))
    e = jax.random.normal(jax.random.key(0), (2, 5, 4, 6))
    proj = oe.proj[...]
    per_slice = sum(e[:, :, s] @ proj[s] for s in range(4))
    big = e.reshape(2, 5, 24) @ block_diag(*proj)            # [.., S D]
    np.testing.assert_allclose(big.reshape(2, 5, 4, 24).sum(2), per_slice, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(oe.project_slices(e), per_slice, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("boundary", ["eos", "segment", "none"])
def test_decode_with_history_equals_full_forward(boundary):
    """Property: a 2-layer LM with over-encoding (n = 3) decoded one token at a time with the
    cache (KV caches + the (B, n-1) token history) gives the full forward's logits at every
    position, including positions right after a document boundary."""
    cfg = LMConfig(vocab_size=64, d_model=24, n_layers=2, n_heads=2, mlp_dim=32, max_seq_len=16,
                   embed="over_encoding", embed_kwargs=dict(m=997, n=3, k=2, boundary=boundary))
    model = LM(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 10), 1, 64).at[:, 4].set(0)
    seg = jnp.cumsum(jnp.zeros((2, 10), jnp.int32).at[:, 6].set(1), axis=1)
    if boundary != "segment":
        seg = None

    @nnx.jit
    def call(model, toks, seg, cache):   # one compile per shape (eager dispatch is slower)
        kw = {} if seg is None else {"segment_ids": seg}
        out = model(toks, cache=cache, **kw)
        return out.logits, out.cache

    full, _ = call(model, tokens, seg, None)
    piece = lambda a, b: None if seg is None else seg[:, a:b]
    out, cache = call(model, tokens[:, :3], piece(0, 3), model.init_cache(2, 10))
    steps = [out]
    for t in range(3, 10):
        out, cache = call(model, tokens[:, t:t + 1], piece(t, t + 1), cache)
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=2e-5, atol=2e-5)
    np.testing.assert_array_equal(cache.embed.tokens, tokens[:, -2:])


def test_table_labels_and_tied_head():
    """The n-gram table is excluded from weight decay and has its own lr group; the tied head
    reads the 1-gram table."""
    cfg = LMConfig(vocab_size=64, d_model=24, n_layers=1, n_heads=2, mlp_dim=32, max_seq_len=8,
                   embed="over_encoding", embed_kwargs=dict(m=997, n=2))
    model = LM(cfg, rngs=nnx.Rngs(0))
    decay = param_metadata(model, "weight_decay", True)["embed"]
    group = param_metadata(model, "lr_group", "default")["embed"]
    assert decay["ngram_table"] is False and group["ngram_table"] == "ngram_tables"
    assert decay["proj"] is True and group["proj"] == "default"
    x = jax.random.normal(jax.random.key(0), (1, 4, 24))
    np.testing.assert_allclose(model.head(x, model.embed), x @ model.embed.unigram.table[...].T,
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw,match", [
    (dict(n=1), "n must be an integer >= 2"),
    (dict(k=0), "k must be an integer >= 1"),
    (dict(m=0), "m must be an integer >= 1"),
    (dict(m=-5), "m must be an integer >= 1"),
    (dict(k=5), "not divisible by k"),
    (dict(boundary="bos"), "boundary='bos' is not allowed"),
    (dict(norm="max"), "norm='max' is not allowed"),
    (dict(orders=(1, 2)), "orders must be distinct integers >= 2"),
    (dict(m=64 * 17), "multiple of the vocabulary size"),
    (dict(table_sharding="ring"), "table_sharding='ring' is not allowed"),
])
def test_bad_config_names_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(**kw)


def test_collision_ablation_is_allowed_explicitly():
    """A modulus that is a multiple of V (the paper's Table 4 row) needs allow_collisions=True,
    which turns the error into a warning."""
    with pytest.warns(UserWarning, match="lag 1 has period 17"):
        c = _cfg(m=64 * 17, n=2, k=1, allow_collisions=True)
    assert c.moduli == (1088,)


def test_ot_mtp_reads_the_over_encoded_input_embeddings():
    """OT = OE + MTP-DS: the MTP module's embedding of x_{t+1} is the over-encoded input
    embedding of the sequence (so x_{t+1} keeps its look-back at x_t), passed by the LM; the
    total loss is finite and the extra loss is logged."""
    cfg = LMConfig(vocab_size=64, d_model=24, n_layers=1, n_heads=2, mlp_dim=32, max_seq_len=16,
                   embed="over_encoding", embed_kwargs=dict(m=997, n=3, k=2),
                   head="over_decoding", head_kwargs=dict(mode="mtp_ds"))
    model = LM(cfg, rngs=nnx.Rngs(0))
    x = jax.random.randint(jax.random.key(0), (2, 9), 0, 64)
    seen = {}
    orig = model.head.training_losses

    def spy(*a, input_embeddings=None, **kw):
        seen["e"] = input_embeddings
        return orig(*a, input_embeddings=input_embeddings, **kw)

    model.head.training_losses = spy
    out = model(x[:, :-1], targets=x[:, 1:])
    np.testing.assert_allclose(seen["e"], model.embed(x[:, :-1]), rtol=1e-6)
    assert np.isfinite(float(out.aux_losses["od/mtp_ce_2"]))


def test_offloaded_table_decodes_the_same_tokens():
    """Property: with the n-gram table moved to host RAM (lookups through a host callback), the
    logits and a greedy generation equal the on-device model's, and no device array holds the
    table any more."""
    from seedjax.eval.sampling import generate
    cfg = LMConfig(vocab_size=64, d_model=24, n_layers=1, n_heads=2, mlp_dim=32, max_seq_len=16,
                   embed="over_encoding", embed_kwargs=dict(m=997, n=3, k=2))
    model = LM(cfg, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.key(1), (2, 4), 1, 64)
    want_logits = model(prompt).logits
    want = generate(model, prompt, 6, temperature=0.0)
    model.embed.offload_table()
    assert model.embed.ngram_table.shape == (0, 6)
    np.testing.assert_allclose(model(prompt).logits, want_logits, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(generate(model, prompt, 6, temperature=0.0), want)
