"""W3C trace context for tasks.

Every task carries a ``traceparent``: the incoming one's trace id when the message had
one (header or CloudEvent extension), else a new trace. The function request and every
result event carry it.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping

__all__ = ["child_traceparent", "incoming_traceparent", "new_id"]

_RANDOM = random.Random(os.urandom(32))
"""Trace and span ids need uniqueness, not secrecy: a seeded PRNG is 5x cheaper."""

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def incoming_traceparent(headers: Mapping[str, str], extension: object) -> str | None:
    """The valid ``traceparent`` a message arrived with, if any."""
    candidates = [extension, headers.get("traceparent"), headers.get("ce_traceparent")]
    for value in candidates:
        if isinstance(value, str) and _TRACEPARENT.match(value.strip().lower()):
            return value.strip().lower()
    return None


def child_traceparent(parent: str | None) -> str:
    """A traceparent for a new span: in the parent's trace, or in a new one."""
    match = _TRACEPARENT.match(parent) if parent else None
    trace_id = match.group(1) if match else f"{_RANDOM.getrandbits(128):032x}"
    flags = match.group(3) if match else "01"
    return f"00-{trace_id}-{_RANDOM.getrandbits(64):016x}-{flags}"


def new_id() -> str:
    """A random UUID (version 4 layout) for result events, without ``uuid4``'s syscall."""
    value = (_RANDOM.getrandbits(128) & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC << 60) | (
        0x8 << 60
    )
    hex32 = f"{value:032x}"
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"
