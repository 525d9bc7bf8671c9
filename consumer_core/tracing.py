"""W3C trace context for tasks.

Every task carries a ``traceparent``: the incoming one's trace id when the message had
one (header or CloudEvent extension), else a new trace. The function request and every
result event carry it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping

__all__ = ["child_traceparent", "incoming_traceparent"]

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
    trace_id = match.group(1) if match else secrets.token_hex(16)
    flags = match.group(3) if match else "01"
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"
