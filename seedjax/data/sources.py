"""Text corpora for language modelling: which documents, and the train/val split.

A ``Corpus`` is a plain record of file paths plus a JSON-serialisable
``description``; it holds no text. ``token_streams(corpus, tokenizer)`` reads
the files and returns the train and val token streams (1-D arrays, documents
joined with ``tokenizer.eos_id``); ``split_documents`` / ``train_texts`` give
the documents themselves (a BPE is trained on ``train_texts``).

Sources (``get_corpus(source)``):

* ``"stdlib"``: every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``
  of the running Python, skipping any ``site-packages`` and ``__pycache__``
  folder (about 1,800 files, 31 MB for CPython 3.11). Always available, no
  network. ``description["python_version"]`` records the version, since the
  corpus changes with it. One file is one document.
* ``"gcide"``: the GNU Collaborative International Dictionary of English as
  installed by the Debian package ``dict-gcide`` (``gcide.dict.dz``, a
  dictzip = gzip file, or a plain ``gcide.dict``, plus ``gcide.index`` under
  ``/usr/share/dictd``). One document per dictionary entry: the distinct
  ``(offset, length)`` spans of ``gcide.index`` (several headwords may share
  one entry) in dictionary order, without dictfmt's ``00-database-*``
  metadata entries.
* ``"fortunes"``: the Debian package ``fortunes`` (``/usr/share/games/fortunes``):
  the UTF-8 files at the top level of that folder in sorted name order,
  skipping the ``.dat`` index files, the ``.u8`` aliases, symlinked
  duplicates and sub-folders (other languages, ``off/``). One document per
  fortune: the lines between two lines holding only ``%``.
  For both Debian corpora the folder can be overridden with the environment
  variable ``SEEDJAX_GCIDE_DIR`` / ``SEEDJAX_FORTUNES_DIR`` (or the ``root``
  argument of ``gcide_corpus`` / ``fortunes_corpus``); when the files are
  missing a ``ValueError`` names ``data.source`` and the apt package to
  install. Documents with a NUL byte or invalid UTF-8 (and blank gcide
  entries) are skipped and counted in ``description["n_skipped_docs"]``,
  fortune files that are not UTF-8 in ``n_skipped_files``; empty fortunes
  (two ``%`` lines in a row) are dropped.
* any other string is a path: a text file, or a folder read recursively (one
  file, one document). Hidden entries (names starting with ``.``, e.g.
  ``.git``) are skipped. (To use a folder literally called ``stdlib``,
  ``gcide`` or ``fortunes`` as text, pass ``./stdlib`` etc.)

Rules for file corpora (stdlib and paths):

* Files are listed in sorted order of their path relative to the root.
* Binary files (not valid UTF-8, or containing a NUL byte, which is the
  document separator) and empty files are skipped and counted in
  ``description["n_skipped_files"]``.
* Split rule ``"files"`` (the default): a file is in the val split iff
  ``zlib.crc32(relative_posix_path) / 2**32 < val_fraction``. The decision for
  a file depends only on its own relative path, so it is fixed across runs and
  machines and does not change when other files are added or removed.

Record corpora (gcide, fortunes) use split rule ``"documents"``: a document is
in the val split iff ``zlib.crc32(document_bytes) / 2**32 < val_fraction``
(fixed per document; identical documents fall on the same side).

Split rule ``"bytes"`` (any corpus): used for a single file, or when the file
or document rule leaves the train or the val split empty (tiny corpora). All
documents form one stream (joined with one separator byte); the last
``val_fraction`` of it is val: ``cut = floor(len(stream) * (1 - val_fraction))``.
Then ``train_files == val_files`` (all files). With the byte tokenizer the
token streams are ``stream[:cut]`` and ``stream[cut:]``; other tokenizers
encode the text on each side of the same byte cut.

Token streams are ``uint8`` for the byte tokenizer, ``uint16`` for
vocabularies up to 65,536 and ``int32`` above (``stream_dtype``).

``description`` keys: ``name, root, split_rule, val_fraction, n_train_files,
n_val_files, n_skipped_files, train_bytes, val_bytes, content_crc32`` (plus
``python_version`` for the stdlib; ``format, n_train_docs, n_val_docs,
n_skipped_docs`` for record corpora). ``*_bytes`` count the joined stream
including one separator between documents, i.e. exactly the token counts of
``ByteTokenizer``. ``content_crc32`` fingerprints the paths and contents
(record corpora: the documents' contents).

This module depends on NumPy only (no jax or grain import).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import platform
import sysconfig
import zlib

import numpy as np

from seedjax.data.tokenizers import ByteTokenizer

__all__ = [
    "Corpus",
    "stdlib_corpus",
    "text_corpus",
    "get_corpus",
    "token_streams",
    "is_val_path",
    "is_val_doc",
    "gcide_corpus",
    "fortunes_corpus",
    "split_documents",
    "train_texts",
    "encode_documents",
    "stream_dtype",
    "GCIDE_DIR_ENV",
    "FORTUNES_DIR_ENV",
]

_STDLIB_EXCLUDED_DIRS = frozenset({"site-packages", "__pycache__"})


@dataclasses.dataclass(frozen=True)
class Corpus:
    """File lists of a text corpus and its train/val split (no text held)."""

    name: str  # "stdlib" or the user path as given
    train_files: tuple[str, ...]  # absolute paths, sorted
    val_files: tuple[str, ...]  # absolute paths, sorted
    description: dict  # JSON-serialisable; see the module docstring


def _check_val_fraction(val_fraction) -> float:
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise ValueError(
            f"data.val_fraction must be a number in (0, 0.5], got {val_fraction!r}."
        )
    vf = float(val_fraction)
    if not (0.0 < vf <= 0.5):  # also rejects NaN
        raise ValueError(
            f"data.val_fraction must be in (0, 0.5], got {val_fraction!r}."
        )
    return vf


def is_val_path(relpath: str, val_fraction: float) -> bool:
    """The file-level split rule: True iff the file belongs to the val split."""
    key = relpath.replace(os.sep, "/").encode("utf-8", errors="surrogateescape")
    return zlib.crc32(key) < val_fraction * 2**32


def _read_text_bytes(path: str) -> bytes | None:
    """Returns the file's bytes if it is non-empty UTF-8 text without NUL."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    if not data or b"\0" in data:
        return None
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return data


