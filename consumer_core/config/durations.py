"""Durations as written in pipeline files: ``250ms``, ``1.5s``, ``30s``, ``5m``, ``1h``, ``7d``.

Units may be combined (``1m30s``). A bare non-negative number (or a string holding
one) is a number of seconds. Everything becomes float seconds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = ["format_seconds", "is_duration", "parse_duration"]

_UNITS = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
}
_PART = r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)"
_WHOLE = re.compile(rf"(?:{_PART})+")
_PARTS = re.compile(_PART)
_NUMBER = re.compile(r"\d+(?:\.\d+)?|\.\d+")


def parse_duration(value: str | int | float) -> float:
    """Return ``value`` in seconds; raise ``ValueError`` if it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
        if math.isnan(seconds) or math.isinf(seconds) or seconds < 0:
            raise ValueError(f"{value!r} is not a duration")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a duration")
    if _NUMBER.fullmatch(value):
        return float(value)
    if not _WHOLE.fullmatch(value):
        raise ValueError(f"{value!r} is not a duration")
    total = sum(
        (Decimal(number) * _UNITS[unit] for number, unit in _PARTS.findall(value)), Decimal()
    )
    return float(total)


def is_duration(value: object) -> bool:
    """True for anything :func:`parse_duration` accepts."""
    if not isinstance(value, str | int | float):
        return False
    try:
        parse_duration(value)
    except ValueError:
        return False
    return True


def format_seconds(seconds: float) -> str:
    """Render float seconds compactly for messages: ``0.2s``, ``30s``, ``90s``."""
    return f"{seconds:g}s"
