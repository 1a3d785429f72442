"""Over-decoding heads (``seedjax.nn.over_decoding``, the "over_decoding" head factory): product
mode against a numpy Alg. 2, the App. C factorisation identity, MTP-DS causality and zero
weights, the n-gram joint softmax's marginal and loss split, masks and eos boundaries, the
inference path (extra heads dropped, generation), a short training run, FLOPs and bad kwargs."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from seedjax.models import LM, LMConfig
from seedjax.nn.over_decoding import OverDecodingConfig, future_valid
from seedjax.train.objectives import TokenCE

V, T = 64, 12
BASE = dict(vocab_size=V, d_model=32, n_layers=1, n_heads=2, mlp_dim=64, max_seq_len=32)


def _cfg(**kw) -> LMConfig:
    return LMConfig(**{**BASE, **kw})


def _od(seed=0, **head_kwargs) -> LM:
    return LM(_cfg(head="over_decoding", head_kwargs=head_kwargs), rngs=nnx.Rngs(seed))


def _tokens(b=2, t=T, vocab=V, seed=0):
    return jax.random.randint(jax.random.key(seed), (b, t + 1), 0, vocab)


def _final_hidden(model, inputs):
    """The final-normed hidden x [B, T, D] the head sees (plain residual stack)."""
    out = model(inputs, return_intermediates=True)
    return model.final_norm(out.intermediates["layer_outputs"][-1])


def _np_nll(logits, labels):
    logits = np.asarray(logits, np.float64)
    m = logits.max(-1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[..., 0]
    return lse - np.take_along_axis(logits, np.asarray(labels)[..., None], -1)[..., 0]


def _hand_valid(targets, mask, j, eos):
    """Pure-Python rule: label targets[t+j-1] counts iff its mask is 1 and no eos among
    targets[t .. t+j-2] (x_{t+1} .. x_{t+j-1})."""
    b, t = targets.shape
    out = np.zeros((b, t - j + 1))
    for i in range(b):
        for s in range(t - j + 1):
            ok = mask is None or mask[i, s + j - 1] == 1
            ok = ok and (eos is None or all(targets[i, s + a] != eos for a in range(j - 1)))
            out[i, s] = float(ok)
    return out


def test_future_valid_mask_and_eos_by_hand():
    """Property: the label-validity rule (mask at the label, no eos strictly inside the span)
    equals a pure-Python loop, for distances 1..4, with and without mask / eos."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 5, (3, 10))
    targets[0, [2, 3, 7]] = 4
    mask = (rng.random((3, 10)) > 0.3).astype(np.float32)
    for j in (1, 2, 3, 4):
        for m in (None, mask):
            for eos in (None, 4):
                got = future_valid(jnp.asarray(targets), None if m is None else jnp.asarray(m),
                                   j, eos)
                np.testing.assert_array_equal(np.asarray(got), _hand_valid(targets, m, j, eos))
    # j = 1 is the next-token mask: an eos never removes the next-token label
    np.testing.assert_array_equal(np.asarray(future_valid(jnp.asarray(targets), None, 1, 4)), 1)


def test_product_loss_equals_alg2_by_hand():
    """Alg. 2 / Eq. 8: with rank-8 projections and weights (0.3, 0.2), the head's losses are
    lambda_j * masked-mean CE(x[:, :T-j+1] P_j E_j, targets[:, j-1:]) from its own parameters,
    with the mask and eos rule applied; the returned logits are the tied next-token head's."""
    model = _od(mode="product", n=3, rank=8, weights=[0.3, 0.2], eos_id=5)
    tok = np.array(_tokens())
    tok[0, 4] = tok[1, 9] = 5
    inputs, targets = jnp.asarray(tok[:, :-1]), jnp.asarray(tok[:, 1:])
    mask = np.ones((2, T), np.float32)
    mask[1, 6:8] = 0
    out = model(inputs, targets=targets, target_mask=jnp.asarray(mask))
    x = np.asarray(_final_hidden(model, inputs), np.float64)
    table = np.asarray(model.embed.table[...], np.float64)
    np.testing.assert_allclose(np.asarray(out.logits), x @ table.T, rtol=1e-5, atol=1e-6)
    tg = np.asarray(targets)
    for j, w in ((2, 0.3), (3, 0.2)):
        head = model.head.future_heads[j - 2]
        logits = x[:, :T - j + 1] @ np.asarray(head.proj[...]) @ np.asarray(head.table[...])
        valid = _hand_valid(tg, mask, j, 5)
        want = w * (_np_nll(logits, tg[:, j - 1:]) * valid).sum() / valid.sum()
        np.testing.assert_allclose(float(out.aux_losses[f"od/ce_{j}"]), want, rtol=1e-5)
    assert set(out.aux_losses) == {"od/ce_2", "od/ce_3"}


