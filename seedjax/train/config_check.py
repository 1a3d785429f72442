"""Up-front validation of training configs and typed command-line overrides.

Every field a training config may hold is declared here (type and allowed range), so
``validate_config(cfg)`` rejects unknown fields (with the closest valid names), wrong types and
out-of-range values before any model is built, and ``set_from_text(cfg, "train.lr", "1e-3")``
parses an override by the field's declared type, including fields whose default is None.
Errors are ``ConfigError`` (a ValueError) naming the field, the value and what is allowed.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import numbers
from typing import Any, Callable, Mapping

from seedjax.data.tokenizers import MAX_BPE_VOCAB, MIN_BPE_VOCAB
from seedjax.models.config import LMConfig
from seedjax.sharding.mesh import MESH_AXES
from seedjax.sharding.rules import PRESETS
from seedjax.train.objectives import OBJECTIVES, make_objective
from seedjax.train.tasks import TASKS, task_name


class ConfigError(ValueError):
    """A bad config value, override, config file or command-line flag (user input)."""


@dataclasses.dataclass(frozen=True)
class Field:
    kind: str                      # "int", "float", "bool", "str" or "dict" (free-form mapping)
    ok: Callable[[Any], bool] | None = None
    allowed: str = ""              # what ``ok`` accepts, for the message
    optional: bool = False         # None allowed


def _f(kind, ok=None, allowed="", optional=False):
    return Field(kind, ok, allowed, optional)


POS = (lambda v: v >= 1, ">= 1")
NONNEG = (lambda v: v >= 0, ">= 0")
GT0 = (lambda v: v > 0, "> 0")
UNIT = (lambda v: 0 <= v < 1, "in [0, 1)")


def _model_schema() -> dict[str, Field]:
    kinds = {"int": "int", "float": "float", "bool": "bool", "str": "str"}
    out = {}
    for f in dataclasses.fields(LMConfig):
        ann = str(f.type)
        kind = "dict" if "Mapping" in ann else kinds.get(ann.split("|")[0].strip(), "any")
        rng = POS if kind == "int" else GT0 if f.name in ("rope_theta", "norm_eps") else (None, "")
        if f.name == "init_std":
            rng = NONNEG
        out[f.name] = _f(kind, *rng, optional="None" in ann)
    return out


SCHEMA: dict[str, Any] = {
    "name": _f("str"),
    "task": _f("str", lambda v: v in TASKS, f"one of {list(TASKS)}"),
    "model": _model_schema(),
    "data": {
        "source": _f("str", lambda v: bool(v), "a non-empty path, 'stdlib' or 'task:...'"),
        "seq_len": _f("int", *POS), "batch_size": _f("int", *POS),
        "val_fraction": _f("float", lambda v: 0 < v < 1, "in (0, 1)"),
        "max_val_batches": _f("int", *POS),
        "tokenizer": _f("str", lambda v: v in ("byte", "bpe") or v.endswith(".json"),
                        "'byte', 'bpe' or the path of a tokenizer.json file"),
        "vocab_size": _f("int", lambda v: MIN_BPE_VOCAB <= v <= MAX_BPE_VOCAB,
                         f"in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB}] (used by data.tokenizer='bpe')")},
    "train": {
        "seed": _f("int", *NONNEG), "steps": _f("int", *POS), "lr": _f("float", *GT0),
        "warmup_steps": _f("int", *NONNEG),
        "min_lr_ratio": _f("float", lambda v: 0 <= v <= 1, "in [0, 1]"),
        "weight_decay": _f("float", *NONNEG), "b1": _f("float", *UNIT), "b2": _f("float", *UNIT),
        "eps": _f("float", *GT0), "grad_clip": _f("float", lambda v: v >= 0, ">= 0 (0 = off)"),
        "accum_steps": _f("int", *POS), "lr_multipliers": _f("dict"),
        "log_every": _f("int", *POS), "eval_every": _f("int", *POS),
        "checkpoint_every": _f("int", *POS), "keep_checkpoints": _f("int", *POS),
        "debug_kill_at_step": _f("int"),
        "objective": _f("str", lambda v: v in OBJECTIVES, f"one of {sorted(OBJECTIVES)}"),
        "objective_kwargs": _f("dict"),
        "trainable_groups": _f("any", lambda v: isinstance(v, str) or (
            isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)),
            "parameter group names, comma-separated or a list", optional=True),
        "init_from": _f("str", lambda v: bool(v), "a run directory", optional=True),
        "init_from_step": _f("int", *NONNEG, optional=True),
        "eval_seen": _f("bool", optional=True),
        "ema_decay": _f("float", *UNIT)},
    "mesh": {"shape": _f("dict"),
             "rules": _f("str", lambda v: v in PRESETS, f"one of {sorted(PRESETS)}"),
             "strict_sharding": _f("bool")},
    "sample": {
        "prompt": _f("str", lambda v: bool(v), "non-empty text"), "length": _f("int", *POS),
        "temperature": _f("float", lambda v: v >= 0, ">= 0 (0 = greedy)"),
        "top_p": _f("float", lambda v: 0 < v <= 1, "in (0, 1]"), "seed": _f("int", *NONNEG)},
    "task_eval": {"tasks": _f("str"), "episodes": _f("int", *POS),
                  "batch_size": _f("int", *POS), "seed": _f("int", *NONNEG)},
}
OPTIONAL_SECTIONS = ("task_eval", "image_eval")


def _dit_schema() -> dict[str, Field]:
    from seedjax.models.dit import DiTConfig
    kinds = {"int": "int", "float": "float", "str": "str"}
    out = {}
    for f in dataclasses.fields(DiTConfig):
        ann = str(f.type)
        kind = "dict" if "Mapping" in ann else kinds.get(ann, "any")
        out[f.name] = _f(kind, *(POS if kind == "int" else GT0 if kind == "float" else (None, "")))
    return out


def _diffusion_schema() -> dict[str, Any]:
    """``task = "image_diffusion"``: DiT model fields, image data, the same train and mesh
    sections (objective "flow" | "ddpm"), and the sample-grid settings."""
    from seedjax.eval.diffusion_sampling import SAMPLERS
    from seedjax.train.diffusion import DIFFUSION_OBJECTIVES
    train = dict(SCHEMA["train"])
    train["objective"] = _f("str", lambda v: v in DIFFUSION_OBJECTIVES,
                            f"one of {list(DIFFUSION_OBJECTIVES)}")
    for k in ("eval_seen", "init_from", "init_from_step", "trainable_groups"):
        train.pop(k)
    return {
        "name": SCHEMA["name"], "task": SCHEMA["task"], "model": _dit_schema(),
        "data": {"source": _f("str", lambda v: bool(v),
                              "'mnist', 'digits', 'fashion_mnist' or a .npz path"),
                 "batch_size": _f("int", *POS),
                 "val_fraction": _f("float", lambda v: 0 < v < 1, "in (0, 1)"),
                 "max_val_batches": _f("int", *POS)},
        "train": train, "mesh": SCHEMA["mesh"],
        "sample": {"per_class": _f("int", *POS), "steps": _f("int", *POS),
                   "sampler": _f("str", lambda v: v in SAMPLERS, f"one of {list(SAMPLERS)}"),
                   "cfg_scale": _f("float", *NONNEG), "seed": _f("int", *NONNEG)},
        "image_eval": {"per_class": _f("int", *POS)},   # optional: reproduce's FID-proxy
    }


def schema_for(cfg) -> dict[str, Any]:
    """The schema of ``cfg``'s task (``cfg.task``, default "lm")."""
    try:
        name = task_name(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return SCHEMA if name == "lm" else _diffusion_schema()


def unknown_field(path: str, allowed) -> ConfigError:
    """The error for an unknown ``path``: the closest valid names and the allowed set."""
    parent, _, name = path.rpartition(".")
    allowed = sorted(allowed)
    close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.6)
    prefix = parent + "." if parent else ""
    hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    where = f" in {parent}" if parent else ""
    return ConfigError(f"unknown config field {path!r}{hint} (allowed{where}: "
                       f"{', '.join(allowed)})")


