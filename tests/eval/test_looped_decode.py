"""Looped-LM decoding with physical early exit (seedjax.eval.looped_decode): equality with the
full forward / run-all decoding, the KV policies against an independent reference (run all loops,
then rewrite the caches as the policy says), loops really skipped (counted at run time), left
padding, and the ValueErrors. The released code's greedy decode on the ``ouro_tiny`` fixture
(``../shared/fixtures/ouro_tiny``) is the anchor."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.eval.looped_decode import (KV_POLICIES, looped_generate, loop_stats, resolve_exit,
                                        teacher_forced)
from seedjax.eval.sampling import generate
from seedjax.models import LM, LMConfig

FIXTURE = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "ouro_tiny"
needs_fixture = pytest.mark.skipif(not (FIXTURE / "golden.npz").exists(),
                                   reason=f"Ouro golden fixture not found at {FIXTURE}")
RTOL = 1e-5

TINY = LMConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_dim=48,
                max_seq_len=32, sandwich_norm=True, head="untied", stack="looped",
                stack_kwargs={"loops": 4})


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def make_tiny(seed=0) -> LM:
    """A tiny random looped LM (GQA, T = 4): weights N(0, 0.1^2), norm gains 1 + N(0, 0.1^2),
    an exit gate with spread N(0, 0.5^2) so Q-exit picks different loops for different tokens."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: LM(TINY, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        z = rng.normal(0.0, 0.1, leaf.shape).astype(np.float32)
        return jnp.asarray(1.0 + z if str(path[-1].key) == "scale" else z)

    pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, pure)
    m = nnx.merge(graphdef, state)
    m.layers.exit_gate.kernel[...] = jnp.asarray(rng.normal(0, 0.5, 32), jnp.float32)
    return m


@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


@pytest.fixture(scope="module")
def ouro():
    from seedjax.convert.ouro import load_hf
    return load_hf(str(FIXTURE), dtype=jnp.float32)


@pytest.fixture(scope="module")
def golden():
    return dict(np.load(FIXTURE / "golden.npz"))


def prompts(b, p, vocab, seed=1):
    return np.random.default_rng(seed).integers(1, vocab, (b, p)).astype(np.int32)


# ----------------------------------------------------------------------------- reference

@nnx.jit(static_argnames=("q",))
def _run_all(model, tokens, cache, positions, q):
    out = model(tokens, cache=cache, positions=positions, exit_threshold=q,
                return_loop_logits=False)
    return out.logits[:, -1], out.exit_steps, out.cache


def _rewrite(cache, pos, exits, policy):
    """The policy applied to run-all caches (list over loops of lists over layers) at sequence
    positions ``pos`` (list), with exit loops ``exits`` [B, len(pos)]: last_available copies
    slot e into slots u > e, final_exit_shared copies slot e into every slot."""
    out = [[c._replace(k=np.array(c.k), v=np.array(c.v)) for c in loop] for loop in cache]
    for j, p in enumerate(pos):
        for b in range(exits.shape[0]):
            e = int(exits[b, j])
            for u in range(len(cache)):
                if policy == "final_exit_shared" or u > e:
                    for l, c in enumerate(out[u]):
                        c.k[b, :, p] = cache[e][l].k[b, :, p]
                        c.v[b, :, p] = cache[e][l].v[b, :, p]
    return jax.tree.map(jnp.asarray, out)


def reference_decode(model, prompt, steps, q, policy):
    """Greedy decode that runs every loop for every token (the model's own cached forward) and
    then rewrites the per-loop caches as ``policy`` says (prompt positions too for
    final_exit_shared, whose single cache keeps each prompt token's exit-loop K/V)."""
    b, p = prompt.shape
    logits, exits, cache = _run_all(model, jnp.asarray(prompt), model.init_cache(b, p + steps),
                                    None, q)
    if policy == "final_exit_shared":
        cache = _rewrite(cache, list(range(p)), np.asarray(exits), policy)
    toks, all_logits, all_exits = [], [logits], [np.asarray(exits)[:, -1]]
    for i in range(steps - 1):
        tok = jnp.argmax(all_logits[-1], -1).astype(jnp.int32)
        toks.append(np.asarray(tok))
        logits, exits, cache = _run_all(model, tok[:, None], cache,
                                        jnp.full((b, 1), p + i, jnp.int32), q)
        if policy != "full_per_depth":
            cache = _rewrite(cache, [p + i], np.asarray(exits), policy)
        all_logits.append(logits)
        all_exits.append(np.asarray(exits)[:, -1])
    toks.append(np.asarray(jnp.argmax(all_logits[-1], -1)))
    return (np.stack(toks, 1), np.stack([np.asarray(x) for x in all_logits], 1),
            np.stack(all_exits, 1))


