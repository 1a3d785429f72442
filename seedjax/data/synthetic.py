"""Token streams of synthetic-task episodes, so the tasks can be trained on.

``data.source = "task:..."`` makes ``build_lm_data`` read its train/val token streams from
``task_streams`` instead of a text corpus; windowing, shuffling, val batches and the
checkpointable iterator state are the pipeline's as usual (see ``seedjax.data.pipeline``).

Source syntax (no spaces)::

    task:<task>[(<field>=<value>,...)][+<task>[(...)]...][;blocks=<int>][;seed=<int>]

    task:mqar
    task:mqar(n_pairs=16,n_queries=4)+icl;blocks=4096
    task:mqar+multi_round+icl;seed=7
    task:mano(modulus=23,max_ops=6)
    task:multihop(people_per_layer=16,n_relations=8,train_fraction=0.25)
    task:capo(n_people=1000)

``<task>`` is a name in ``TASKS`` (the memory tasks of ``seedjax.data.memory_tasks``, ``mano``
and ``multihop`` of ``seedjax.data.looped_tasks``, ``capo`` of ``seedjax.data.capo``) and the
fields are its config's (integers, decimal numbers or names); ``blocks`` (default 8192) is the
number of train windows; ``seed`` fixes the episodes (default: the run's ``train.seed``). Quote
the source in a shell.

Stream layout: ``n`` blocks of exactly ``seq_len`` tokens, then one ``eos``
(``len = n * seq_len + 1``, so the pipeline cuts exactly ``n`` windows and window ``w``'s inputs
are block ``w``). A block is filled with whole episodes separated by ``eos``: an episode of a
task drawn uniformly from the listed tasks goes in if its task's longest episode
(``cfg.length``) fits in the block's remaining tokens (after an ``eos`` separator), otherwise
the rest of the block is ``eos`` padding. So every window starts with an episode and no episode
is cut between windows. Every listed task must fit ``seq_len`` and its token ids the tokenizer
(``ValueError`` naming the field otherwise); at most one symbolic task (``mano``, ``multihop``:
both number their symbols from id 128) per source.

Loss mask: when a listed task has ``loss_on == "answers"`` (``mano``, ``multihop``: the paper
trains on the answer token only), ``task_streams`` also returns a uint8 mask stream aligned with
the tokens (1 = a position whose token is a training target): the answer tokens of such
episodes, every token of the other tasks' episodes, never a separator or padding. The pipeline
then adds ``"mask"`` float32 [B, T] (the mask of ``targets``) to every batch, which the train
and eval steps apply to the cross-entropy. Sources of ``loss_on == "all"`` tasks only have no
mask (the loss covers every token, separators and padding included, as before).

Splits: train has ``blocks`` blocks from seed stream ``[seed, SPLITS["train"], 0]``; val has
``max(1, ceil(blocks * val_fraction))`` blocks from ``[seed, SPLITS["val"], 0]`` (disjoint
from train; held-out evaluation in ``seedjax.eval.task_scoring`` uses the ``test`` split).
The ``Corpus`` description records the source, parsed task configs, seed and a CRC of both
streams (and of the masks, when there are masks: the pipeline's resume fingerprint).

NumPy only (no jax or grain import).
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib
from typing import NamedTuple

import numpy as np

from seedjax.data.capo import CapoConfig
from seedjax.data.cfg import CfgTaskConfig
from seedjax.data.episodes import episode_rng
from seedjax.data.looped_tasks import LOOPED_TASKS
from seedjax.data.memory_tasks import MEMORY_TASKS
from seedjax.data.sources import Corpus, _check_val_fraction
from seedjax.validation import check_choice, check_int

__all__ = ["TASK_PREFIX", "TASKS", "TaskSource", "TaskStreams", "make_task", "is_task_source",
           "parse_task_source", "format_task_source", "episode_stream", "task_streams"]

# every task a ``task:`` source can list: name -> config class
TASKS: dict[str, type] = {**MEMORY_TASKS, **LOOPED_TASKS, "capo": CapoConfig,
                           "cfg": CfgTaskConfig}

TASK_PREFIX = "task:"
DEFAULT_BLOCKS = 8192
_TASK_RE = re.compile(r"^([a-z_]+)(?:\((.*)\))?$")


@dataclasses.dataclass(frozen=True)
class TaskSource:
    tasks: dict          # name -> task config (insertion order = source order)
    blocks: int = DEFAULT_BLOCKS
    seed: int | None = None


def make_task(name: str, **fields):
    """``TASKS[name](**fields)`` with clear errors for an unknown task or field."""
    check_choice("task", name, tuple(TASKS))
    cls = TASKS[name]
    known = tuple(f.name for f in dataclasses.fields(cls))
    for k in fields:
        check_choice(f"{name} field", k, known)
    return cls(**fields)


class TaskStreams(NamedTuple):
    corpus: Corpus
    train: np.ndarray                # uint8 [n_train_blocks * seq_len + 1]
    val: np.ndarray                  # uint8 [n_val_blocks * seq_len + 1]
    train_mask: np.ndarray | None    # uint8, like ``train``: 1 = a training target (or None)
    val_mask: np.ndarray | None


def is_task_source(source) -> bool:
    return isinstance(source, str) and source.startswith(TASK_PREFIX)


def _value(text: str):
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+)(e-?\d+)?", text):
        return float(text)
    return text


def parse_task_source(source: str) -> TaskSource:
    """Parses ``task:...`` (module docstring); ``ValueError`` naming the bad part otherwise."""
    if not is_task_source(source):
        raise ValueError(f"data.source={source!r} is not a task source (must start with "
                         f"{TASK_PREFIX!r}, e.g. 'task:mqar+icl').")
    body, *options = source[len(TASK_PREFIX):].split(";")
    tasks = {}
    for part in body.split("+"):
        m = _TASK_RE.match(part)
        if not m:
            raise ValueError(f"data.source={source!r}: cannot parse task {part!r}; expected "
                             f"name or name(field=value,...) with name in {tuple(TASKS)}.")
        name, args = m.group(1), m.group(2)
        if name in tasks:
            raise ValueError(f"data.source={source!r}: task {name!r} listed twice.")
        fields = {}
        for kv in filter(None, (args or "").split(",")):
            k, eq, v = kv.partition("=")
            if not eq or not k or not v:
                raise ValueError(f"data.source={source!r}: {name}({args}): expected "
                                 f"field=value, got {kv!r}.")
            fields[k] = _value(v)
        try:
            tasks[name] = make_task(name, **fields)
        except ValueError as e:
            raise ValueError(f"data.source={source!r}: {e}") from None
    symbolic = [n for n, c in tasks.items() if c.vocab_size > 128]
    if len(symbolic) > 1:
        raise ValueError(f"data.source={source!r}: tasks {symbolic} each number their "
                         "vocabulary from token id 128 (the ids would mean different symbols); "
                         "list at most one of them per source.")
    opts = {}
    for opt in options:
        k, eq, v = opt.partition("=")
        if k not in ("blocks", "seed") or not eq:
            raise ValueError(f"data.source={source!r}: option {opt!r} unknown; allowed: "
                             "blocks=<int>, seed=<int>.")
        opts[k] = check_int(f"data.source {k}", _value(v), 1 if k == "blocks" else 0)
    return TaskSource(tasks, **opts)


def format_task_source(tasks: dict, blocks: int | None = None, seed: int | None = None) -> str:
    """The source string of ``{name: {field: value}}`` (or ``{name: config}``); round-trips
    through ``parse_task_source``. Only fields differing from the defaults are written."""
    parts = []
    for name, fields in tasks.items():
        if dataclasses.is_dataclass(fields):
            default = TASKS[name]()
            fields = {f.name: getattr(fields, f.name) for f in dataclasses.fields(fields)
                      if getattr(fields, f.name) != getattr(default, f.name)}
        make_task(name, **fields)  # validate now, not when the run starts
        args = ",".join(f"{k}={v}" for k, v in fields.items())
        parts.append(f"{name}({args})" if args else name)
    src = TASK_PREFIX + "+".join(parts)
    if blocks is not None:
        src += f";blocks={check_int('blocks', blocks, 1)}"
    if seed is not None:
        src += f";seed={check_int('seed', seed, 0)}"
    return src


def episode_stream(tasks: dict, n_blocks: int, seq_len: int, rng: np.random.Generator,
                   eos_id: int = 0, progress: bool = False, split: str = "train",
                   vocab_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
    """``(tokens, mask)``: ``tokens`` uint8 [n_blocks * seq_len + 1], blocks of whole ``split``
    episodes, and the loss mask stream (uint8, same shape) or None (module docstring)."""
    cfgs = list(tasks.values())
    for cfg in cfgs:
        cfg.check_fits(seq_len)
        if cfg.vocab_size > min(vocab_size, 256):
            raise ValueError(
                f"task {cfg.name!r} ({cfg._fields()}) uses token ids up to {cfg.vocab_size - 1}; "
                f"a task: stream holds ids below {min(vocab_size, 256)} (the byte tokenizer): "
                "make its vocabulary smaller (fewer names or relations, a smaller modulus or "
                "max_ops).")
    out = np.full(n_blocks * seq_len + 1, eos_id, np.uint8)
    masked = any(c.loss_on == "answers" for c in cfgs)
    mask = np.zeros(len(out), np.uint8) if masked else None
    lengths = np.array([c.length for c in cfgs])
    blocks = range(n_blocks)
    if progress:
        from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
        blocks = tqdm(blocks, desc="task episodes", leave=False, dynamic_ncols=True)
    for b in blocks:
        pos, end = b * seq_len, (b + 1) * seq_len
        while True:
            k = int(rng.integers(len(cfgs)))
            if pos + lengths[k] > end:
                break
            ep = cfgs[k].generate(rng, split)
            n = len(ep.tokens)
            out[pos:pos + n] = ep.tokens
            if masked:
                mask[pos:pos + n] = ep.answer_mask if cfgs[k].loss_on == "answers" else 1
            pos += n + 1  # one eos separator (already in ``out``)
    return out, mask


def task_streams(source: str, *, seq_len: int, seed: int, val_fraction: float,
                 tokenizer, progress: bool | None = None) -> TaskStreams:
    """Corpus record, train and val streams (and loss masks, or None) of a ``task:`` source."""
    spec = parse_task_source(source)
    vf = _check_val_fraction(val_fraction)
    seq_len = check_int("data.seq_len", seq_len, 1)
    if tokenizer.vocab_size < 128:
        raise ValueError(f"task episodes are ASCII; tokenizer vocab_size={tokenizer.vocab_size}.")
    data_seed = check_int("seed", seed if spec.seed is None else spec.seed, 0)
    n_val = max(1, math.ceil(spec.blocks * vf))
    streams = []
    for split, n in (("train", spec.blocks), ("val", n_val)):
        rng = episode_rng(data_seed, split, 0)  # task code 0: the mixture stream
        bar = n >= 4096 if progress is None else progress
        streams.append(episode_stream(spec.tasks, n, seq_len, rng, tokenizer.eos_id, bar,
                                      split, tokenizer.vocab_size))
    (train, train_mask), (val, val_mask) = streams
    crc = zlib.crc32(val.tobytes(), zlib.crc32(train.tobytes()))
    extra = {}
    if train_mask is not None:
        crc = zlib.crc32(val_mask.tobytes(), zlib.crc32(train_mask.tobytes(), crc))
        extra["loss_mask"] = "answers"
    description = dict(
        name=source, root=None, split_rule="task", val_fraction=vf,
        tasks={k: dataclasses.asdict(v) for k, v in spec.tasks.items()},
        data_seed=data_seed, train_blocks=spec.blocks, val_blocks=n_val,
        n_train_files=0, n_val_files=0, n_skipped_files=0,
        train_bytes=int(len(train)), val_bytes=int(len(val)), content_crc32=crc, **extra)
    return TaskStreams(Corpus(source, (), (), description), train, val, train_mask, val_mask)
