"""Token streams of synthetic memory-task episodes, so the tasks can be trained on.

``data.source = "task:..."`` makes ``build_lm_data`` read its train/val token streams from
``task_streams`` instead of a text corpus; windowing, shuffling, val batches and the
checkpointable iterator state are the pipeline's as usual (see ``seedjax.data.pipeline``).

Source syntax (no spaces)::

    task:<task>[(<field>=<value>,...)][+<task>[(...)]...][;blocks=<int>][;seed=<int>]

    task:mqar
    task:mqar(n_pairs=16,n_queries=4)+icl;blocks=4096
    task:mqar+multi_round+icl;seed=7

``<task>`` is a name in ``seedjax.eval.memory_tasks.TASKS`` and the fields are its config's
(integers or names); ``blocks`` (default 8192) is the number of train windows; ``seed`` fixes
the episodes (default: the run's ``train.seed``). Quote the source in a shell.

Stream layout: ``n`` blocks of exactly ``seq_len`` tokens, then one ``eos``
(``len = n * seq_len + 1``, so the pipeline cuts exactly ``n`` windows and window ``w``'s inputs
are block ``w``). A block is filled with whole episodes separated by ``eos``: an episode of a
task drawn uniformly from the listed tasks goes in if it fits in the block's remaining tokens
(after an ``eos`` separator), otherwise the rest of the block is ``eos`` padding. So every
window starts with an episode and no episode is cut between windows. Every listed task must fit
``seq_len`` (``ValueError`` naming the field otherwise).

Splits: train has ``blocks`` blocks from seed stream ``[seed, SPLITS["train"], 0]``; val has
``max(1, ceil(blocks * val_fraction))`` blocks from ``[seed, SPLITS["val"], 0]`` (disjoint
from train; held-out evaluation in ``seedjax.eval.task_scoring`` uses the ``test`` split).
The ``Corpus`` description records the source, parsed task configs, seed and a CRC of both
streams (the pipeline's resume fingerprint).

NumPy only (no jax or grain import).
"""
from __future__ import annotations

import dataclasses
import math
import re
import zlib

import numpy as np

from seedjax.data.sources import Corpus, _check_val_fraction
from seedjax.eval.memory_tasks import TASKS, episode_rng, make_task
from seedjax.validation import check_int

__all__ = ["TASK_PREFIX", "TaskSource", "is_task_source", "parse_task_source",
           "format_task_source", "episode_stream", "task_streams"]

TASK_PREFIX = "task:"
DEFAULT_BLOCKS = 8192
_TASK_RE = re.compile(r"^([a-z_]+)(?:\((.*)\))?$")


@dataclasses.dataclass(frozen=True)
class TaskSource:
    tasks: dict          # name -> task config (insertion order = source order)
    blocks: int = DEFAULT_BLOCKS
    seed: int | None = None


def is_task_source(source) -> bool:
    return isinstance(source, str) and source.startswith(TASK_PREFIX)


def _value(text: str):
    return int(text) if re.fullmatch(r"-?\d+", text) else text


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
                   eos_id: int = 0, progress: bool = False) -> np.ndarray:
    """``uint8 [n_blocks * seq_len + 1]``: blocks of whole episodes (module docstring)."""
    cfgs = list(tasks.values())
    for cfg in cfgs:
        cfg.check_fits(seq_len)
    out = np.full(n_blocks * seq_len + 1, eos_id, np.uint8)
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
            out[pos:pos + lengths[k]] = cfgs[k].generate(rng).tokens
            pos += int(lengths[k]) + 1  # one eos separator (already in ``out``)
    return out


def task_streams(source: str, *, seq_len: int, seed: int, val_fraction: float,
                 tokenizer, progress: bool | None = None) -> tuple[Corpus, np.ndarray, np.ndarray]:
    """(Corpus record, train stream, val stream) for a ``task:`` source."""
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
        streams.append(episode_stream(spec.tasks, n, seq_len, rng, tokenizer.eos_id, bar))
    train, val = streams
    crc = zlib.crc32(val.tobytes(), zlib.crc32(train.tobytes()))
    description = dict(
        name=source, root=None, split_rule="task", val_fraction=vf,
        tasks={k: dataclasses.asdict(v) for k, v in spec.tasks.items()},
        data_seed=data_seed, train_blocks=spec.blocks, val_blocks=n_val,
        n_train_files=0, n_val_files=0, n_skipped_files=0,
        train_bytes=int(len(train)), val_bytes=int(len(val)), content_crc32=crc)
    return Corpus(source, (), (), description), train, val
