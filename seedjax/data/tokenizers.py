"""Tokenizers for seedjax language-model data: UTF-8 bytes, or a byte-level BPE.

Every tokenizer of the project has the same small interface: ``vocab_size``,
``eos_id`` (always 0), ``encode(text) -> 1-D integer array``,
``decode(ids) -> str`` and ``token_byte_lengths()`` (UTF-8 bytes spelled by
each id, used to turn nats per token into bits per byte).

``ByteTokenizer`` (``data.tokenizer="byte"``, the default): one token per
UTF-8 byte, so the vocabulary is the 256 byte values and no training or file
is needed.

* ids 0..255 are the byte values themselves;
* ``eos_id == 0`` (the NUL byte) separates documents when a corpus is packed
  into one token stream. Text files that contain NUL bytes are skipped by the
  corpus readers (see ``seedjax.data.sources``), so id 0 never occurs inside a
  document.

``encode`` returns a ``uint8`` array (compact: a 30 MB corpus is a 30 MB
array); the pipeline widens token windows to ``int32`` only when it builds a
batch. ``decode`` accepts any integer sequence (list, NumPy or JAX array) and
decodes the bytes with ``errors="replace"``, so a window cut in the middle of
a multi-byte character still decodes.

``BPETokenizer`` (``data.tokenizer="bpe"`` or a path to a ``tokenizer.json``)
wraps a HF ``tokenizers.Tokenizer``. ``train_bpe(texts, vocab_size)`` trains a
byte-level BPE on an iterable of documents:

* id 0 is the special token ``EOS_TOKEN`` (``"<|endoftext|>"``), so
  ``eos_id == 0`` as for bytes; ids 1..256 are the 256 byte symbols of the
  ByteLevel alphabet, the merges follow. ``vocab_size`` counts all of them and
  must lie in ``[MIN_BPE_VOCAB, MAX_BPE_VOCAB]`` = ``[258, 2**20]`` (at least
  one merge).
* ByteLevel pre-tokenizer (GPT-2 splitting regex, no prefix space) and
  ByteLevel decoder, no normalizer: ``decode(encode(text)) == text`` exactly
  for every string (whitespace, newlines, any unicode).
* ``encode`` never emits ``eos_id``: the literal text ``"<|endoftext|>"``
  inside a document is encoded as ordinary bytes
  (``encode_special_tokens=True``), and a NUL character is a byte symbol.
* ``encode`` returns ``uint16`` when ``vocab_size <= 65536``, else ``int32``.
  ``decode`` decodes ``eos_id`` as the text ``"<|endoftext|>"`` and rejects ids
  outside ``[0, vocab_size)``; a sequence cut inside a multi-byte character
  decodes with U+FFFD, like bytes.
* Training is deterministic: the same texts and ``vocab_size`` give the same
  ``tokenizer.json``. The trainer learns at most ``vocab_size`` tokens; if the
  text is too small to supply that many merges ``train_bpe`` raises
  ``ValueError`` (a model table sized ``vocab_size`` would have dead rows).
* ``save(path)`` writes ``tokenizer.json`` (atomically: temp file + rename);
  ``load_tokenizer(path)`` reads it back. Any HF ``tokenizer.json`` whose id 0
  is a special token loads; the exact round trip is only promised for
  byte-level ones such as those ``train_bpe`` writes.
* ``fingerprint`` is ``"sha256:<hex>"`` of the tokenizer's canonical JSON
  (``Tokenizer.to_str()``): data-iterator states record it, so a run is not
  resumed with a different tokenizer.

``token_byte_lengths()`` counts ``eos_id`` as one byte (it stands for the NUL
separator of the byte stream), so bits per byte of a BPE run and of a byte run
on the same corpus measure the same text.

This module imports NumPy only; the ``tokenizers`` package is imported inside
the functions that need it (``import seedjax.data`` stays light).
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import tempfile
from typing import Iterable

import numpy as np

__all__ = [
    "ByteTokenizer",
    "BPETokenizer",
    "EOS_TOKEN",
    "MIN_BPE_VOCAB",
    "MAX_BPE_VOCAB",
    "check_bpe_vocab_size",
    "load_tokenizer",
    "train_bpe",
]

EOS_TOKEN = "<|endoftext|>"
MIN_BPE_VOCAB = 258  # eos + 256 byte symbols + at least one merge
MAX_BPE_VOCAB = 2**20


def _check_ids(name: str, ids, vocab_size: int) -> np.ndarray:
    """``ids`` as a flat integer array with every value in ``[0, vocab_size)``."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return arr.reshape(-1).astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name}.decode expects integer token ids, got dtype {arr.dtype}.")
    arr = arr.reshape(-1)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(
            f"{name}.decode: token ids must be in [0, {vocab_size}), "
            f"got values in [{lo}, {hi}]."
        )
    return arr


def _check_text(name: str, text) -> str:
    if not isinstance(text, str):
        raise TypeError(
            f"{name}.encode expects a str, got {type(text).__name__}; "
            "decode bytes to str first."
        )
    return text