def _build(name: str, root: str, paths: list[str], val_fraction: float,
           force_bytes_split: bool, extra: dict) -> Corpus:
    """Reads ``paths`` once to filter binaries, then assigns the split."""
    rel_paths = sorted(
        (os.path.relpath(p, root) if os.path.isdir(root) else os.path.basename(p), p)
        for p in paths
    )
    kept, sizes, skipped = [], [], 0
    crc = 0
    for rel, path in rel_paths:
        data = _read_text_bytes(path)
        if data is None:
            skipped += 1
            continue
        kept.append((rel, path))
        sizes.append(len(data))
        crc = zlib.crc32(rel.encode("utf-8", errors="surrogateescape"), crc)
        crc = zlib.crc32(data, crc)
    if not kept:
        raise ValueError(
            f"data.source={name!r}: no usable text files under {root!r} "
            f"({skipped} binary/empty/unreadable files skipped). Expected UTF-8 "
            "text without NUL bytes."
        )

    def stream_len(ix):  # documents joined with one separator token
        return sum(sizes[i] for i in ix) + max(len(ix) - 1, 0)

    is_val = [is_val_path(rel, val_fraction) for rel, _ in kept]
    n_val = sum(is_val)
    if force_bytes_split or n_val == 0 or n_val == len(kept):
        rule = "bytes"
        all_files = tuple(p for _, p in kept)
        train_files = val_files = all_files
        total = stream_len(range(len(kept)))
        train_bytes = math.floor(total * (1.0 - val_fraction))
        val_bytes = total - train_bytes
    else:
        rule = "files"
        train_ix = [i for i, v in enumerate(is_val) if not v]
        val_ix = [i for i, v in enumerate(is_val) if v]
        train_files = tuple(kept[i][1] for i in train_ix)
        val_files = tuple(kept[i][1] for i in val_ix)
        train_bytes, val_bytes = stream_len(train_ix), stream_len(val_ix)
    description = dict(
        name=name,
        root=root,
        **extra,
        split_rule=rule,
        val_fraction=val_fraction,
        n_train_files=len(train_files),
        n_val_files=len(val_files),
        n_skipped_files=skipped,
        train_bytes=train_bytes,
        val_bytes=val_bytes,
        content_crc32=crc,
    )
    return Corpus(name, train_files, val_files, description)