def lookup(path: str, schema: dict | None = None) -> Field | dict:
    """The schema entry of a dotted config path (a Field or a section dict) in ``schema``
    (default: the LM schema)."""
    node: Any = SCHEMA if schema is None else schema
    parts = path.split(".")
    for i, k in enumerate(parts):
        if isinstance(node, Field):  # a key inside a free-form mapping (kwargs, lr_multipliers)
            return _f("any")
        if k not in node:
            raise unknown_field(".".join(parts[:i + 1]), node)
        node = node[k]
    return node


def _is_map(v) -> bool:
    return isinstance(v, Mapping) or hasattr(v, "to_dict")  # dict or ConfigDict


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _type_ok(kind: str, v) -> bool:
    return {"int": _is_int, "float": lambda x: _is_int(x) or isinstance(x, numbers.Real)
            and not isinstance(x, bool), "bool": lambda x: isinstance(x, bool),
            "str": lambda x: isinstance(x, str), "dict": _is_map,
            "any": lambda x: True}[kind](v)


def check_value(path: str, field: Field, v) -> None:
    if v is None and field.optional:
        return
    if not _type_ok(field.kind, v):
        none = " or None" if field.optional else ""
        raise ConfigError(f"{path}={v!r} must be of type {field.kind}{none}")
    if field.ok is not None and not field.ok(v):
        raise ConfigError(f"{path}={v!r} is out of range; allowed: {field.allowed}")


