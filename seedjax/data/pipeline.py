"""grain input pipeline for language modelling (bytes or a BPE vocabulary).

Tokenizer
---------
``build_lm_data(tokenizer=...)`` (config ``data.tokenizer``; see
``seedjax.data.tokenizers``): ``"byte"`` (default) reads UTF-8 bytes;
``"bpe"`` trains a byte-level BPE of ``vocab_size`` tokens (``data.vocab_size``)
on the documents of the TRAIN split only (all of them, no subset: 4-12 s
for the stdlib's 31 MB with 4096 tokens on 2 shared CPU cores, and encoding
the corpus about 10 s more) and saves it as ``<workdir>/tokenizer.json``;
when that file already exists (a resumed run) it is loaded instead, so a
resumed run uses the identical tokenizer (with several processes each trains
the same tokenizer, training being deterministic, and writes the same file
atomically). A path loads that ``tokenizer.json``
(and copies it into the workdir). ``task:`` sources are byte-level only. The
tokenizer's fingerprint (a hash of its JSON) is part of the data state's
fingerprint (bytes: absent, as before), so a run is not resumed with a
different tokenizer. ``LMData.val_tokens_per_byte`` converts the val loss
from nats per token to bits per byte. Token streams are ``uint8`` (bytes),
``uint16`` (vocabularies up to 65,536) or ``int32``.

Data format
-----------
The train (or val) token stream of a corpus (see ``seedjax.data.sources``;
documents joined with ``eos_id``) is cut into windows of ``T + 1`` tokens with
stride ``T`` (``T = seq_len``): window ``w`` is ``stream[w*T : w*T + T + 1]``
and there are ``(len(stream) - 1) // T`` windows. Consecutive windows share one
boundary token, so every (input, target) pair of the stream occurs in exactly
one window and no target token is wasted; the stream's tail shorter than a
window is dropped. A window gives ``inputs = window[:-1]`` and
``targets = window[1:]``. Documents are packed across ``eos`` boundaries (no
attention reset). ``source="task:..."`` streams synthetic memory-task episodes
instead of a text corpus (``seedjax.data.synthetic``: block-aligned, so a
window never cuts an episode).

Every batch is a dict of ``int32`` arrays
``{"inputs": [B_local, T], "targets": [B_local, T]}`` with
``B_local = batch_size // process_count`` (``batch_size`` is global). A
``task:`` source with answer-only tasks (``mano``, ``multihop``) adds
``"mask": float32 [B_local, T]`` (1 where ``targets`` is trained on; the
window ``stream_mask[w*T + 1 : w*T + T + 1]``).

Order and sharding
------------------
Train: ``MapDataset.range(n_windows).shuffle(s).repeat()`` is one infinite
stream of window ids; each epoch is a different permutation (grain folds the
epoch into the shuffle seed). ``s`` is derived from ``seed`` by
``np.random.SeedSequence`` so that nearby seeds do not share epochs (grain
shuffles epoch ``e`` with ``s + e``). Global batch ``k`` is stream elements
``[k*B, (k+1)*B)`` in order; process ``p`` of ``P`` takes its contiguous rows
``[p*B_local, (p+1)*B_local)``. So row ``i`` of global step ``k`` is stream
element ``k*B + i`` whatever ``P`` is: stacking the processes' rows in process
order (as ``jax.make_array_from_process_local_data`` does) rebuilds the
single-process batch exactly, so every device gets the same rows, and the run
the same numbers, for any process count. Processes see disjoint windows, and a
saved state (the step count) resumes on a different process count with the
same global batches.

Val: ``max_val_batches * B`` val windows spread evenly over the whole val
stream (window ``i * n_val // (max_val_batches * B)``, no shuffle), so every val
file contributes; laid out across processes the same way as train batches.

``LMData.seen_batches(n)`` re-reads the first ``n`` train batches of the run's order (grain's
random access), for evaluating the loss on data the run has already trained on.

State
-----
``LMData.get_state()`` returns a JSON-serialisable dict: grain's iterator
state plus a fingerprint (seed, seq_len, batch_size, window count, corpus
crc). ``set_state`` restores it exactly and, by default, refuses a state
whose fingerprint differs (resuming on different data would be silent).

grain is imported lazily, so ``import seedjax.data`` does not load it.
"""