class CountingBody(nnx.Module):
    """Wraps the looped stack's body; a host callback counts every execution of it at run time
    (inside jit, scan and while_loop), i.e. the loops really computed."""

    def __init__(self, inner, counter: list):
        self.inner = inner
        self.tick = lambda: counter.append(1)

    def __call__(self, H, **kw):
        jax.debug.callback(self.tick)
        return self.inner(H, **kw)


# ----------------------------------------------------------------------------- fixture tests

@needs_fixture
def test_q1_runs_every_loop_and_equals_released_cached_decode(ouro, golden):
    """With q = 1.0 (never exit early) every decoded token runs all T = 4 loops under the
    skipping policy last_available, and the greedy decode (tokens and the logits that chose
    them) equals the released code's cached greedy decode on the fixture and seedjax's existing
    cached sampler (seedjax.eval.sampling.generate, greedy)."""
    g = looped_generate(ouro, golden["prompt"], 6, exit_threshold=1.0,
                        kv_policy="last_available", return_logits=True)
    np.testing.assert_array_equal(g.tokens[:, 5:], golden["gen_tokens_use_cache"])
    np.testing.assert_array_equal(g.tokens, np.asarray(generate(ouro, golden["prompt"], 6,
                                                                temperature=0.0)))
    assert rel_err(g.logits.transpose(1, 0, 2), golden["gen_step_logits_use_cache"]) < RTOL
    assert (g.token_loops == 4).all() and (g.batch_loops == 4).all()
    assert (g.exit_steps == 3).all()


@needs_fixture
def test_full_per_depth_equals_full_forward_at_every_position(ouro):
    """Q-exit decoding (q = 0.5, per-token exit loops vary) with full_per_depth equals the full
    (uncached) forward with the same exit rule at every decoded position: tokens, exit loops
    and the logits (1e-5 relative); its step is the model's own run-all-then-select."""
    prompt = prompts(2, 5, 320)
    g = looped_generate(ouro, prompt, 8, exit_threshold=0.5, kv_policy="full_per_depth",
                        return_logits=True)
    full = ouro(jnp.asarray(g.tokens[:, :-1]), exit_threshold=0.5, return_loop_logits=False)
    np.testing.assert_array_equal(np.asarray(full.exit_steps)[:, 4:], g.exit_steps)
    assert len(np.unique(g.exit_steps)) > 1
    assert rel_err(g.logits, np.asarray(full.logits)[:, 4:]) < RTOL
    np.testing.assert_array_equal(np.argmax(np.asarray(full.logits)[:, 4:], -1), g.tokens[:, 5:])
    assert (g.token_loops == 4).all()


# ----------------------------------------------------------------------------- tiny model

@pytest.mark.parametrize("policy", ["last_available",
                                    pytest.param("final_exit_shared", marks=pytest.mark.slow)])
def test_physical_exit_equals_run_all_then_policy_rewrite_and_skips_loops(policy):
    """Physical early exit (batch 1, q = 0.6) equals an independent reference that runs every
    loop for every token and then rewrites the caches as the policy says (tokens, exit loops,
    logits 1e-5); a token that exits at loop t runs exactly t + 1 loops: the body executions
    counted at run time are T for the prefill plus sum(exit + 1) over the decode steps."""
    counter = []
    model = make_tiny()
    model.layers.body = CountingBody(model.layers.body, counter)
    prompt = prompts(1, 4, TINY.vocab_size)
    g = looped_generate(model, prompt, 10, exit_threshold=0.6, kv_policy=policy,
                        return_logits=True)
    jax.effects_barrier()
    ran = len(counter)
    toks, logits, exits = reference_decode(model, prompt, 10, 0.6, policy)
    np.testing.assert_array_equal(g.tokens[:, 4:], toks)
    np.testing.assert_array_equal(g.exit_steps, exits)
    assert rel_err(g.logits, logits) < RTOL
    decode_exits = g.exit_steps[0, 1:]
    assert decode_exits.min() < 3 and len(np.unique(decode_exits)) > 1  # real early exits
    np.testing.assert_array_equal(g.token_loops[0, 1:], decode_exits + 1)
    np.testing.assert_array_equal(g.batch_loops[1:], decode_exits + 1)
    assert ran == 4 + int(np.sum(decode_exits + 1)) < 4 * 10