def check_field(name: str, path: str, value) -> None:
    """Checks ``value`` against the schema entry of ``path``; errors name ``name`` (a flag)."""
    check_value(name, lookup(path), value)


def parse_text(path: str, field: Field, text: str):
    """A command-line string as a value of ``field``'s type ('None' for optional fields)."""
    if field.optional and text.strip() in ("None", "none", "null"):
        return None
    if field.kind == "str":
        return text
    if field.kind == "bool":
        low = text.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise ConfigError(f"{path}={text!r} must be true or false")
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        value = text if field.kind == "any" else None
        if value is None:
            example = " such as {'group': 2.0}" if field.kind == "dict" else ""
            raise ConfigError(f"{path}={text!r} must be a {field.kind}{example}") from None
    if field.kind == "float" and _is_int(value):
        value = float(value)
    check_value(path, field, value)
    return value


def set_from_text(cfg, path: str, text: str) -> None:
    """Sets ``cfg.<path>`` from a command-line string, parsed by the field's declared type."""
    schema = schema_for(cfg)
    field = lookup(path, schema)
    if not isinstance(field, Field):
        raise ConfigError(f"{path} is a config section; set one of its fields "
                          f"({', '.join(sorted(field))})")
    parts = path.split(".")
    parent = cfg
    for i, k in enumerate(parts[:-1]):
        if k not in parent:
            if isinstance(lookup(".".join(parts[:i + 1]), schema), Field):  # key in a mapping
                parent[k] = {}
            else:
                raise ConfigError(f"config has no section {'.'.join(parts[:i + 1])!r}")
        parent = parent[k]
    value = parse_text(path, field, text)
    if not hasattr(parent, "unlock"):
        parent[parts[-1]] = value
        return
    with parent.unlocked() if parent.is_locked else contextlib.nullcontext():
        try:
            parent[parts[-1]] = value
        except TypeError:  # ml_collections keeps a field's type (None-valued, int -> str...)
            del parent[parts[-1]]
            parent[parts[-1]] = value


def _check_lr_spec(group: str, spec) -> None:
    path = f"train.lr_multipliers.{group}"
    allowed = ("a number >= 0, {'lr': x} or {'start': a, 'end': b, 'decay_steps': n}")
    if _is_map(spec):
        spec = dict(spec)
        keys = set(spec)
        if keys == {"lr"} or (keys and keys <= {"start", "end", "decay_steps"} and "start" in keys):
            for k, v in spec.items():
                if not _type_ok("float", v) or v < (1 if k == "decay_steps" else 0):
                    raise ConfigError(f"{path}.{k}={v!r} must be a number >= "
                                      f"{1 if k == 'decay_steps' else 0}")
            return
    elif _type_ok("float", spec) and spec >= 0:
        return
    raise ConfigError(f"{path}={spec!r} is malformed; allowed: {allowed}")


def _walk(cfg: Mapping, schema: dict, prefix: str) -> None:
    for key in cfg:
        path = prefix + key
        if key not in schema:
            raise unknown_field(path, schema)
        entry, value = schema[key], cfg[key]
        if isinstance(entry, dict):
            if not _is_map(value):
                raise ConfigError(f"{path} must be a config section with fields "
                                  f"{sorted(entry)}, got {value!r}")
            _walk(value, entry, path + ".")
        else:
            check_value(path, entry, value)


