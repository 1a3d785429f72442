"""Dotted-path overrides of ml_collections configs: Python values (sweeps, benchmarks) and
command-line ``--config.a.b=v`` strings with config-file loading (experiments/train.py)."""
from __future__ import annotations

import copy
import difflib


def apply_overrides(cfg, overrides: dict):
    """Sets ``dotted.path`` fields of a ConfigDict copy; unknown paths raise ValueError."""
    cfg = copy.deepcopy(cfg)
    for dotted, value in overrides.items():
        parent, keys = cfg, dotted.split(".")
        for i, k in enumerate(keys):
            if k not in parent:
                close = difflib.get_close_matches(k, sorted(parent), n=3, cutoff=0.6)
                raise ValueError(f"sweep override {dotted!r}: no field {k!r}"
                                 + (f"; did you mean {close}?" if close else "")
                                 + f" (allowed: {sorted(parent)})")
            if i < len(keys) - 1:
                parent = parent[k]
        parent[keys[-1]] = value
    return cfg


def split_config_args(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Splits ``--config.a.b=v`` / ``--config.a.b v`` (a bare ``--config.flag`` is true) out of
    argv: (other args, [(dotted path, text)])."""
    rest, found, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            path, eq, text = arg[len("--config."):].partition("=")
            if not eq:
                nxt = argv[i + 1] if i + 1 < len(argv) else None
                if nxt is not None and not nxt.startswith("--"):
                    text, i = nxt, i + 1
                else:
                    text = "true"
            found.append((path, text))
        else:
            rest.append(arg)
        i += 1
    return rest, found


def load_config(spec: str, overrides: list[tuple[str, str]] = ()):
    """``path.py[:variant]`` -> the module's ``get_config(variant)`` with command-line
    ``overrides`` applied, validated (``seedjax.train.config_check``), and locked."""
    import importlib.util
    import os

    from seedjax.train.config_check import ConfigError, set_from_text, validate_config
    path, _, variant = spec.partition(":")
    if not path.endswith(".py") or not os.path.isfile(path):
        raise ConfigError(f"--config={spec!r}: no config file {path!r}; expected a Python file "
                          "with get_config(), e.g. configs/lm.py:smoke")
    try:
        mod_spec = importlib.util.spec_from_file_location(
            "_config_" + os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    except (SyntaxError, ImportError) as e:
        raise ConfigError(f"--config={spec!r}: cannot load {path}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config={spec!r}: {path} defines no get_config()")
    try:
        cfg = module.get_config(variant) if variant else module.get_config()
    except ValueError as e:
        raise ConfigError(f"--config={spec!r}: {e}") from e
    for dotted, text in overrides:
        set_from_text(cfg, dotted, text)
    validate_config(cfg)
    if hasattr(cfg, "lock"):
        cfg.lock()
    return cfg
