"""BPE tokenizer (seedjax.data.tokenizers), data.tokenizer in the pipeline and the trainer
(train, save, resume with the same tokenizer.json), and the Debian English corpora readers
(gcide, fortunes) on small synthetic files that mimic the installed formats."""
import gzip
import os
import zlib

import numpy as np
import pytest

from seedjax.data import (BPETokenizer, ByteTokenizer, build_lm_data, get_corpus,
                          load_tokenizer, text_corpus, token_streams, train_bpe, train_texts)
from seedjax.data.sources import (FORTUNES_DIR_ENV, GCIDE_DIR_ENV, fortunes_corpus,
                                  gcide_corpus, split_documents)

VOCAB = 512
TRICKY = ("  leading spaces\r\n\ttabs\n\n\nunicode: héllo wörld ✓ 🙂 日本語 — ∑\n"
          "the eos text <|endoftext|> and a NUL \x00 inside\ntrailing spaces   \n")


@pytest.fixture(scope="module")
def bpe(small_corpus):
    """A 512-token BPE trained on the train split of the small stdlib-file corpus."""
    corpus = text_corpus(small_corpus, val_fraction=0.25)
    return corpus, train_bpe(train_texts(corpus), VOCAB)


def test_bpe_round_trip_eos_and_save_load(bpe, tmp_path):
    """Every val document and a string of whitespace/unicode/eos text round-trip exactly; id 0
    is the eos and never occurs inside a document; encodings are uint16; save/load keeps the
    tokenizer (same fingerprint, same ids); the tokens' byte lengths add up to the bytes."""
    corpus, tok = bpe
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == VOCAB and tok.eos_id == 0
    assert tok.hf_tokenizer.id_to_token(0) == "<|endoftext|>"
    val_docs = [d.decode() for d in split_documents(corpus)[1]]
    assert corpus.description["split_rule"] == "files" and len(val_docs) >= 1
    lengths = tok.token_byte_lengths()
    for text in val_docs + [TRICKY, ""]:
        ids = tok.encode(text)
        assert ids.dtype == np.uint16 and ids.ndim == 1
        assert tok.decode(ids) == text and tok.decode(ids.tolist()) == text
        assert not (ids == 0).any()
        assert int(lengths[ids].sum()) == len(text.encode("utf-8"))
    ids = tok.encode(val_docs[0])
    assert len(ids) < 0.6 * len(val_docs[0].encode())  # merges compress source code
    assert tok.decode([0]) == "<|endoftext|>"
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 512\)"):
        tok.decode([5, VOCAB])
    path = tok.save(str(tmp_path / "sub" / "tokenizer.json"))
    again = load_tokenizer(path)
    assert again.fingerprint == tok.fingerprint and again.fingerprint.startswith("sha256:")
    np.testing.assert_array_equal(again.encode(TRICKY), tok.encode(TRICKY))
    assert os.listdir(tmp_path / "sub") == ["tokenizer.json"]  # no temp file left behind


def test_bpe_training_is_deterministic_and_validated(bpe):
    corpus, tok = bpe
    assert train_bpe(train_texts(corpus)[:4], 300).fingerprint == \
        train_bpe(train_texts(corpus)[:4], 300).fingerprint
    for bad in (257, 2**20 + 1, 300.0, True, "512"):
        with pytest.raises(ValueError, match=r"data\.vocab_size=.* \[258, 1048576\]"):
            train_bpe(["abc"], bad)
    with pytest.raises(ValueError, match="data.vocab_size=4096: the training text yields only"):
        train_bpe(["tiny text, tiny text"], 4096)


def test_pipeline_with_bpe_streams_fingerprint_and_bits_per_byte(small_corpus, tmp_path):
    """data.tokenizer='bpe': trained on the train split only, saved in the workdir, uint16
    streams that decode to the documents, the tokenizer in the fingerprint, tokens per byte
    of the val windows; the byte default is unchanged (uint8, no tokenizer key, 1.0)."""
    kw = dict(source=small_corpus, seq_len=32, batch_size=8, seed=0, val_fraction=0.25)
    data = build_lm_data(**kw, tokenizer="bpe", vocab_size=VOCAB, workdir=str(tmp_path))
    tok = data.tokenizer
    assert isinstance(tok, BPETokenizer) and os.path.isfile(tmp_path / "tokenizer.json")
    assert load_tokenizer(str(tmp_path / "tokenizer.json")).fingerprint == tok.fingerprint
    assert tok.fingerprint == train_bpe(train_texts(data.corpus), VOCAB).fingerprint
    train, val = token_streams(data.corpus, tok)
    assert train.dtype == val.dtype == np.uint16 and len(train) == data.train_tokens
    d = data.corpus.description
    assert int(tok.token_byte_lengths()[val].sum()) == d["val_bytes"]  # eos counts 1 byte
    docs = [doc.decode() for doc in split_documents(data.corpus)[1]]
    assert tok.decode(val) == "<|endoftext|>".join(docs)
    assert data.fingerprint["tokenizer"] == tok.fingerprint
    assert 0.15 < data.val_tokens_per_byte < 0.6
    batch = next(data.train_iter)
    assert batch["inputs"].dtype == np.int32 and batch["inputs"].max() < VOCAB
    byte = build_lm_data(**kw)
    assert isinstance(byte.tokenizer, ByteTokenizer) and "tokenizer" not in byte.fingerprint
    assert byte.val_tokens_per_byte == 1.0
    assert token_streams(byte.corpus, byte.tokenizer)[0].dtype == np.uint8
    with pytest.raises(ValueError, match="different data setup"):
        byte.set_state(data.get_state())