def test_exit_at_step_runs_k_plus_one_loops(tiny):
    """exit_at_step = 1 under last_available runs exactly 2 loops per decoded token (batch of
    2: the batched forward too), always returns loop 1's logits, and the statistics say so."""
    prompt = prompts(2, 4, TINY.vocab_size)
    g = looped_generate(tiny, prompt, 6, exit_at_step=1, kv_policy="last_available")
    assert (g.token_loops[:, 1:] == 2).all() and (g.batch_loops[1:] == 2).all()
    assert (g.exit_steps == 1).all()
    s = loop_stats(g, 4)
    assert s["mean_loops"] == 2.0 and s["loops_histogram"] == {1: 0, 2: 10, 3: 0, 4: 0}
    assert s["saved_fraction"] == 0.5


@pytest.mark.slow  # ~20 s; the default suite keeps the per-policy checks above
def test_left_padded_batch_equals_per_sample(tiny):
    """A left-padded batch (prompt lengths 3 and 6) decodes exactly like each sample alone
    (tokens, exit loops, loops per token; logits 1e-5) with Q-exit and last_available."""
    rows = [prompts(1, 3, TINY.vocab_size, seed=2)[0], prompts(1, 6, TINY.vocab_size, seed=3)[0]]
    batch = np.zeros((2, 6), np.int32)
    mask = np.zeros((2, 6), bool)
    for i, r in enumerate(rows):
        batch[i, 6 - len(r):], mask[i, 6 - len(r):] = r, True
    kw = dict(exit_threshold=0.6, kv_policy="last_available", return_logits=True)
    g = looped_generate(tiny, batch, 7, prompt_mask=mask, **kw)
    for i, r in enumerate(rows):
        one = looped_generate(tiny, r[None], 7, **kw)
        np.testing.assert_array_equal(g.tokens[i, 6:], one.tokens[0, len(r):])
        np.testing.assert_array_equal(g.exit_steps[i], one.exit_steps[0])
        np.testing.assert_array_equal(g.token_loops[i], one.token_loops[0])
        assert rel_err(g.logits[i], one.logits[0]) < RTOL
    # the batch runs the deepest row's loops
    np.testing.assert_array_equal(g.batch_loops[1:], g.token_loops[:, 1:].max(0))


@pytest.mark.slow
@pytest.mark.parametrize("policy", KV_POLICIES)
def test_left_padded_batch_equals_per_sample_every_policy(tiny, policy):
    """Left-padded batches equal per-sample decoding for every KV policy (q = 0.5)."""
    rows = [prompts(1, 2, TINY.vocab_size, seed=4)[0], prompts(1, 5, TINY.vocab_size, seed=5)[0]]
    batch = np.zeros((2, 5), np.int32)
    mask = np.zeros((2, 5), bool)
    for i, r in enumerate(rows):
        batch[i, 5 - len(r):], mask[i, 5 - len(r):] = r, True
    kw = dict(exit_threshold=0.5, kv_policy=policy, return_logits=True)
    g = looped_generate(tiny, batch, 6, prompt_mask=mask, **kw)
    for i, r in enumerate(rows):
        one = looped_generate(tiny, r[None], 6, **kw)
        np.testing.assert_array_equal(g.tokens[i, 5:], one.tokens[0, len(r):])
        assert rel_err(g.logits[i], one.logits[0]) < RTOL


