"""From an SQS message to what the core needs: a CloudEvent, its ids and its keys.

Pure functions, no I/O. A message is read as:

1. **binary-mode CloudEvent** when it has ``ce-*`` or ``ce_*`` message attributes:
   they are the attributes (``ce-id``, ``ce-source``, ``ce-type``, ``ce-specversion``
   and any extension), a ``content-type`` (or ``content_type``) attribute is the
   ``datacontenttype``, and the body is the data, byte for byte;
2. **structured-mode CloudEvent** when the body is a JSON object with ``specversion``;
3. otherwise a **plain message**, wrapped (SPEC section 4): ``id`` = MessageId,
   ``source`` = the queue's ARN, ``type`` = ``bridge.message``; ``datacontenttype``
   is the ``content-type`` attribute, else ``application/json`` when the body parses
   as JSON, else ``text/plain; charset=utf-8``.

A message that claims to be a CloudEvent (1 or 2) but is not a valid one becomes a
delivery without an event and with ``decode_error``: the core fails it to
``on_failure`` as ``malformed_message``.

The ordering key is the MessageGroupId on a FIFO queue; on a standard queue the
event's ``partitionkey`` attribute, else a ``key`` message attribute. A wrapped
message with a key gets it as its ``partitionkey``, so result events keep it.
String and Number message attributes become the delivery's headers (tenant
extraction, ``traceparent``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from consumer_core.events import (
    CloudEvent,
    from_http,
    from_structured_bytes,
    partition_key,
    wrap,
)

__all__ = ["Decoded", "decode_message", "message_headers"]

KEY_ATTRIBUTE: Final = "key"
_CONTENT_TYPE_NAMES: Final = ("content-type", "content_type", "datacontenttype")


@dataclass(frozen=True, slots=True, kw_only=True)
class Decoded:
    """What one SQS message means to the core (see the module docstring)."""

    event: CloudEvent | None
    event_id: str
    raw: bytes
    key: str | None
    partition: str
    headers: Mapping[str, str] = field(default_factory=dict)
    decode_error: str | None = None


def message_headers(message: Mapping[str, Any]) -> dict[str, str]:
    """The message's String and Number attributes as ``{name: value}``."""
    headers: dict[str, str] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        if str(value.get("DataType", "")).startswith(("String", "Number")):
            text = value.get("StringValue")
            if text is not None:
                headers[str(name)] = str(text)
    return headers


def _header(headers: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    lowered = {k.lower(): v for k, v in headers.items()}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _binary_event(headers: Mapping[str, str], body: bytes) -> CloudEvent | None:
    """A binary-mode CloudEvent from ``ce-*``/``ce_*`` attributes, or ``None`` if none.

    Raises ``ValueError`` when the attributes do not make a valid CloudEvent.
    """
    mapped: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(("ce-", "ce_")):
            mapped["ce-" + lowered[3:]] = value
    if not mapped:
        return None
    content_type = _header(headers, _CONTENT_TYPE_NAMES)
    if content_type is not None:
        mapped["content-type"] = content_type
    try:
        return from_http(mapped, body)
    except Exception as exc:  # the SDK's validation errors; recorded as decode_error
        raise ValueError(f"invalid binary-mode CloudEvent attributes: {exc}") from exc


_NOT_JSON: Final = object()


def _parse_json(body: bytes) -> Any:
    """The body as a JSON value, or ``_NOT_JSON``."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return _NOT_JSON


def _plain_content_type(headers: Mapping[str, str], parsed: Any) -> str:
    given = _header(headers, _CONTENT_TYPE_NAMES)
    if given:
        return given
    return "text/plain; charset=utf-8" if parsed is _NOT_JSON else "application/json"


def decode_message(message: Mapping[str, Any], *, source: str, fifo: bool, queue: str) -> Decoded:
    """Decode one ``ReceiveMessage`` entry (see the module docstring).

    ``source`` is the wrapped events' ``source`` (the queue ARN); ``queue`` is the
    queue's name, the partition of a standard queue.
    """
    message_id = str(message["MessageId"])
    body = str(message.get("Body", "")).encode()
    headers = message_headers(message)
    system = message.get("Attributes") or {}
    group = system.get("MessageGroupId") if fifo else None
    partition = str(group) if group is not None else queue
    parsed: Any = _NOT_JSON
    try:
        event = _binary_event(headers, body)
        if event is None:
            parsed = _parse_json(body)
            if isinstance(parsed, dict) and "specversion" in parsed:
                event = from_structured_bytes(body)
    except ValueError as exc:
        return Decoded(
            event=None,
            event_id=message_id,
            raw=body,
            key=str(group) if group is not None else headers.get(KEY_ATTRIBUTE),
            partition=partition,
            headers=headers,
            decode_error=str(exc),
        )
    if event is not None:
        key = str(group) if group is not None else partition_key(event)
        if key is None:
            key = headers.get(KEY_ATTRIBUTE)
        return Decoded(
            event=event,
            event_id=str(event.get_id()),
            raw=body,
            key=key,
            partition=partition,
            headers=headers,
        )
    key = str(group) if group is not None else headers.get(KEY_ATTRIBUTE)
    wrapped = wrap(
        body,
        event_id=message_id,
        source=source,
        content_type=_plain_content_type(headers, parsed),
        extensions={"partitionkey": key} if key is not None else None,
    )
    return Decoded(
        event=wrapped,
        event_id=message_id,
        raw=body,
        key=key,
        partition=partition,
        headers=headers,
    )
