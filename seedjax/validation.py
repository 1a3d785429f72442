"""Input validation shared by modules, configs, data and cost models (no dependencies).

Every check raises ``ValueError`` naming the field, the value and what is allowed.
"""
from __future__ import annotations

import numbers
from typing import Any


def check_int(field: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int; it must be an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{field}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_bool(field: str, value: Any) -> bool:
    """``value`` if it is True or False (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}={value!r} must be True or False")
    return value


def check_choice(field: str, value: Any, allowed: tuple) -> Any:
    """``value`` if it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{field}={value!r} is not allowed; allowed: {allowed}")
    return value


def dataclass_from_dict(cls, d, where: str, **fixed):
    """``cls(**d, **fixed)`` for a dataclass ``cls`` and a mapping (or ConfigDict) ``d``; a key
    that is not a field (or is one of ``fixed``) raises ValueError naming ``where.<key>`` and
    the allowed fields."""
    import dataclasses

    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    fields = {f.name for f in dataclasses.fields(cls)} - set(fixed)
    unknown = sorted(set(d) - fields)
    if unknown:
        raise ValueError(f"unknown config field(s) {[f'{where}.{u}' for u in unknown]}; "
                         f"allowed: {sorted(fields) or 'none'}")
    return cls(**d, **fixed)