from __future__ import annotations

import copy
import os

import numpy as np

from seedjax.data.sources import Corpus, get_corpus, token_streams, train_texts
from seedjax.data.synthetic import is_task_source, task_streams
from seedjax.data.tokenizers import (ByteTokenizer, check_bpe_vocab_size, load_tokenizer,
                                     train_bpe)
from seedjax.validation import check_int

__all__ = ["LMData", "build_lm_data", "resolve_tokenizer", "run_tokenizer", "TOKENIZER_FILE"]

TOKENIZER_FILE = "tokenizer.json"  # a run's tokenizer, in its workdir

_STATE_VERSION = 1


class _WindowBatcher:
    """Maps a 1-D array of window ids to an ``int32`` inputs/targets batch."""

    def __init__(self, tokens: np.ndarray, seq_len: int, rows: slice = slice(None),
                 mask: np.ndarray | None = None):
        self.tokens = tokens
        self.seq_len = seq_len
        self.rows = rows  # this process's rows of a global batch of window ids
        self.mask = mask  # loss mask stream aligned with ``tokens``, or None
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    def __call__(self, window_ids) -> dict:
        starts = np.asarray(window_ids, dtype=np.int64)[self.rows] * self.seq_len
        idx = starts[:, None] + self._offsets
        rows = self.tokens[idx].astype(np.int32)
        batch = {
            "inputs": np.ascontiguousarray(rows[:, :-1]),
            "targets": np.ascontiguousarray(rows[:, 1:]),
        }
        if self.mask is not None:
            batch["mask"] = self.mask[idx[:, 1:]].astype(np.float32)
        return batch


def _shuffle_seed(seed: int) -> int:
    return int(np.random.SeedSequence([seed]).generate_state(1, np.uint32)[0])


class LMData:
    """Train iterator, fixed val batches and metadata of an LM dataset.

    Attributes: ``train_iter`` (infinite grain ``DatasetIterator`` of batch
    dicts), ``tokenizer``, ``corpus``, ``train_tokens``, ``val_tokens``,
    ``seq_len``, ``batch_size`` (global), ``local_batch_size``,
    ``train_windows``, ``val_windows``, ``steps_per_epoch`` (global batches per
    pass over the train windows), ``worker_count``, ``val_tokens_per_byte``
    (target tokens per UTF-8 byte over the val batches: 1.0 for bytes; turns
    nats per token into bits per byte). With ``worker_count > 0``
    call ``train_iter.close()`` when done to stop the worker processes.
    """

    def __init__(self, *, train_iter, val_batches: list, tokenizer, corpus: Corpus,
                 train_tokens: int, val_tokens: int, seq_len: int, batch_size: int,
                 local_batch_size: int, train_windows: int, val_windows: int,
                 worker_count: int, fingerprint: dict, val_tokens_per_byte: float = 1.0,
                 train_dataset=None, train_stream: np.ndarray | None = None):
        self.train_iter = train_iter
        self._val_batches = val_batches
        self.tokenizer = tokenizer
        self.corpus = corpus
        self.train_tokens = train_tokens
        self.val_tokens = val_tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.local_batch_size = local_batch_size
        self.train_windows = train_windows
        self.val_windows = val_windows
        self.steps_per_epoch = train_windows // batch_size
        self.worker_count = worker_count
        self.fingerprint = fingerprint
        self.val_tokens_per_byte = val_tokens_per_byte
        self._train_dataset = train_dataset  # random access: global batch k of the train order
        self.train_stream = train_stream      # the train split's token stream (1-D)

    def seen_batches(self, n: int) -> list[dict]:
        """The first ``n`` train batches in the run's order (this process's rows): the data a
        run has trained on once it is past step n, for a seen-vs-unseen loss comparison."""
        if self._train_dataset is None:
            raise ValueError("this LMData has no random-access train dataset")
        return [self._train_dataset[k] for k in range(n)]

    def val_batches(self) -> list[dict]:
        """The fixed val batches (same list contents on every call; copies)."""
        return [{k: v.copy() for k, v in b.items()} for b in self._val_batches]

    def get_state(self) -> dict:
        """JSON-serialisable state of ``train_iter`` (plus a fingerprint)."""
        return {
            "version": _STATE_VERSION,
            "worker_count": self.worker_count,
            "iterator": copy.deepcopy(self.train_iter.get_state()),
            "fingerprint": dict(self.fingerprint),
        }

    def set_state(self, state: dict, *, strict: bool = True) -> None:
        """Restores ``train_iter`` from ``get_state()`` output.

        With ``strict=True`` a state saved for a different seed, seq_len,
        batch_size or corpus raises ``ValueError``; ``strict=False`` restores
        the position anyway (the batches will then differ from the saved run).
        """
        if not isinstance(state, dict) or "iterator" not in state:
            raise ValueError(
                "LMData.set_state expects the dict returned by get_state(), got "
                f"{type(state).__name__} with keys "
                f"{sorted(state) if isinstance(state, dict) else None}."
            )
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"data iterator state version {state.get('version')!r} is not "
                f"supported (expected {_STATE_VERSION})."
            )
        if state.get("worker_count", 0) != self.worker_count:
            raise ValueError(
                f"data iterator state was saved with data.worker_count="
                f"{state.get('worker_count', 0)}, but this pipeline uses "
                f"data.worker_count={self.worker_count}; grain's iterator state "
                "depends on it, so resume with the same data.worker_count."
            )
        saved = state.get("fingerprint", {})
        if strict and saved != self.fingerprint:
            diff = {k: (saved.get(k), self.fingerprint.get(k))
                    for k in set(saved) | set(self.fingerprint)
                    if saved.get(k) != self.fingerprint.get(k)}
            raise ValueError(
                "data iterator state was saved for a different data setup "
                f"(field: (saved, current)) {diff}; use the same data config, "
                "or set_state(..., strict=False) to restore the position anyway."
            )
        self.train_iter.set_state(copy.deepcopy(state["iterator"]))

    def __repr__(self) -> str:
        return (f"LMData(corpus={self.corpus.name!r}, seq_len={self.seq_len}, "
                f"batch_size={self.batch_size}, local_batch_size="
                f"{self.local_batch_size}, train_tokens={self.train_tokens}, "
                f"val_tokens={self.val_tokens})")