@pytest.mark.slow
def test_full_per_depth_batch_equals_reference_and_weighted_exit(tiny):
    """full_per_depth equals the run-all reference in a batch (tokens and exit loops exactly,
    logits 1e-5: the reference's separately jitted steps round differently from the scanned
    decode); weighted exit decodes like the full forward with weighted_exit."""
    prompt = prompts(2, 4, TINY.vocab_size)
    g = looped_generate(tiny, prompt, 6, exit_threshold=0.6, return_logits=True)
    toks, logits, exits = reference_decode(tiny, prompt, 6, 0.6, "full_per_depth")
    np.testing.assert_array_equal(g.tokens[:, 4:], toks)
    np.testing.assert_array_equal(g.exit_steps, exits)
    assert rel_err(g.logits, logits) < RTOL
    w = looped_generate(tiny, prompt, 6, weighted_exit=True, return_logits=True)
    full = tiny(jnp.asarray(w.tokens[:, :-1]), weighted_exit=True, return_loop_logits=False)
    assert rel_err(w.logits, np.asarray(full.logits)[:, 3:]) < RTOL


# ----------------------------------------------------------------------------- errors

def test_value_errors(tiny):
    """Bad q (0, > 1, not a number), unknown KV policy, exit_at_step outside [0, T), loops < 1,
    weighted exit with a skipping policy, a right-padded prompt mask, too many tokens and a
    plain (non-looped) model are ValueErrors naming the problem."""
    p = prompts(1, 3, TINY.vocab_size)
    for q in (0.0, 1.5, -0.1, "0.5"):
        with pytest.raises(ValueError, match="exit_threshold"):
            looped_generate(tiny, p, 2, exit_threshold=q)
    with pytest.raises(ValueError, match="kv_policy='shared'"):
        looped_generate(tiny, p, 2, kv_policy="shared")
    for k in (4, -1):
        with pytest.raises(ValueError, match=r"exit_at_step=.*\[0, 4\)"):
            looped_generate(tiny, p, 2, exit_at_step=k)
    with pytest.raises(ValueError, match=r"exit_at_step=2 .*\[0, 2\)"):
        looped_generate(tiny, p, 2, exit_at_step=2, loops=2)
    with pytest.raises(ValueError, match="loops=0"):
        looped_generate(tiny, p, 2, loops=0)
    with pytest.raises(ValueError, match="full_per_depth"):
        looped_generate(tiny, p, 2, weighted_exit=True, kv_policy="last_available")
    with pytest.raises(ValueError, match="left-padded"):
        looped_generate(tiny, p, 2, prompt_mask=np.array([[True, True, False]]))
    with pytest.raises(ValueError, match="max_seq_len"):
        looped_generate(tiny, p, 40)
    plain = nnx.eval_shape(lambda: LM(TINY.replace(stack="plain", stack_kwargs={}),
                                      rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="stack='looped'"):
        resolve_exit(plain)


def test_teacher_forced_full_per_depth_equals_full_forward_ce(tiny):
    """Teacher-forced decoding of known text with full_per_depth scores every token with the
    logits of the full (uncached) forward under the same exit rule (q = 0.5): same CE per token
    (1e-5); a skipping policy runs fewer loops per token, and the forced text, not samples,
    is what it reads (its CE differs from the reference only through the deeper K/V)."""
    toks = np.asarray(jax.random.randint(jax.random.key(3), (2, 12), 0, 96))
    ref = teacher_forced(tiny, toks, 4, exit_threshold=0.5, kv_policy="full_per_depth")
    full = tiny(jnp.asarray(toks[:, :-1]), exit_threshold=0.5, return_loop_logits=False)
    logp = jax.nn.log_softmax(np.asarray(full.logits, np.float32)[:, 3:], axis=-1)
    want = -np.take_along_axis(np.asarray(logp), toks[:, 4:, None], axis=-1)[..., 0]
    assert ref["ce_per_token"].shape == (2, 8) and ref["mean_loops"] == 4
    assert rel_err(ref["ce_per_token"], want) < RTOL
    skip = teacher_forced(tiny, toks, 4, exit_threshold=0.5, kv_policy="last_available")
    assert skip["mean_loops"] < 4 and np.isfinite(skip["ce"])
    with pytest.raises(ValueError, match="prompt_len"):
        teacher_forced(tiny, toks, 12)
