"""seedjax data: corpora, tokenizers and grain input pipelines.

Public API::

    from seedjax.data import build_lm_data
    data = build_lm_data(source="stdlib", seq_len=256, batch_size=32, seed=0)
    batch = next(data.train_iter)   # {"inputs": int32 [B_local, T], "targets": ...}
    state = data.get_state()        # JSON-serialisable; data.set_state(state) resumes

See ``pipeline`` (batch format, windows, shuffling, sharding, state, which
tokenizer), ``sources`` (corpora: stdlib, gcide, fortunes, paths; the
train/val split rules) and ``tokenizers`` (bytes; byte-level BPE via HF
``tokenizers``). Importing this package imports neither grain (loaded by
``build_lm_data``) nor ``tokenizers`` (loaded when a BPE is trained or read).
"""

from seedjax.data.pipeline import LMData, build_lm_data, resolve_tokenizer
from seedjax.data.sources import (
    Corpus,
    fortunes_corpus,
    gcide_corpus,
    get_corpus,
    is_val_path,
    stdlib_corpus,
    text_corpus,
    token_streams,
    train_texts,
)
from seedjax.data.tokenizers import BPETokenizer, ByteTokenizer, load_tokenizer, train_bpe

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "Corpus",
    "LMData",
    "build_lm_data",
    "fortunes_corpus",
    "gcide_corpus",
    "get_corpus",
    "is_val_path",
    "load_tokenizer",
    "resolve_tokenizer",
    "stdlib_corpus",
    "text_corpus",
    "token_streams",
    "train_bpe",
    "train_texts",
]