def test_trainer_bpe_run_resumes_with_the_same_tokenizer(small_corpus, tmp_path, monkeypatch):
    """2 steps with data.tokenizer='bpe', then resume to step 4: tokenizer.json keeps its bytes
    and is loaded, not retrained; the restored model samples text through the run's tokenizer."""
    import seedjax.data.pipeline as pipeline
    from seedjax.eval.sampling import sample_text
    from seedjax.train.loop import Trainer
    from seedjax.train.restore import load_model
    from tests.conftest import smoke_config

    def cfg(steps):
        c = smoke_config(small_corpus, steps=steps, warmup_steps=1, checkpoint_every=2,
                         eval_every=100, log_every=1)
        c.data.update(tokenizer="bpe", vocab_size=VOCAB, max_val_batches=1)
        c.model.update(vocab_size=VOCAB, d_model=32, n_layers=1, mlp_dim=64)
        return c

    workdir = str(tmp_path)
    first = Trainer(cfg(2), workdir, progress=False).run()
    assert first["step"] == 2 and np.isfinite(first["val"]["bits_per_byte"])
    saved = open(os.path.join(workdir, "tokenizer.json"), "rb").read()

    def no_training(*a, **k):
        raise AssertionError("the resumed run must load tokenizer.json, not retrain")

    monkeypatch.setattr(pipeline, "train_bpe", no_training)
    trainer = Trainer(cfg(4), workdir, progress=False)
    second = trainer.run()
    assert second["step"] == 4 and second["status"] == "completed"
    assert open(os.path.join(workdir, "tokenizer.json"), "rb").read() == saved
    # bits/byte = nats/token * tokens/byte / ln 2 (not bits per token)
    val = second["val"]
    assert val["bits_per_byte"] == pytest.approx(
        val["loss"] * trainer.data.val_tokens_per_byte / np.log(2))
    model, config, step = load_model(workdir)
    tok = pipeline.run_tokenizer(workdir, config.data.tokenizer)
    assert step == 4 and tok.fingerprint == trainer.data.tokenizer.fingerprint
    text = sample_text(model, tok, "def ", 6, temperature=0.8, top_p=0.95, seed=0)
    assert text.startswith("def ") and isinstance(text, str)


def test_bad_tokenizer_settings_are_clear_errors(small_corpus, tmp_path, bpe):
    from seedjax.train.config_check import ConfigError, set_from_text, validate_config
    from tests.conftest import smoke_config

    kw = dict(source=small_corpus, seq_len=32, batch_size=8, seed=0, val_fraction=0.25)
    missing = str(tmp_path / "nope" / "tokenizer.json")
    with pytest.raises(ValueError, match=r"data\.tokenizer=.*nope.*no such tokenizer file"):
        build_lm_data(**kw, tokenizer=missing)
    path = bpe[1].save(str(tmp_path / "tok.json"))
    with pytest.raises(ValueError, match=r"has 512 tokens but model\.vocab_size=256"):
        build_lm_data(**kw, tokenizer=path, model_vocab_size=256)
    with pytest.raises(ValueError, match=r"data\.vocab_size=4096 .* model\.vocab_size=256"):
        build_lm_data(**kw, tokenizer="bpe", vocab_size=4096, model_vocab_size=256)
    with pytest.raises(ValueError, match="task: sources are generated as byte tokens"):
        build_lm_data(**{**kw, "source": "task:mqar"}, tokenizer="bpe")
    cfg = smoke_config(small_corpus)
    validate_config(cfg)  # the default: bytes, data.vocab_size unused
    cfg.data.tokenizer = "bpe"
    with pytest.raises(ConfigError, match=r"^data\.vocab_size=4096 \(data\.tokenizer='bpe'\) "
                                          r"differs from model\.vocab_size=256"):
        validate_config(cfg)
    cfg.model.vocab_size = 4096
    validate_config(cfg)
    with pytest.raises(ConfigError) as err:
        set_from_text(cfg, "data.vocab_size", "100")  # a command-line override
    assert str(err.value) == ("data.vocab_size=100 is out of range; allowed: in [258, 1048576] "
                              "(used by data.tokenizer='bpe')")
    cfg.data.tokenizer = "bytes"
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value) == ("data.tokenizer='bytes' is out of range; allowed: 'byte', 'bpe' "
                              "or the path of a tokenizer.json file")
    import configs.lm
    for variant in configs.lm.VARIANTS:
        validate_config(configs.lm.get_config(variant))


