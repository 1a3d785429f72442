"""Tests for seedjax.data: tokenizer, corpora/split rules and the grain pipeline.

Most tests use a small text folder in ``tmp_path`` whose lines are all
distinct, so every packed window can be located in the token stream and
identified by its window id. One test uses the Python stdlib corpus.
"""

import json
import math
import os
import platform
import sysconfig
import zlib

import numpy as np
import pytest

from seedjax.data import (
    ByteTokenizer,
    build_lm_data,
    get_corpus,
    is_val_path,
    stdlib_corpus,
    text_corpus,
    token_streams,
)

T, B = 16, 8  # small seq_len / global batch for the pipeline tests
VF = 0.25  # with the file names below, doc02 and doc03 fall in val


def _write_corpus(root):
    """12 numbered-line files (3000 bytes each) plus files that must be skipped."""
    for k in range(12):
        rel = f"doc{k:02d}.txt" if k < 8 else f"sub/doc{k:02d}.txt"
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{k:02d}-{i:06d}\n" for i in range(300)))
    (root / "blob.bin").write_bytes(b"abc\x00def")  # NUL byte -> binary
    (root / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))  # not UTF-8
    (root / "empty.txt").write_text("")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "notes.txt").write_text("hidden text\n")
    return root


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return str(_write_corpus(tmp_path_factory.mktemp("corpus")))


def _build(src, **kw):
    args = dict(source=src, seq_len=T, batch_size=B, seed=0, val_fraction=VF)
    args.update(kw)
    return build_lm_data(**args)


def _take(data, n):
    return [next(data.train_iter) for _ in range(n)]