def stdlib_corpus(val_fraction: float = 0.02) -> Corpus:
    """The ``.py`` files of the running Python's standard library."""
    vf = _check_val_fraction(val_fraction)
    root = os.path.realpath(sysconfig.get_paths()["stdlib"])
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_EXCLUDED_DIRS]
        paths.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    if not paths:
        raise ValueError(
            f"data.source='stdlib': no .py files found under {root!r}; pass a "
            "text file or folder as data.source instead."
        )
    extra = {"python_version": platform.python_version()}
    return _build("stdlib", root, paths, vf, False, extra)


def text_corpus(path: str, val_fraction: float = 0.02) -> Corpus:
    """A UTF-8 text file, or a folder of text files read recursively."""
    vf = _check_val_fraction(val_fraction)
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(
            f"data.source must be 'stdlib' or a path to a text file or folder, "
            f"got {path!r}."
        )
    root = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.exists(root):
        raise ValueError(
            f"data.source={os.fspath(path)!r}: path {root!r} does not exist "
            "(expected 'stdlib', a text file or a folder of text files)."
        )
    if os.path.isfile(root):
        if _read_text_bytes(root) is None:
            raise ValueError(
                f"data.source={os.fspath(path)!r}: {root!r} is empty, binary "
                "(contains NUL bytes) or not valid UTF-8."
            )
        return _build(os.fspath(path), root, [root], vf, True, {})
    paths = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        paths.extend(
            os.path.join(dirpath, f) for f in filenames if not f.startswith(".")
        )
    if not paths:
        raise ValueError(
            f"data.source={os.fspath(path)!r}: folder {root!r} contains no files."
        )
    return _build(os.fspath(path), root, paths, vf, False, {})


# --------------------------------------------------------------- English corpora (Debian)

GCIDE_DIR_ENV = "SEEDJAX_GCIDE_DIR"
FORTUNES_DIR_ENV = "SEEDJAX_FORTUNES_DIR"
_GCIDE_DEFAULT_DIR = "/usr/share/dictd"
_FORTUNES_DEFAULT_DIR = "/usr/share/games/fortunes"
_DICTD_B64 = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_number(text: str) -> int:
    """A dictd index number: base 64, most significant digit first."""
    value = 0
    for ch in text:
        value = value * 64 + _DICTD_B64[ch]
    return value


def _usable_doc(doc: bytes) -> bool:
    """Non-blank UTF-8 text without NUL (the document separator)."""
    if not doc.strip() or b"\0" in doc:
        return False
    try:
        doc.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _gcide_documents(root: str) -> tuple[list[str], list[bytes], int, int]:
    """(files read, entries in dictionary order, skipped entries, 0) of dictd's GCIDE."""
    import gzip  # pylint: disable=g-import-not-at-top

    dict_path = next((os.path.join(root, n) for n in ("gcide.dict.dz", "gcide.dict")
                      if os.path.isfile(os.path.join(root, n))), None)
    index_path = os.path.join(root, "gcide.index")
    if dict_path is None or not os.path.isfile(index_path):
        raise ValueError(
            f"data.source='gcide': no gcide.dict.dz (or gcide.dict) and gcide.index under "
            f"{root!r}; install the Debian package dict-gcide (apt-get install dict-gcide), "
            f"or set {GCIDE_DIR_ENV} to a folder holding those files."
        )
    opener = gzip.open if dict_path.endswith(".dz") else open
    try:
        with opener(dict_path, "rb") as f:
            data = f.read()
        with open(index_path, "rb") as f:
            index = f.read().decode("utf-8", errors="replace")
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"data.source='gcide': cannot read {dict_path!r}: {e}") from e
    spans = set()
    for line in index.splitlines():
        fields = line.split("\t")
        if len(fields) < 3 or fields[0].startswith(("00-database", "00database")):
            continue  # dictfmt's metadata entries (info, url, short name)
        try:
            spans.add((_dictd_number(fields[1]), _dictd_number(fields[2])))
        except KeyError:
            continue
    docs, skipped = [], 0
    for offset, length in sorted(spans):
        doc = data[offset:offset + length]
        if _usable_doc(doc) and offset + length <= len(data):
            docs.append(doc)
        else:
            skipped += 1
    return [dict_path, index_path], docs, skipped, 0