def _is_tokenizer(obj) -> bool:
    return all(hasattr(obj, a) for a in ("encode", "decode", "vocab_size", "eos_id"))


def resolve_tokenizer(spec="byte", *, corpus: Corpus | None = None, vocab_size: int = 4096,
                      workdir: str | None = None):
    """The tokenizer of ``data.tokenizer=spec`` (see the module docstring).

    ``"byte"`` -> ``ByteTokenizer``. ``"bpe"`` -> ``<workdir>/tokenizer.json``
    if it exists (a resumed run reuses its tokenizer; its size must equal
    ``vocab_size``), else a BPE of ``vocab_size`` tokens trained on the train
    split of ``corpus`` and saved there. Any other string is the path of a
    ``tokenizer.json``; with a ``workdir`` it is copied to
    ``<workdir>/tokenizer.json``, and a different tokenizer already there is
    an error. A tokenizer object is returned as is.
    """
    if _is_tokenizer(spec):
        if spec.eos_id != 0:
            raise ValueError(f"data.tokenizer: the tokenizer's eos_id is {spec.eos_id}; "
                             "seedjax streams need eos_id == 0.")
        return spec
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data.tokenizer={spec!r} is not allowed; allowed: 'byte', 'bpe' or "
                         "the path of a tokenizer.json file.")
    if spec == "byte":
        return ByteTokenizer()
    saved = os.path.join(workdir, TOKENIZER_FILE) if workdir else None
    if spec == "bpe":
        vocab_size = check_bpe_vocab_size(vocab_size)
        if saved and os.path.isfile(saved):
            tok = load_tokenizer(saved, field=f"data.tokenizer='bpe' ({TOKENIZER_FILE} of the run)")
            if tok.vocab_size != vocab_size:
                raise ValueError(
                    f"data.vocab_size={vocab_size}, but this run's tokenizer {saved} has "
                    f"{tok.vocab_size} tokens; resume with data.vocab_size={tok.vocab_size} "
                    "or use a new workdir.")
            return tok
        if corpus is None:
            raise ValueError("data.tokenizer='bpe' needs the corpus to train on.")
        tok = train_bpe(train_texts(corpus), vocab_size)
        if saved:
            tok.save(saved)
        return tok
    tok = load_tokenizer(os.path.expanduser(spec))
    if saved:
        if not os.path.isfile(saved):
            tok.save(saved)
        elif load_tokenizer(saved).fingerprint != tok.fingerprint:
            raise ValueError(
                f"data.tokenizer={spec!r} differs from the tokenizer this workdir's run was "
                f"trained with ({saved}); use that file or a new workdir.")
    return tok


