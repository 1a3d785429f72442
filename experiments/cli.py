"""Shared CLI plumbing: expected errors become one ``error:`` line on stderr and exit code 2.

Every CLI under experiments/ ends with ``cli.run(main, define_flags)``: flag errors (unknown
flag, malformed or missing value) fail in one line; inside ``main`` the checks of what the user
gave (flag ranges, config files, run directories, checkpoint steps) sit in
``with expected_errors():``, which turns a ValueError (``ConfigError``, ``CorruptCheckpoint``,
...) into one line. The work itself stays outside, so an unexpected error keeps its traceback.
"""
from __future__ import annotations

import contextlib
import functools
import sys

from absl import app, flags

CONFIG_OVERRIDES: list[tuple[str, str]] = []  # ``--config.*`` pairs split off by parse_flags


def fail(message, code: int = 2) -> None:
    """Prints ``error: message`` (one line) to stderr and exits with ``code``."""
    text = " ".join(str(message).split("\n"))
    print(f"error: {text}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str], config_overrides: bool = True,
                positional: bool = True) -> list[str]:
    """absl flag parsing for ``app.run(flags_parser=...)``: with ``config_overrides``,
    ``--config.a.b=v`` overrides are kept in ``CONFIG_OVERRIDES``; bad or missing flags, and
    arguments other than flags unless ``positional``, fail with one line."""
    if config_overrides:
        from experiments.overrides import split_config_args
        argv, found = split_config_args(argv)
        CONFIG_OVERRIDES[:] = found
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        fail(e)
    if not positional and len(rest) > 1:
        fail(f"unexpected argument {rest[1]!r}: this command takes only --flags")
    return rest


@contextlib.contextmanager
def expected_errors(where: str = ""):
    """Inside: a ValueError is an error in what the user gave; it fails with one line (prefixed
    ``where: `` if given). Wrap argument checks and the loading of user-named files, not the
    work itself."""
    try:
        yield
    except ValueError as e:
        fail(f"{where}: {e}" if where else e)


def int_list(flag: str, items, minimum: int = 0) -> list[int]:
    """``items`` (a comma-separated string or a list of strings) as integers >= ``minimum``;
    ValueError naming ``flag`` otherwise."""
    parts = [s.strip() for s in (items.split(",") if isinstance(items, str) else items)]
    try:
        values = [int(s) for s in parts if s]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        raise ValueError(f"{flag}={','.join(parts)!r} must be comma-separated integers "
                         f">= {minimum}")
    return values


def run(main, define_flags=None, *, config_overrides: bool = False,
        positional: bool = False) -> None:
    """A CLI's ``__main__``: defines its flags (``define_flags()``), then ``app.run(main)`` with
    one-line flag errors (``parse_flags``)."""
    if define_flags is not None:
        define_flags()
    app.run(main, flags_parser=functools.partial(parse_flags, config_overrides=config_overrides,
                                                 positional=positional))