def test_product_decomposition_factorises_the_ngram_softmax():
    """App. C, Eqs. 7/9: the n-gram softmax whose logits are the outer sum of the next-token
    head's and head_2's logits has CE(x_{t+1}, x_{t+2}) = CE_1(x_{t+1}) + CE_2(x_{t+2})."""
    model = _od(mode="product", n=2, base="untied")
    tok = _tokens()
    inputs, targets = tok[:, :-1], tok[:, 1:]
    x = _final_hidden(model, inputs)
    l1 = np.asarray(model(inputs).logits, np.float64)[:, :-1]           # [B, T-1, V]
    l2 = np.asarray(model.head.future_logits(x, targets, model.embed)[0][0], np.float64)
    joint = (l1[..., :, None] + l2[..., None, :]).reshape(*l1.shape[:2], V * V)
    tg = np.asarray(targets)
    pair = tg[:, :-1] * V + tg[:, 1:]
    np.testing.assert_allclose(_np_nll(joint, pair),
                               _np_nll(l1, tg[:, :-1]) + _np_nll(l2, tg[:, 1:]), rtol=1e-9)


@pytest.mark.parametrize("depth", [1, 2])
def test_mtp_ds_is_causal(depth):
    """MTP-DS module k's logits at position t (for x_{t+k+1}) depend only on x_{<= t+k}: changing
    the tokens from position p on leaves rows t < p - k equal, and changes row p - k."""
    model = _od(mode="mtp_ds", depth=depth)
    tok = np.array(_tokens())

    def rows(tokens):
        inputs, targets = jnp.asarray(tokens[:, :-1]), jnp.asarray(tokens[:, 1:])
        x = _final_hidden(model, inputs)
        return [np.asarray(r) for r in model.head.future_logits(x, targets, model.embed)[0]]

    ref = rows(tok)
    p = 7
    changed = tok.copy()
    changed[:, p:] = (changed[:, p:] + 1 + np.arange(T + 1 - p)) % V
    new = rows(changed)
    for k in range(1, depth + 1):
        assert ref[k - 1].shape == (2, T - k, V)
        np.testing.assert_array_equal(new[k - 1][:, :p - k], ref[k - 1][:, :p - k])
        assert np.abs(new[k - 1][:, p - k] - ref[k - 1][:, p - k]).max() > 1e-6


def test_mtp_ds_input_embeddings_equal_embedded_targets():
    """mtp_ds reads e(x_{t+1}) from the LM's input embeddings when given: for a token embed and
    tokens[:, 1:] = targets[:, :-1] the losses equal those from embed(targets)."""
    model = _od(mode="mtp_ds", depth=2)
    tok = _tokens()
    inputs, targets = tok[:, :-1], tok[:, 1:]
    x = _final_hidden(model, inputs)
    a = model.head.training_losses(x, targets, model.embed)
    b = model.head.training_losses(x, targets, model.embed, input_embeddings=model.embed(inputs))
    assert set(a) == {"od/mtp_ce_2", "od/mtp_ce_3"}
    for k in a:
        np.testing.assert_allclose(float(a[k]), float(b[k]), rtol=1e-6)