def run_tokenizer(workdir: str, spec="byte"):
    """The tokenizer a training run used, for sampling from its checkpoints.

    ``spec`` is the run's ``data.tokenizer``. Anything but ``"byte"`` reads
    ``<workdir>/tokenizer.json`` (written by the run); a path spec falls back
    to that path if the workdir has no copy.
    """
    if spec == "byte" or spec is None:
        return ByteTokenizer()
    saved = os.path.join(workdir, TOKENIZER_FILE)
    if os.path.isfile(saved):
        return load_tokenizer(saved, field=f"data.tokenizer={spec!r} ({TOKENIZER_FILE} of the run)")
    if spec != "bpe":
        return load_tokenizer(spec)
    raise ValueError(f"data.tokenizer='bpe': the run's tokenizer {saved} is missing; it is "
                     "written when training starts (train first, or restore the file).")


def _val_tokens_per_byte(tokenizer, tokens: np.ndarray, ids: np.ndarray, seq_len: int,
                         mask: np.ndarray | None) -> float:
    """Target tokens per byte over the val windows ``ids`` (1.0 for the byte tokenizer)."""
    if isinstance(tokenizer, ByteTokenizer) or not hasattr(tokenizer, "token_byte_lengths"):
        return 1.0
    lengths = np.asarray(tokenizer.token_byte_lengths(), np.int64)
    idx = ids.reshape(-1, 1).astype(np.int64) * seq_len + 1 + np.arange(seq_len)
    weight = np.ones(idx.shape) if mask is None else mask[idx].astype(np.float64)
    n_bytes = float((lengths[tokens[idx].astype(np.int64)] * weight).sum())
    return float(weight.sum()) / max(n_bytes, 1.0)