# ----------------------------------------------------------------------- English corpora

def _dictd_b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = digits[n % 64]
    while n >= 64:
        n //= 64
        out = digits[n % 64] + out
    return out


def _write_gcide(root, n=40):
    """A dictd dictionary like dict-gcide's: metadata entry, n entries (one indexed under two
    headwords), one entry with a NUL byte; gzip-compressed .dict.dz plus .index."""
    entries = [("00-database-info", "This file was converted by dictfmt.\n")]
    entries += [(f"word{i:02d}", f"Word{i:02d} \\Word\"{i}\\, n.\n   1. Sense number {i}; "
                 f"café ✓.\n\n") for i in range(n)]
    entries.append(("broken", "bad\x00entry\n"))
    blob, index = b"", []
    for head, text in entries:
        data = text.encode()
        index.append(f"{head}\t{_dictd_b64(len(blob))}\t{_dictd_b64(len(data))}\n")
        if head == "word03":
            index.append(f"alias\t{_dictd_b64(len(blob))}\t{_dictd_b64(len(data))}\n")
        blob += data
    root.mkdir(parents=True, exist_ok=True)
    with gzip.open(root / "gcide.dict.dz", "wb") as f:
        f.write(blob)
    (root / "gcide.index").write_text("".join(sorted(index)))
    return [t.encode() for h, t in entries[1:-1]]


def test_gcide_reader_on_synthetic_dictd_files(tmp_path, monkeypatch):
    expected = _write_gcide(tmp_path / "dictd")
    monkeypatch.setenv(GCIDE_DIR_ENV, str(tmp_path / "dictd"))
    c = get_corpus("gcide", val_fraction=0.25)
    d = c.description
    assert c.name == "gcide" and d["format"] == "gcide" and d["split_rule"] == "documents"
    assert d["n_train_docs"] + d["n_val_docs"] == 40 and d["n_skipped_docs"] == 1
    train_docs, val_docs = split_documents(c)
    assert val_docs == [e for e in expected if zlib.crc32(e) < 0.25 * 2**32] and val_docs
    assert train_docs == [e for e in expected if e not in val_docs]
    train, val = token_streams(c, ByteTokenizer())
    assert (len(train), len(val)) == (d["train_bytes"], d["val_bytes"])
    assert val.tobytes() == b"\0".join(val_docs)
    assert gcide_corpus(0.25, root=str(tmp_path / "dictd")).description == d
    os.remove(tmp_path / "dictd" / "gcide.index")
    with pytest.raises(ValueError, match=r"data\.source='gcide'.*apt-get install dict-gcide"):
        get_corpus("gcide")


def test_fortunes_reader_on_synthetic_files(tmp_path, monkeypatch):
    root = tmp_path / "fortunes"
    (root / "off").mkdir(parents=True)
    people = "".join(f"Fortune {i}: a saying\n  -- Someone {i}\n%\n" for i in range(30))
    (root / "people").write_text(people + "%\n   \n%\nlast one without a final separator\n")
    (root / "people.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    os.symlink("people", root / "people.u8")
    os.symlink(root / "people", root / "people-again")  # a duplicate through a symlink
    (root / "art").write_text("%\nArt is long.\n%\n")
    (root / "latin").write_bytes("caf\xe9\n%\n".encode("latin-1"))
    (root / "off" / "rude").write_text("Qba'g ernq guvf.\n%\n")
    c = fortunes_corpus(val_fraction=0.25, root=str(root))
    assert [os.path.basename(f) for f in c.train_files] == ["art", "people"]
    assert c.description["n_skipped_files"] == 1 and c.description["n_skipped_docs"] == 0
    docs = [b"Art is long.\n"] + [f"Fortune {i}: a saying\n  -- Someone {i}\n".encode()
                                  for i in range(30)] + [b"last one without a final separator\n"]
    train_docs, val_docs = split_documents(c)
    assert sorted(train_docs + val_docs) == sorted(docs) and val_docs and train_docs
    monkeypatch.setenv(FORTUNES_DIR_ENV, str(root))
    assert get_corpus("fortunes", 0.25).description == c.description
    data = build_lm_data(source="fortunes", seq_len=16, batch_size=4, seed=0,
                         val_fraction=0.25, max_val_batches=1)
    assert data.corpus.name == "fortunes" and next(data.train_iter)["inputs"].shape == (4, 16)
    monkeypatch.setenv(FORTUNES_DIR_ENV, str(tmp_path / "absent"))
    with pytest.raises(ValueError, match=r"data\.source='fortunes'.*apt-get install fortunes"):
        get_corpus("fortunes")