def _fortune_documents(root: str) -> tuple[list[str], list[bytes], int, int]:
    """(files read, fortunes in file then text order, skipped fortunes, skipped files)."""
    files, seen = [], set()
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if (name.startswith(".") or name.endswith((".dat", ".u8"))
                    or not os.path.isfile(path) or os.path.realpath(path) in seen):
                continue  # index files, UTF-8 aliases (symlinks), folders (other languages)
            seen.add(os.path.realpath(path))
            files.append(path)
    if not files:
        raise ValueError(
            f"data.source='fortunes': no fortune files under {root!r}; install the Debian "
            f"package fortunes (apt-get install fortunes), or set {FORTUNES_DIR_ENV} to a "
            "folder of fortune files."
        )
    docs, skipped, used = [], 0, []
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # counted as a skipped file
        used.append(path)
        current: list[bytes] = []
        for line in data.splitlines(keepends=True) + [b"%\n"]:
            if line.rstrip(b"\r\n") != b"%":
                current.append(line)
                continue
            doc = b"".join(current)
            current = []
            if doc.strip():
                if _usable_doc(doc):
                    docs.append(doc)
                else:
                    skipped += 1
    return used, docs, skipped, len(files) - len(used)


_RECORD_READERS = {
    "gcide": (_gcide_documents, GCIDE_DIR_ENV, _GCIDE_DEFAULT_DIR),
    "fortunes": (_fortune_documents, FORTUNES_DIR_ENV, _FORTUNES_DEFAULT_DIR),
}


def is_val_doc(doc: bytes, val_fraction: float) -> bool:
    """The document-level split rule of record corpora (gcide, fortunes)."""
    return zlib.crc32(doc) < val_fraction * 2**32


def _record_corpus(name: str, val_fraction: float, root: str | None) -> Corpus:
    vf = _check_val_fraction(val_fraction)
    reader, env, default = _RECORD_READERS[name]
    root = os.path.abspath(os.path.expanduser(root or os.environ.get(env) or default))
    files, docs, skipped, skipped_files = reader(root)
    if not docs:
        raise ValueError(f"data.source={name!r}: no usable documents under {root!r} "
                         f"({skipped} documents and {skipped_files} files skipped as blank, "
                         "binary or not UTF-8).")
    crc = 0
    for doc in docs:
        crc = zlib.crc32(doc, crc)
    is_val = [is_val_doc(d, vf) for d in docs]
    n_val = sum(is_val)
    stream_len = lambda sizes: sum(sizes) + max(len(sizes) - 1, 0)
    if n_val == 0 or n_val == len(docs):
        rule, n_train_docs = "bytes", len(docs)
        total = stream_len([len(d) for d in docs])
        train_bytes = math.floor(total * (1.0 - vf))
        val_bytes = total - train_bytes
    else:
        rule, n_train_docs = "documents", len(docs) - n_val
        train_bytes = stream_len([len(d) for d, v in zip(docs, is_val) if not v])
        val_bytes = stream_len([len(d) for d, v in zip(docs, is_val) if v])
    description = dict(
        name=name, root=root, format=name, split_rule=rule, val_fraction=vf,
        n_train_files=len(files), n_val_files=len(files), n_skipped_files=skipped_files,
        n_train_docs=n_train_docs, n_val_docs=n_val if rule == "documents" else len(docs),
        n_skipped_docs=skipped, train_bytes=train_bytes, val_bytes=val_bytes,
        content_crc32=crc)
    return Corpus(name, tuple(files), tuple(files), description)


def gcide_corpus(val_fraction: float = 0.02, root: str | None = None) -> Corpus:
    """GCIDE (Debian ``dict-gcide``): one document per dictionary entry (module docstring)."""
    return _record_corpus("gcide", val_fraction, root)


def fortunes_corpus(val_fraction: float = 0.02, root: str | None = None) -> Corpus:
    """Debian ``fortunes``: one document per fortune (module docstring)."""
    return _record_corpus("fortunes", val_fraction, root)


def get_corpus(source: str, val_fraction: float = 0.02) -> Corpus:
    """``"stdlib"``, ``"gcide"``, ``"fortunes"``, or a path -> ``text_corpus``."""
    if source == "stdlib":
        return stdlib_corpus(val_fraction)
    if source in _RECORD_READERS:
        return _record_corpus(source, val_fraction, None)
    return text_corpus(source, val_fraction)