def build_lm_data(*, source: str = "stdlib", seq_len: int, batch_size: int,
                  seed: int, val_fraction: float = 0.02, max_val_batches: int = 8,
                  process_index: int = 0, process_count: int = 1,
                  worker_count: int = 0, tokenizer="byte", vocab_size: int = 4096,
                  workdir: str | None = None, model_vocab_size: int | None = None) -> LMData:
    """Builds the train iterator and val batches (see the module docstring).

    ``tokenizer``: ``"byte"`` (default), ``"bpe"`` (``vocab_size`` tokens,
    trained on the train split, kept in ``<workdir>/tokenizer.json``), the path
    of a ``tokenizer.json``, or a tokenizer object (``resolve_tokenizer``).
    ``model_vocab_size``: when given, a tokenizer other than bytes must have
    exactly this many tokens.

    Raises ``ValueError`` naming the field for invalid arguments, a missing
    path or tokenizer file, a tokenizer/model vocabulary mismatch, or a
    corpus too small for one global batch in either split.
    """
    seq_len = check_int("data.seq_len", seq_len, 1)
    batch_size = check_int("data.batch_size", batch_size, 1)
    seed = check_int("seed", seed, 0)
    max_val_batches = check_int("data.max_val_batches", max_val_batches, 1)
    process_count = check_int("process_count", process_count, 1)
    process_index = check_int("process_index", process_index, 0)
    worker_count = check_int("data.worker_count", worker_count, 0)
    if process_index >= process_count:
        raise ValueError(
            f"process_index must be in [0, process_count={process_count}), "
            f"got {process_index}."
        )
    if batch_size % process_count:
        raise ValueError(
            f"data.batch_size={batch_size} (global) must be divisible by "
            f"process_count={process_count}."
        )
    local_bs = batch_size // process_count

    train_mask = val_mask = None
    if is_task_source(source):
        if tokenizer != "byte" and not isinstance(tokenizer, ByteTokenizer):
            raise ValueError(
                f"data.tokenizer={tokenizer!r} with data.source={source!r}: task: sources "
                "are generated as byte tokens; use data.tokenizer='byte'.")
        tokenizer = ByteTokenizer()
        corpus, train_tok, val_tok, train_mask, val_mask = task_streams(
            source, seq_len=seq_len, seed=seed, val_fraction=val_fraction, tokenizer=tokenizer)
    else:
        if (tokenizer == "bpe" and model_vocab_size is not None
                and check_bpe_vocab_size(vocab_size) != model_vocab_size):  # before training
            raise ValueError(
                f"data.vocab_size={vocab_size} (data.tokenizer='bpe') differs from "
                f"model.vocab_size={model_vocab_size}; set both to the same number.")
        corpus = get_corpus(source, val_fraction)
        tokenizer = resolve_tokenizer(tokenizer, corpus=corpus, vocab_size=vocab_size,
                                      workdir=workdir)
        if (model_vocab_size is not None and not isinstance(tokenizer, ByteTokenizer)
                and tokenizer.vocab_size != model_vocab_size):
            raise ValueError(
                f"the tokenizer (data.tokenizer, data.vocab_size) has {tokenizer.vocab_size} "
                f"tokens but model.vocab_size={model_vocab_size}; they must be equal (set "
                f"model.vocab_size={tokenizer.vocab_size}).")
        train_tok, val_tok = token_streams(corpus, tokenizer)
    n_train = max(len(train_tok) - 1, 0) // seq_len
    n_val = max(len(val_tok) - 1, 0) // seq_len
    for split, n, toks in (("train", n_train, train_tok), ("val", n_val, val_tok)):
        if n < batch_size:
            raise ValueError(
                f"data.source={source!r}: the {split} split has {len(toks)} tokens "
                f"= {n} windows of data.seq_len+1={seq_len + 1} tokens, fewer than "
                f"one global batch (data.batch_size={batch_size}). Use a larger "
                "corpus, a smaller data.seq_len or data.batch_size"
                + (", or a larger data.val_fraction." if split == "val" else ".")
            )

    import grain  # pylint: disable=g-import-not-at-top  (kept out of import time)

    rows = slice(process_index * local_bs, (process_index + 1) * local_bs)
    train_ds = (
        grain.MapDataset.range(n_train)
        .shuffle(seed=_shuffle_seed(seed))
        .repeat()
        .batch(batch_size, drop_remainder=True)
        .map(_WindowBatcher(train_tok, seq_len, rows, train_mask))
    )
    iter_ds = train_ds.to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
    )
    if worker_count > 0:
        # grain 0.2.18 reads absl flags in mp_prefetch and fails if they are
        # unparsed (google/grain#1355, fixed upstream by #1362). Under absl.app
        # flags are parsed; elsewhere mark them parsed so defaults are used.
        from absl import flags  # pylint: disable=g-import-not-at-top

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count)
        )
    train_iter = iter(iter_ds)

    n_val_batches = min(max_val_batches, n_val // batch_size)
    n_pick = n_val_batches * batch_size
    spread = (np.arange(n_pick) * n_val) // n_pick  # evenly over the val stream
    val_ids = spread.reshape(n_val_batches, batch_size)[:, rows]
    val_batcher = _WindowBatcher(val_tok, seq_len, mask=val_mask)
    val_batches = [val_batcher(ids) for ids in val_ids]
    val_tokens_per_byte = _val_tokens_per_byte(tokenizer, val_tok, spread, seq_len, val_mask)

    fingerprint = {
        "content_crc32": corpus.description["content_crc32"],
        "seed": seed,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "train_windows": n_train,
    }
    if not isinstance(tokenizer, ByteTokenizer):  # (absent for bytes: older states still load)
        fingerprint["tokenizer"] = getattr(tokenizer, "fingerprint", type(tokenizer).__name__)
    return LMData(
        train_iter=train_iter, val_batches=val_batches, tokenizer=tokenizer,
        corpus=corpus, train_tokens=int(len(train_tok)),
        val_tokens=int(len(val_tok)), seq_len=seq_len, batch_size=batch_size,
        local_batch_size=local_bs, train_windows=n_train, val_windows=n_val,
        worker_count=worker_count, fingerprint=fingerprint,
        val_tokens_per_byte=val_tokens_per_byte, train_dataset=train_ds,
        train_stream=train_tok,
    )