def _window_ids(data, batch):
    """Window id of every row: its start offset in the train stream / T."""
    stream = token_streams(data.corpus, data.tokenizer)[0].tobytes()
    ids = []
    for inp, tgt in zip(batch["inputs"], batch["targets"]):
        window = np.concatenate([inp, tgt[-1:]]).astype(np.uint8).tobytes()
        pos = stream.find(window)
        assert pos >= 0 and pos % data.seq_len == 0
        ids.append(pos // data.seq_len)
    return ids


def _same(batches_a, batches_b):
    return all(
        np.array_equal(a[k], b[k])
        for a, b in zip(batches_a, batches_b, strict=True)
        for k in ("inputs", "targets")
    )


def test_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert tok.vocab_size == 256 and tok.eos_id == 0
    text = "def f(x):\n    return 'héllo wörld ✓ 🙂 日本語'\n"
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and ids.ndim == 1
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(ids.tolist()) == text
    assert tok.decode(ids.astype(np.int32)) == text
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

    assert tok.decode(jnp.asarray(ids, dtype=jnp.int32)) == text
    assert "\ufffd" in tok.decode(tok.encode("ü")[:1])
    assert tok.decode([]) == ""
    with pytest.raises(ValueError, match="token ids"):
        tok.decode([0, 256])


def test_stdlib_corpus_split_and_pipeline():
    c = stdlib_corpus()
    d = c.description
    assert c.name == "stdlib" and d["python_version"] == platform.python_version()
    assert d["split_rule"] == "files" and c.train_files and c.val_files
    assert set(c.train_files).isdisjoint(c.val_files)
    for files in (c.train_files, c.val_files):
        assert list(files) == sorted(files)
        assert all(f.endswith(".py") for f in files)
        assert not any(
            "site-packages" in f.split(os.sep) or "__pycache__" in f.split(os.sep)
            for f in files
        )
    root = os.path.realpath(sysconfig.get_paths()["stdlib"])
    for f in c.val_files:
        assert is_val_path(os.path.relpath(f, root), 0.02)
    for f in c.train_files[:50]:
        assert not is_val_path(os.path.relpath(f, root), 0.02)
    assert 0.005 < d["val_bytes"] / (d["train_bytes"] + d["val_bytes"]) < 0.05
    again = get_corpus("stdlib")
    assert again.train_files == c.train_files and again.val_files == c.val_files
    assert again.description == d
    json.dumps(d)
    data = build_lm_data(source="stdlib", seq_len=32, batch_size=4, seed=0,
                         max_val_batches=2)
    assert data.train_tokens == d["train_bytes"] and data.val_tokens == d["val_bytes"]
    batch = next(data.train_iter)
    assert batch["inputs"].shape == (4, 32) and batch["inputs"].dtype == np.int32
    assert len(data.val_batches()) == 2


def test_text_folder_corpus(corpus_dir):
    c = text_corpus(corpus_dir, val_fraction=VF)
    d = c.description
    names = lambda files: [os.path.relpath(f, corpus_dir) for f in files]
    assert names(c.val_files) == ["doc02.txt", "doc03.txt"]
    expected_train = [f"doc{k:02d}.txt" for k in (0, 1, 4, 5, 6, 7)] + [
        f"sub/doc{k:02d}.txt" for k in (8, 9, 10, 11)]
    assert names(c.train_files) == expected_train
    assert d["split_rule"] == "files" and d["n_skipped_files"] == 3
    assert d["train_bytes"] == 10 * 3000 + 9 and d["val_bytes"] == 2 * 3000 + 1
    train, val = token_streams(c, ByteTokenizer())
    assert (len(train), len(val)) == (d["train_bytes"], d["val_bytes"])
    assert int((train == 0).sum()) == 9  # one separator between 10 documents
    assert get_corpus(corpus_dir, VF) == c
    # No file hashes below 0.02: the file rule would leave val empty, so the
    # corpus falls back to the byte split over all files.
    fallback = text_corpus(corpus_dir, val_fraction=0.02)
    assert fallback.description["split_rule"] == "bytes"
    assert fallback.train_files == fallback.val_files and len(fallback.train_files) == 12


def test_single_file_uses_byte_split(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("".join(f"line {i:05d}\n" for i in range(1000)))
    c = get_corpus(str(path), val_fraction=0.1)
    assert c.description["split_rule"] == "bytes"
    assert c.train_files == c.val_files == (str(path),)
    train, val = token_streams(c, ByteTokenizer())
    n = path.stat().st_size
    assert len(train) == math.floor(n * 0.9) and len(train) + len(val) == n
    assert np.concatenate([train, val]).tobytes() == path.read_bytes()


def test_missing_path_and_bad_files(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(ValueError, match="data.source") as err:
        get_corpus(missing)
    assert missing in str(err.value)
    with pytest.raises(ValueError, match="data.source"):
        build_lm_data(source=missing, seq_len=T, batch_size=B, seed=0)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.dat").write_bytes(b"\x00\x01\x02")
    with pytest.raises(ValueError, match="no usable text files"):
        text_corpus(str(tmp_path / "bin"))
    small = tmp_path / "small.txt"
    small.write_text("tiny corpus\n" * 20)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        build_lm_data(source=str(small), seq_len=64, batch_size=8, seed=0)


@pytest.mark.parametrize("vf", [0, 0.0, -0.1, 0.6, 1.0, float("nan"), "0.1", True])
def test_bad_val_fraction(corpus_dir, vf):
    with pytest.raises(ValueError, match="data.val_fraction"):
        get_corpus(corpus_dir, val_fraction=vf)


@pytest.mark.parametrize("kw, field", [
    (dict(seq_len=0), "data.seq_len"),
    (dict(seq_len=2.5), "data.seq_len"),
    (dict(batch_size=0), "data.batch_size"),
    (dict(batch_size=6, process_count=4), "batch_size"),
    (dict(process_index=2, process_count=2), "process_index"),
    (dict(max_val_batches=0), "data.max_val_batches"),
    (dict(seed=-1), "seed"),
    (dict(val_fraction=0.7), "data.val_fraction"),
])
def test_bad_arguments(corpus_dir, kw, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        _build(corpus_dir, **kw)


def test_batches_shapes_and_shifted_targets(corpus_dir):
    data = _build(corpus_dir)
    assert data.local_batch_size == B and data.train_windows == (10 * 3000 + 9 - 1) // T
    for batch in _take(data, 3):
        assert set(batch) == {"inputs", "targets"}
        for v in batch.values():
            assert v.shape == (B, T) and v.dtype == np.int32
        np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
        ids = _window_ids(data, batch)  # rows are real stride-T windows
        assert len(set(ids)) == B


def test_determinism_and_seeds(corpus_dir):
    a, b = _take(_build(corpus_dir), 5), _take(_build(corpus_dir), 5)
    assert _same(a, b)
    c = _take(_build(corpus_dir, seed=1), 5)
    assert not _same(a, c)


def test_epochs_are_reshuffled(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(f"{i:07d}\n" for i in range(34)))  # 272 bytes
    data = build_lm_data(source=str(path), seq_len=16, batch_size=8, seed=3,
                         val_fraction=0.5)
    assert data.train_windows == 8 and data.steps_per_epoch == 1
    epochs = [_window_ids(data, b) for b in _take(data, 3)]
    assert all(sorted(e) == list(range(8)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3


def test_state_round_trip(corpus_dir):
    data = _build(corpus_dir)
    _take(data, 4)
    state = json.loads(json.dumps(data.get_state()))
    uninterrupted = _take(data, 5)
    resumed = _build(corpus_dir)
    resumed.set_state(state)
    assert _same(_take(resumed, 5), uninterrupted)
    # A restored iterator also resumes when restored after consuming batches.
    _take(resumed, 2)
    resumed.set_state(state)
    assert _same(_take(resumed, 5), uninterrupted)
    other = _build(corpus_dir, seed=7)
    with pytest.raises(ValueError, match="different data setup"):
        other.set_state(state)
    other.set_state(state, strict=False)


def test_two_processes_split_the_global_batch(corpus_dir):
    single = _take(_build(corpus_dir), 3)
    procs = [_take(_build(corpus_dir, process_index=p, process_count=2), 3)
             for p in (0, 1)]
    data = _build(corpus_dir)
    for step in range(3):
        p0, p1 = procs[0][step], procs[1][step]
        assert p0["inputs"].shape == p1["inputs"].shape == (B // 2, T)
        ids0, ids1 = _window_ids(data, p0), _window_ids(data, p1)
        assert set(ids0).isdisjoint(ids1)
        # Together they are exactly the global batch of a single process.
        assert sorted(ids0 + ids1) == sorted(_window_ids(data, single[step]))


def test_val_batches_deterministic(corpus_dir):
    data = _build(corpus_dir, max_val_batches=3)
    v1, v2 = data.val_batches(), data.val_batches()
    assert len(v1) == 3 and _same(v1, v2)
    _take(data, 2)
    assert _same(data.val_batches(), v1)
    assert _same(_build(corpus_dir, seed=5, max_val_batches=3).val_batches(), v1)
    val_stream = token_streams(data.corpus, data.tokenizer)[1]
    first = np.concatenate([v1[0]["inputs"][0], v1[0]["targets"][0, -1:]])
    np.testing.assert_array_equal(first, val_stream[: T + 1])  # in order, no shuffle
    for b in v1:
        assert b["inputs"].shape == (B, T) and b["inputs"].dtype == np.int32
        np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    halves = [_build(corpus_dir, max_val_batches=3, process_index=p,
                     process_count=2).val_batches() for p in (0, 1)]
    for k in range(3):
        rows = np.concatenate([halves[0][k]["inputs"], halves[1][k]["inputs"]])
        assert rows.shape == (B, T)
        assert sorted(map(bytes, rows.astype(np.uint8))) == sorted(
            map(bytes, v1[k]["inputs"].astype(np.uint8)))


def test_split_rule_is_path_local():
    # The decision depends only on the file's own relative path.
    rel = "email/mime/text.py"
    expect = zlib.crc32(rel.encode()) < 0.3 * 2**32
    assert is_val_path(rel, 0.3) == expect


def test_worker_processes_match_in_process(corpus_dir):
    """worker_count=1 (grain mp_prefetch) yields the same batches and resumes."""
    data = _build(corpus_dir, worker_count=1)
    try:
        expected = _take(_build(corpus_dir), 6)
        assert _same(_take(data, 3), expected[:3])
        state = json.loads(json.dumps(data.get_state()))
        with pytest.raises(ValueError, match="data.worker_count"):
            _build(corpus_dir).set_state(state)
    finally:
        data.train_iter.close()
    resumed = _build(corpus_dir, worker_count=1)
    try:
        resumed.set_state(state)
        assert _same(_take(resumed, 3), expected[3:])
    finally:
        resumed.train_iter.close()


def test_two_processes_with_a_bpe_tokenizer_split_the_global_batch(corpus_dir, tmp_path):
    """data.tokenizer="bpe" with 2 processes sharing one workdir (as a multi-host run does):
    both train the same tokenizer (same fingerprint, one tokenizer.json) and their train and
    val rows concatenate, in process order, to the single-process batches."""
    kw = dict(tokenizer="bpe", vocab_size=300)
    (tmp_path / "one").mkdir()
    single = _build(corpus_dir, workdir=str(tmp_path / "one"), **kw)
    shared = tmp_path / "two"
    shared.mkdir()
    procs = [_build(corpus_dir, workdir=str(shared), process_index=p, process_count=2, **kw)
             for p in (0, 1)]
    assert procs[0].tokenizer.fingerprint == procs[1].tokenizer.fingerprint \
        == single.tokenizer.fingerprint
    assert os.listdir(shared) == ["tokenizer.json"]
    for full, a, b in zip(_take(single, 3), _take(procs[0], 3), _take(procs[1], 3)):
        for k in ("inputs", "targets"):
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), full[k])
    for full, a, b in zip(single.val_batches(), procs[0].val_batches(), procs[1].val_batches()):
        np.testing.assert_array_equal(np.concatenate([a["inputs"], b["inputs"]]),
                                      full["inputs"])