def test_mtp_ds_zero_weight_total_equals_plain_lm():
    """weights = 0: the "lm" objective's total loss (and its next-token CE) equal the plain tied
    LM's with the same seed (the head is built last, so the shared parameters are the same)."""
    tok = _tokens()
    batch = {"inputs": tok[:, :-1], "targets": tok[:, 1:]}
    od = _od(mode="mtp_ds", weights=0.0)
    plain = LM(_cfg(), rngs=nnx.Rngs(0))
    total_od, m_od = TokenCE().loss(od, batch, jnp.int32(0))
    total_plain, m_plain = TokenCE().loss(plain, batch, jnp.int32(0))
    assert float(m_od["aux/od/mtp_ce_2"]) == 0.0
    assert float(total_od) == float(total_plain) and float(m_od["ce"]) == float(m_plain["ce"])
    total_w, m_w = TokenCE().loss(_od(mode="mtp_ds", weights=0.5), batch, jnp.int32(0))
    assert float(m_w["aux/od/mtp_ce_2"]) > 0 and float(total_w) > float(total_plain)


def test_ngram_joint_marginal_and_loss_split():
    """ngram_joint (n = 3, V = 8): the returned logits are logsumexp of the joint logits over the
    last n-1 tokens; the total "lm" loss = mean over next-token positions of the joint CE where
    the whole 3-gram is inside the window, mask and document, else the marginal CE."""
    v, n, eos = 8, 3, 2
    model = LM(_cfg(vocab_size=v, head="over_decoding",
                    head_kwargs={"mode": "ngram_joint", "n": n, "eos_id": eos}),
               rngs=nnx.Rngs(0))
    tok = np.array(_tokens(vocab=v))
    tok[0, 5] = eos
    inputs, targets = jnp.asarray(tok[:, :-1]), jnp.asarray(tok[:, 1:])
    mask = np.ones((2, T), np.float32)
    mask[1, 3] = 0
    batch = {"inputs": inputs, "targets": targets, "mask": jnp.asarray(mask)}
    total, metrics = TokenCE().loss(model, batch, jnp.int32(0))
    x = np.asarray(_final_hidden(model, inputs), np.float64)
    joint = x @ np.asarray(model.head.joint[...], np.float64)         # [B, T, V^3]
    j4 = joint.reshape(2, T, v, v * v)
    marg = j4.max(-1) + np.log(np.exp(j4 - j4.max(-1, keepdims=True)).sum(-1))
    np.testing.assert_allclose(np.asarray(model(inputs).logits), marg, rtol=1e-5, atol=1e-5)
    tg = np.asarray(targets)
    per_pos = _np_nll(marg, tg)
    for i in range(2):
        for t in range(T - n + 1):
            inside = all(mask[i, t + a] for a in range(n)) and eos not in tg[i, t:t + n - 1]
            if inside:
                cls = (tg[i, t] * v + tg[i, t + 1]) * v + tg[i, t + 2]
                per_pos[i, t] = _np_nll(joint[i, t], cls)
    want = (per_pos * mask).sum() / mask.sum()
    np.testing.assert_allclose(float(total), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["ce"]), (_np_nll(marg, tg) * mask).sum() / mask.sum(),
                               rtol=1e-5)


def test_inference_drops_extra_heads_and_generates():
    """Without targets an OD model returns only the base head's logits: a product model (tied)
    and an mtp_ds model give exactly the plain LM's logits (same seed), no aux losses, and
    ``generate`` samples the same tokens as the plain LM."""
    from seedjax.eval.sampling import generate
    tok = _tokens()[:, :-1]
    plain = LM(_cfg(), rngs=nnx.Rngs(0))
    want = plain(tok).logits
    prompt = np.asarray(tok[:, :4])
    ref = np.asarray(generate(plain, prompt, 5, temperature=1.0, seed=3))
    for kw in ({"mode": "product", "n": 3}, {"mode": "mtp_ds"}):
        model = _od(**kw)
        out = model(tok)
        assert out.aux_losses == {}
        np.testing.assert_array_equal(np.asarray(out.logits), np.asarray(want))
        got = np.asarray(generate(model, prompt, 5, temperature=1.0, seed=3))
        assert got.shape == (2, 9)
        np.testing.assert_array_equal(got, ref)