def validate_config(cfg) -> None:
    """Checks every field of a training config (ConfigDict or dict); raises ConfigError."""
    schema = schema_for(cfg)
    _walk(cfg, schema, "")
    for section in schema:
        if isinstance(schema[section], dict) and section not in cfg \
                and section not in OPTIONAL_SECTIONS:
            raise ConfigError(f"config has no {section!r} section (required: "
                              f"{sorted(s for s in schema if isinstance(schema[s], dict))})")
    if schema is not SCHEMA:
        return _validate_diffusion(cfg)
    try:
        model = LMConfig.from_dict(cfg["model"])  # its own cross-field checks
    except ValueError as e:
        raise ConfigError(str(e)) from e
    data, train, sample = cfg["data"], cfg["train"], cfg["sample"]
    if data["seq_len"] > model.max_seq_len:
        raise ConfigError(f"data.seq_len={data['seq_len']} exceeds model.max_seq_len="
                          f"{model.max_seq_len}")
    if data.get("tokenizer", "byte") == "bpe" and data.get("vocab_size", 4096) != model.vocab_size:
        raise ConfigError(f"data.vocab_size={data.get('vocab_size', 4096)} (data.tokenizer='bpe') "
                          f"differs from model.vocab_size={model.vocab_size}; set both to the "
                          "same number")
    _check_train(train, data["batch_size"])
    try:
        make_objective(train.get("objective", "lm"), dict(train.get("objective_kwargs") or {}),
                       stack=model.stack)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e).splitlines()[0]) from e
    _check_mesh(dict(cfg["mesh"]["shape"]))
    validate_sample(sample["prompt"], sample["length"], sample["temperature"], sample["top_p"],
                    max_seq_len=model.max_seq_len)


def _validate_diffusion(cfg) -> None:
    from seedjax.eval.diffusion_sampling import check_sampler
    from seedjax.models.dit import DiTConfig
    from seedjax.train.diffusion import make_diffusion_objective
    train = cfg["train"]
    try:
        DiTConfig.from_dict(cfg["model"])
        objective = make_diffusion_objective(train.get("objective", "flow"),
                                             dict(train.get("objective_kwargs") or {}))
        s = cfg["sample"]
        check_sampler(s["sampler"], objective.kind, s["steps"], s["cfg_scale"])
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e).splitlines()[0]) from e
    _check_train(train, cfg["data"]["batch_size"])
    _check_mesh(dict(cfg["mesh"]["shape"]))


def _check_train(train, batch_size: int) -> None:
    """Cross-field checks of the train section shared by every task."""
    if train["warmup_steps"] > train["steps"]:
        raise ConfigError(f"train.warmup_steps={train['warmup_steps']} must be in "
                          f"[0, train.steps={train['steps']}]")
    if batch_size % train["accum_steps"]:
        raise ConfigError(f"train.accum_steps={train['accum_steps']} must divide "
                          f"data.batch_size={batch_size}")
    for group, spec in dict(train["lr_multipliers"]).items():
        _check_lr_spec(group, spec)


def _check_mesh(shape: dict) -> None:
    for axis, size in shape.items():
        if axis not in MESH_AXES:
            raise unknown_field(f"mesh.shape.{axis}", MESH_AXES)
        if not _is_int(size) or (size != -1 and size < 1):
            raise ConfigError(f"mesh.shape.{axis}={size!r} must be an integer >= 1 or -1 (fill)")
    if sum(1 for s in shape.values() if s == -1) > 1:
        raise ConfigError(f"mesh.shape={shape} may have at most one -1 axis")


def validate_sample(prompt: str, length: int, temperature: float, top_p: float, *,
                    max_seq_len: int, num_samples: int = 1, names: Mapping[str, str] = {}) -> None:
    """Sampling settings (``names`` maps a field to the flag that set it, e.g. --length)."""
    name = lambda k: names.get(k, f"sample.{k}")
    sch = SCHEMA["sample"]
    for k, v in (("prompt", prompt), ("length", length), ("temperature", temperature),
                 ("top_p", top_p)):
        check_value(name(k), sch[k], v)
    if not _is_int(num_samples) or num_samples < 1:
        raise ConfigError(f"{name('num_samples')}={num_samples!r} must be an integer >= 1")
    n_prompt = len(prompt.encode("utf-8"))
    if n_prompt + length > max_seq_len:
        raise ConfigError(f"{name('length')}={length} plus the {n_prompt}-byte {name('prompt')} "
                          f"exceeds model.max_seq_len={max_seq_len}; allowed: length <= "
                          f"{max(max_seq_len - n_prompt, 0)}")


def check_distributed_flags(coordinator: str | None, num_processes: int | None,
                            process_id: int | None) -> None:
    """--coordinator / --num_processes / --process_id must be given together and in range."""
    given = {"--coordinator": coordinator, "--num_processes": num_processes,
             "--process_id": process_id}
    if all(v is None for v in given.values()):
        return
    missing = [k for k, v in given.items() if v is None]
    if missing:
        raise ConfigError(f"{', '.join(missing)} missing: multi-host runs need --coordinator "
                          "host:port, --num_processes and --process_id together")
    if not num_processes >= 1:
        raise ConfigError(f"--num_processes={num_processes} must be >= 1")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"--process_id={process_id} out of range; allowed: 0 .. "
                          f"{num_processes - 1} (--num_processes={num_processes})")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--coordinator={coordinator!r} must be host:port")
