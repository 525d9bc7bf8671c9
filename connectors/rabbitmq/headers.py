"""CloudEvents on AMQP 0-9-1 messages, both ways, through the cloudevents SDK's bindings.

Reading (source), first match wins:

==========================================  ===========================================
the message has                             it is read as
==========================================  ===========================================
content type ``application/cloudevents*``   structured mode (SDK ``rabbitmq`` binding),
                                            the whole event in the body
a ``ce-*`` header                           binary mode, RabbitMQ binding (``ce-``
                                            headers, as Knative eventing-rabbitmq)
a ``cloudEvents_*`` / ``cloudEvents:*``     binary mode, AMQP binding (application
header                                      properties = the AMQP 0-9-1 headers table)
none of these                               not a CloudEvent: the source wraps it
==========================================  ===========================================

In binary mode the SDK reads the attributes and the body is kept byte for byte as the
event's data (as ``consumer_core.events.from_http`` does): the function receives the
payload exactly as it was published. Structured events go through
``consumer_core.events.normalize`` so their data is bytes too. A message that claims to
be a CloudEvent but is not a valid one raises ``ValueError`` (the source turns it into a
``decode_error`` and the core fails it to ``on_failure``).

Writing (sink): binary mode, RabbitMQ binding: ``ce-*`` headers, ``datacontenttype`` as
the AMQP ``content_type`` property, the data as the body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from cloudevents.core.bindings import amqp as ce_amqp
from cloudevents.core.bindings import rabbitmq as ce_rabbitmq

from consumer_core.events import JSON_FORMAT, CloudEvent, normalize, rfc3339

__all__ = [
    "AMQP_PREFIXES",
    "BINARY_PREFIX",
    "STRUCTURED_PREFIX",
    "header_text",
    "read_cloudevent",
    "text_headers",
    "to_binary",
]

BINARY_PREFIX: Final = ce_rabbitmq.CE_PREFIX
"""``ce-``: the RabbitMQ binding's attribute headers."""
AMQP_PREFIXES: Final = (ce_amqp.CE_PREFIX_UNDERSCORE, ce_amqp.CE_PREFIX_COLON)
"""``cloudEvents_`` and ``cloudEvents:``: the AMQP binding's application properties."""
STRUCTURED_PREFIX: Final = "application/cloudevents"
_BATCH_PREFIX: Final = "application/cloudevents-batch"


def header_text(value: Any) -> str | None:
    """One AMQP header value as text (``None`` for a void value).

    pika decodes a table to Python values: long strings to ``str`` (``bytes`` when not
    UTF-8), numbers, ``bool``, ``Decimal``, timestamps to aware ``datetime``, nested
    tables and arrays (``x-death``) to ``dict`` and ``list``.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, dict | list):
        return json.dumps(_plain(value), separators=(",", ":"))
    return str(value)


def _plain(value: Any) -> Any:
    """A decoded AMQP value as plain JSON data (nested tables such as ``x-death``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return header_text(value)


def text_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The headers table as ``str -> str`` (what ``Delivery.headers`` holds)."""
    if not headers:
        return {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        text = header_text(value)
        if text is not None:
            out[str(name)] = text
    return out


def read_cloudevent(
    headers: Mapping[str, Any] | None, content_type: str | None, body: bytes
) -> CloudEvent | None:
    """The CloudEvent a message carries, or ``None`` when it carries none.

    Raises ``ValueError`` when the message claims to be a CloudEvent (see the module
    docstring) but cannot be read as a valid one.
    """
    headers = headers or {}
    lowered = (content_type or "").lower()
    if lowered.startswith(_BATCH_PREFIX):
        raise ValueError(f"content type {content_type!r}: batched CloudEvents are not supported")
    try:
        if lowered.startswith(STRUCTURED_PREFIX):
            message = ce_rabbitmq.RabbitMQMessage(headers={}, content_type=content_type, body=body)
            return normalize(ce_rabbitmq.from_structured(message, JSON_FORMAT, CloudEvent))
        if any(str(name).lower().startswith(BINARY_PREFIX) for name in headers):
            return _with_body(_rabbitmq_attributes(headers, content_type), body)
        if any(str(name).startswith(AMQP_PREFIXES) for name in headers):
            return _with_body(_amqp_attributes(headers, content_type), body)
    except Exception as exc:  # the SDK's validation and parsing errors: a poison message
        raise ValueError(f"not a valid CloudEvent: {exc}") from exc
    return None


def to_binary(event: CloudEvent) -> ce_rabbitmq.RabbitMQMessage:
    """The event in binary mode for publishing (RabbitMQ binding, ``ce-`` headers)."""
    return ce_rabbitmq.to_binary(event, JSON_FORMAT)


def _rabbitmq_attributes(headers: Mapping[str, Any], content_type: str | None) -> dict[str, Any]:
    texts = {
        str(name): text
        for name, value in headers.items()
        if str(name).lower().startswith(BINARY_PREFIX) and (text := header_text(value)) is not None
    }
    message = ce_rabbitmq.RabbitMQMessage(headers=texts, content_type=content_type, body=b"")
    return dict(ce_rabbitmq.from_binary(message, JSON_FORMAT, CloudEvent).get_attributes())


def _amqp_attributes(headers: Mapping[str, Any], content_type: str | None) -> dict[str, Any]:
    properties = {
        str(name): _amqp_value(value)
        for name, value in headers.items()
        if str(name).startswith(AMQP_PREFIXES) and value is not None
    }
    message = ce_amqp.AMQPMessage(
        properties={ce_amqp.CONTENT_TYPE_PROPERTY: content_type} if content_type else {},
        application_properties=properties,
        application_data=b"",
    )
    return dict(ce_amqp.from_binary(message, JSON_FORMAT, CloudEvent).get_attributes())


def _amqp_value(value: Any) -> Any:
    """AMQP 0-9-1 values as the AMQP binding expects them: text as ``str``; native
    numbers, booleans and (aware) timestamps kept."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _with_body(attributes: dict[str, Any], body: bytes) -> CloudEvent:
    return CloudEvent(attributes, body or None)