@pytest.mark.slow   # the default suite trains OT (OE + MTP-DS) in test_paper_configs' smoke run
def test_over_decoding_trains_end_to_end(tmp_path, small_corpus):
    """A 2-step run of configs/lm.py:smoke (shrunk) with model.head="over_decoding" (mtp_ds)
    logs the weighted extra loss as aux/od/mtp_ce_2 (about 0.1 x the next-token CE at init), and
    the logged loss is ce + that. (Most of its ~10 s is the trainer's fixed compile / eval /
    checkpoint cost, the same for a plain head.)"""
    from seedjax.train.loop import Trainer
    from tests.conftest import smoke_config
    cfg = smoke_config(small_corpus, steps=2, log_every=1, eval_every=2, checkpoint_every=2)
    cfg.data.update(seq_len=16, max_val_batches=1)
    cfg.model.update(d_model=32, n_layers=1, n_heads=2, mlp_dim=64, head="over_decoding",
                     head_kwargs={"mode": "mtp_ds", "weights": 0.1})
    summary = Trainer(cfg, str(tmp_path), progress=False).run()
    assert summary["status"] == "completed"
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in rows if r["split"] == "train"]
    assert train and all(np.isfinite(r["aux/od/mtp_ce_2"]) for r in train)
    r = train[-1]
    assert r["aux/od/mtp_ce_2"] == pytest.approx(0.1 * r["ce"], rel=0.2)
    assert r["loss"] == pytest.approx(r["ce"] + r["aux/od/mtp_ce_2"], rel=1e-4)


def test_flops_of_the_extra_heads():
    """Forward FLOPs per token of the extra heads join seedjax.train.flops' terms."""
    from seedjax.train.flops import lm_forward_flops_per_token
    d = BASE["d_model"]
    f = lm_forward_flops_per_token(_cfg(head="over_decoding",
                                        head_kwargs={"n": 3, "rank": 8}), 16)
    assert f["od_heads"] == 2 * (2 * d * 8 + 2 * 8 * V) and f["head"] == 2 * d * V
    f = lm_forward_flops_per_token(_cfg(head="over_decoding", head_kwargs={"mode": "mtp_ds"}), 16)
    plain = lm_forward_flops_per_token(_cfg(max_seq_len=32), 32)  # scores at max_seq_len
    block = plain["attn_proj"] + plain["attn_scores"] + plain["mlp"]
    assert f["od_mtp_block"] == block and f["od_mtp_proj"] == 4 * d * d
    assert f["od_mtp_head"] == 2 * d * V
    f = lm_forward_flops_per_token(_cfg(vocab_size=8, head="over_decoding",
                                        head_kwargs={"mode": "ngram_joint", "n": 3}), 16)
    assert f["od_joint_head"] == 2 * d * (512 - 8)


@pytest.mark.parametrize("kw,field", [
    ({"mode": "beam"}, "mode"),
    ({"n": 1}, "n"),
    ({"n": 3, "weights": [0.1]}, "weights"),
    ({"weights": [-0.1]}, "weights"),
    ({"weights": "big"}, "weights"),
    ({"rank": 0}, "rank"),
    ({"mode": "mtp_ds", "rank": 4}, "rank"),
    ({"mode": "mtp_ds", "depth": 0}, "depth"),
    ({"mode": "mtp_ds", "depth": 2, "n": 2}, "n"),
    ({"mode": "product", "depth": 2}, "depth"),
    ({"base": "shared"}, "base"),
    ({"eos_id": 64}, "eos_id"),
    ({"mode": "ngram_joint", "n": 4}, "n"),            # 64^4 = 2^24 classes
    ({"mode": "ngram_joint", "weights": 0.1}, "weights"),
    ({"mode": "ngram_joint", "base": "tied"}, "base"),
])
def test_bad_kwargs_raise_naming_the_field(kw, field):
    """Each bad kwarg raises a ValueError naming model.head_kwargs.<field>."""
    with pytest.raises(ValueError, match=rf"model\.head_kwargs\.{field}\b"):
        OverDecodingConfig(vocab_size=V, d_model=32, **kw)


def test_bad_model_settings_raise():
    """Through the LM: bad kwargs, an unknown kwarg and a looped stack raise ValueErrors."""
    with pytest.raises(ValueError, match=r"model\.head_kwargs\.n"):
        _od(mode="ngram_joint", n=4)
    with pytest.raises(ValueError, match="model.head_kwargs"):
        _od(lambdas=[0.1])
    with pytest.raises(ValueError, match="model.stack='plain'"):
        LM(_cfg(head="over_decoding", stack="looped", stack_kwargs={"loops": 2}),
           rngs=nnx.Rngs(0))