class ByteTokenizer:
    """UTF-8 byte-level tokenizer: ``vocab_size == 256``, ``eos_id == 0``."""

    vocab_size: int = 256
    eos_id: int = 0
    fingerprint: str = "byte"

    def encode(self, text: str) -> np.ndarray:
        """Returns the UTF-8 bytes of ``text`` as a 1-D ``uint8`` array."""
        _check_text("ByteTokenizer", text)
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, ids) -> str:
        """Decodes token ids (list, NumPy or JAX integer array) to a string.

        Invalid UTF-8 sequences become U+FFFD. ``eos_id`` (NUL) is decoded as
        ``"\\x00"``; strip it if you want plain text. Ids outside 0..255 raise
        ``ValueError``.
        """
        arr = _check_ids("ByteTokenizer", ids, self.vocab_size)
        if arr.size == 0:
            return ""
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def token_byte_lengths(self) -> np.ndarray:
        """Bytes per token id: all ones."""
        return np.ones(self.vocab_size, np.int64)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def check_bpe_vocab_size(vocab_size, field: str = "data.vocab_size") -> int:
    """``vocab_size`` as an int in ``[MIN_BPE_VOCAB, MAX_BPE_VOCAB]``, else ValueError."""
    if (isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral)
            or not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB):
        raise ValueError(
            f"{field}={vocab_size!r} must be an integer in [{MIN_BPE_VOCAB}, "
            f"{MAX_BPE_VOCAB}] (BPE: 1 eos + 256 byte symbols + at least one merge)."
        )
    return int(vocab_size)


class BPETokenizer:
    """A HF ``tokenizers.Tokenizer`` behind the project's tokenizer interface.

    ``BPETokenizer(tok)`` requires id 0 to be a special token (the eos). Build
    one with ``train_bpe`` or ``load_tokenizer``; see the module docstring.
    """

    eos_id: int = 0

    def __init__(self, tokenizer):
        self._tok = tokenizer
        canonical = tokenizer.to_str()
        self.fingerprint = "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        spec = json.loads(canonical)
        specials = {t["id"]: t for t in spec.get("added_tokens") or [] if t.get("special")}
        if 0 not in specials:
            raise ValueError(
                "a tokenizer for seedjax must have a special (eos) token at id 0, got "
                f"{tokenizer.id_to_token(0)!r} at id 0; train one with "
                "seedjax.data.tokenizers.train_bpe."
            )
        self.eos_token = specials[0]["content"]
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self._byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
        self._specials = specials
        # The text "<|endoftext|>" inside a document is plain text, never id 0.
        tokenizer.encode_special_tokens = True
        self._dtype = np.uint16 if self.vocab_size <= 2**16 else np.int32

    @property
    def hf_tokenizer(self):
        """The wrapped ``tokenizers.Tokenizer``."""
        return self._tok

    def encode(self, text: str) -> np.ndarray:
        """1-D ``uint16`` (``int32`` above 65536 tokens) ids of ``text``; no eos added."""
        _check_text("BPETokenizer", text)
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=self._dtype)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        """``[encode(t) for t in texts]``, computed in parallel by ``tokenizers``."""
        for t in texts:
            _check_text("BPETokenizer", t)
        out = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=self._dtype) for e in out]

    def decode(self, ids) -> str:
        """Text of token ids (list, NumPy or JAX array); ids outside the vocabulary raise."""
        arr = _check_ids("BPETokenizer", ids, self.vocab_size)
        if arr.size == 0:
            return ""
        return self._tok.decode([int(i) for i in arr], skip_special_tokens=False)

    def token_byte_lengths(self) -> np.ndarray:
        """UTF-8 bytes spelled by each id (eos: 1). Exact for byte-level tokenizers (one
        ByteLevel symbol per byte); for other tokenizer.json files the length of the
        token decoded alone (approximate where decoders join tokens)."""
        out = np.ones(self.vocab_size, np.int64)
        for i in range(self.vocab_size):
            if i in self._specials:
                out[i] = 1 if i == self.eos_id else len(self._specials[i]["content"].encode())
                continue
            piece = self._tok.id_to_token(i)
            if piece is None:
                continue
            out[i] = len(piece) if self._byte_level else max(
                len(self._tok.decode([i]).encode("utf-8")), 1)
        return out

    def save(self, path: str) -> str:
        """Writes ``tokenizer.json`` to ``path`` atomically; returns ``path``."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tokenizer-", suffix=".json", dir=folder)
        os.close(fd)
        try:
            self._tok.save(tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
                f"fingerprint={self.fingerprint[:19]}...)")


def load_tokenizer(path: str, field: str = "data.tokenizer") -> BPETokenizer:
    """A ``BPETokenizer`` from a HF ``tokenizer.json`` file.

    A missing or unreadable file, or one without a special token at id 0, raises
    ``ValueError`` naming ``field``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(
            f"{field}={path!r}: no such tokenizer file (expected 'byte', 'bpe' or the "
            "path of an existing tokenizer.json)."
        )
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top

    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # the package raises its own exception type
        raise ValueError(f"{field}={path!r} is not a readable tokenizer.json: {e}") from e
    try:
        return BPETokenizer(tok)
    except ValueError as e:
        raise ValueError(f"{field}={path!r}: {e}") from e


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
              show_progress: bool = False) -> BPETokenizer:
    """Trains a byte-level BPE with ``vocab_size`` tokens (eos at id 0) on ``texts``.

    ``texts`` is an iterable of documents (strings); each is pre-tokenized on
    its own, so no merge crosses a document boundary. A pair must occur at
    least ``min_frequency`` times to be merged. Raises ``ValueError`` naming
    ``data.vocab_size`` if it is out of range or the text supplies fewer
    merges than it asks for.
    """
    vocab_size = check_bpe_vocab_size(vocab_size)
    from tokenizers import (  # pylint: disable=g-import-not-at-top
        Tokenizer, decoders, models, pre_tokenizers, trainers)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
        special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def checked(it):
        for t in it:
            yield _check_text("train_bpe", t)

    tok.train_from_iterator(checked(texts), trainer)
    got = tok.get_vocab_size(with_added_tokens=True)
    if got != vocab_size:
        raise ValueError(
            f"data.vocab_size={vocab_size}: the training text yields only {got} tokens "
            f"({got - 257} merges occurring >= {min_frequency} times); use a smaller "
            "data.vocab_size or more text."
        )
    return BPETokenizer(tok)
