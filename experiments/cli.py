"""Shared CLI plumbing: expected errors become one ``error:`` line on stderr and exit code 2."""
from __future__ import annotations

import sys

from absl import flags

CONFIG_OVERRIDES: list[tuple[str, str]] = []  # ``--config.*`` pairs split off by parse_flags


def fail(message, code: int = 2) -> None:
    """Prints ``error: message`` (one line) to stderr and exits with ``code``."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing for ``app.run(flags_parser=...)``: ``--config.a.b=v`` overrides are
    kept in ``CONFIG_OVERRIDES``; bad or missing flags fail with one line."""
    from experiments.overrides import split_config_args
    rest, found = split_config_args(argv)
    CONFIG_OVERRIDES[:] = found
    try:
        return flags.FLAGS(rest)
    except flags.Error as e:
        fail(e)