# --------------------------------------------------------------- documents and token streams

def _read_files(files) -> list[bytes]:
    out = []
    for path in files:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def split_documents(corpus: Corpus) -> tuple[list[bytes], list[bytes]]:
    """``(train_docs, val_docs)``: the UTF-8 documents of each split, in corpus order.

    Split rule ``"bytes"`` cuts the joined stream (documents separated by one
    NUL byte) at ``description["train_bytes"]`` and splits each side at the
    separators, so the last train document and the first val document may be
    parts of one document.
    """
    d = corpus.description
    rule = d.get("split_rule", "files")
    fmt = d.get("format")
    if rule not in ("files", "documents", "bytes"):
        raise ValueError(f"Corpus {corpus.name!r}: split_rule {rule!r} has no documents.")
    if fmt in _RECORD_READERS:
        docs = _RECORD_READERS[fmt][0](d["root"])[1]
        if rule == "documents":
            vf = float(d["val_fraction"])
            flags = [is_val_doc(doc, vf) for doc in docs]
            return ([doc for doc, v in zip(docs, flags) if not v],
                    [doc for doc, v in zip(docs, flags) if v])
    else:
        if rule == "files":
            return _read_files(corpus.train_files), _read_files(corpus.val_files)
        docs = _read_files(corpus.train_files)
    stream = b"\0".join(docs)
    cut = math.floor(len(stream) * (1.0 - float(d["val_fraction"])))
    return stream[:cut].split(b"\0"), stream[cut:].split(b"\0")


def train_texts(corpus: Corpus) -> list[str]:
    """The documents of the train split as strings (what a tokenizer is trained on)."""
    return [doc.decode("utf-8", errors="replace") for doc in split_documents(corpus)[0]]


def stream_dtype(vocab_size: int):
    """The token-stream dtype: ``uint8`` for bytes, ``uint16`` up to 65536 ids, else int32."""
    return np.uint8 if vocab_size <= 256 else np.uint16 if vocab_size <= 2**16 else np.int32


_ENCODE_CHUNK_CHARS = 1 << 21  # bounds the memory tokenizers' Encoding objects take


def encode_documents(docs: list[bytes], tokenizer) -> np.ndarray:
    """Tokenises UTF-8 ``docs`` and joins them with ``tokenizer.eos_id`` in between."""
    if isinstance(tokenizer, ByteTokenizer):  # the bytes themselves (eos 0 is the NUL byte)
        return np.frombuffer(b"\0".join(docs), dtype=np.uint8).copy()
    dtype = stream_dtype(tokenizer.vocab_size)
    texts = [doc.decode("utf-8", errors="replace") for doc in docs]
    batch = getattr(tokenizer, "encode_batch", None)
    encoded = []
    if batch is None:
        encoded = [tokenizer.encode(t) for t in texts]
    else:
        start = 0
        while start < len(texts):
            stop, size = start, 0
            while stop < len(texts) and (stop == start or size < _ENCODE_CHUNK_CHARS):
                size += len(texts[stop])
                stop += 1
            encoded += batch(texts[start:stop])
            start = stop
    eos = np.asarray([tokenizer.eos_id], dtype=dtype)
    pieces = []
    for i, ids in enumerate(encoded):
        if i:
            pieces.append(eos)
        pieces.append(np.asarray(ids, dtype=dtype))
    if not pieces:
        return np.zeros((0,), dtype)
    return np.concatenate(pieces)


def token_streams(corpus: Corpus, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Tokenises the corpus: returns 1-D ``(train_tokens, val_tokens)``.

    Documents are joined with ``tokenizer.eos_id`` between them (see
    ``split_documents``; for split rule ``"bytes"`` the text is cut where the
    byte stream is cut, ``floor(len * (1 - val_fraction))``, so the byte
    tokenizer's streams are exactly the two halves of the byte stream and a
    BPE sees the same text on each side). Dtype: ``stream_dtype``.
    """
    rule = corpus.description.get("split_rule", "files")
    if rule not in ("files", "documents", "bytes"):
        raise ValueError(f"Corpus {corpus.name!r}: unknown split_rule {rule!r}.")
    train_docs, val_docs = split_documents(corpus)
    return encode_documents(train_docs, tokenizer), encode_documents(val_docs, tokenizer)
