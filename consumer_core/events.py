"""CloudEvents as the core sees them, and the result events it emits.

Inside the bridge every event is a ``cloudevents`` SDK ``CloudEvent`` whose data is
the payload's raw bytes (or ``None``), with ``datacontenttype`` saying what they are.
Keeping bytes means a payload goes to the function exactly as it came in; the
structured (JSON) form is produced only where a structured document is wanted, and
there JSON payloads are embedded as JSON rather than base64.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from consumer_core import codec
from consumer_core.outcome import ErrorKind
from consumer_core.tracing import new_id

__all__ = [
    "JSON_FORMAT",
    "MESSAGE_TYPE",
    "CloudEvent",
    "attributes_json",
    "content_hash_id",
    "decode_data",
    "failed_event",
    "from_http",
    "from_stored",
    "from_structured_bytes",
    "is_json_type",
    "normalize",
    "partition_key",
    "reduced",
    "rfc3339",
    "structured_bytes",
    "structured_dict",
    "succeeded_event",
    "trusted_event",
    "wrap",
]

JSON_FORMAT: Final = JSONFormat()
MESSAGE_TYPE: Final = "bridge.message"
SUCCEEDED_TYPE: Final = "bridge.task.succeeded"
FAILED_TYPE: Final = "bridge.task.failed"
RESULT_SOURCE: Final = "/bridge/pipelines/"
"""Every result event's ``source`` starts so, followed by the pipeline's name."""
_JSON_TYPE = re.compile(r"^(application|text)/([a-zA-Z0-9\-\.]+\+)?json(;.*)?$")


def trusted_event(attributes: dict[str, Any], data: bytes | None) -> CloudEvent:
    """An SDK ``CloudEvent`` built without re-validating its attributes.

    Only for attributes this process built itself or already validated (events read
    back from our own queue, result events): validation costs more than everything
    else the core does per message.
    """
    event: CloudEvent = CloudEvent.__new__(CloudEvent)
    event._attributes = attributes
    event._data = data
    return event


def rfc3339(value: datetime) -> str:
    """A ``time`` attribute as text: ISO 8601, with ``Z`` for UTC (as the SDK writes it)."""
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def attributes_json(event: CloudEvent) -> str:
    """The attributes as compact JSON (``time`` as RFC 3339), for storage."""
    attributes = dict(event.get_attributes())
    time = attributes.get("time")
    if isinstance(time, datetime):
        attributes["time"] = rfc3339(time)
    return codec.dumps_text(attributes)


def from_stored(attributes: str, data: bytes | None) -> CloudEvent:
    """The inverse of ``attributes_json`` plus the data, without re-validation."""
    parsed: dict[str, Any] = codec.loads(attributes)
    time = parsed.get("time")
    if isinstance(time, str):
        parsed["time"] = datetime.fromisoformat(time)
    return trusted_event(parsed, data)


def is_json_type(content_type: str | None) -> bool:
    return content_type is None or bool(_JSON_TYPE.match(content_type))


def content_hash_id(body: bytes) -> str:
    """A stable id for a message that has none: the SHA-256 of its body."""
    return "sha256-" + hashlib.sha256(body).hexdigest()[:32]


def wrap(
    body: bytes,
    *,
    event_id: str,
    source: str,
    content_type: str | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> CloudEvent:
    """Wrap a plain message as a ``bridge.message`` CloudEvent (SPEC section 4)."""
    attributes: dict[str, Any] = {
        "id": event_id,
        "source": source,
        "type": MESSAGE_TYPE,
        "specversion": "1.0",
        "datacontenttype": content_type or "application/octet-stream",
    }
    if extensions:
        attributes.update(extensions)
    if not event_id or not source:
        raise ValueError("a CloudEvent needs a non-empty id and source")
    return trusted_event(attributes, body)


def _data_to_bytes(data: Any, content_type: str | None) -> bytes | None:
    if data is None or isinstance(data, bytes):
        return data
    if isinstance(data, bytearray):
        return bytes(data)
    if isinstance(data, str) and not is_json_type(content_type):
        return data.encode()
    return codec.dumps(data)


def normalize(event: Any) -> CloudEvent:
    """Return an SDK event whose data is bytes (re-encoding parsed JSON if needed)."""
    data = event.get_data()
    if data is None or isinstance(data, bytes):
        return event if isinstance(event, CloudEvent) else CloudEvent(event.get_attributes(), data)
    attributes = dict(event.get_attributes())
    return CloudEvent(attributes, _data_to_bytes(data, attributes.get("datacontenttype")))


def from_http(headers: Mapping[str, str], body: bytes) -> CloudEvent | None:
    """Read a CloudEvent from an HTTP request, or ``None`` if it does not carry one.

    Binary mode (``ce-*`` headers) keeps the body as the data, byte for byte;
    structured mode (``application/cloudevents+json``) is parsed by the SDK. Raises
    ``ValueError`` for a request that claims to be a CloudEvent but is malformed.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    if any(k.startswith("ce-") for k in lowered):
        try:
            message = ce_http.HTTPMessage(lowered, b"")
            attributes = dict(ce_http.from_binary(message, JSON_FORMAT).get_attributes())
            return CloudEvent(attributes, body or None)
        except Exception as exc:  # the SDK's validation errors share no base class
            raise ValueError(f"not a valid CloudEvent: {exc}") from exc
    if lowered.get("content-type", "").startswith("application/cloudevents+json"):
        return from_structured_bytes(body)
    return None


def from_structured_bytes(body: bytes) -> CloudEvent:
    """Parse one structured-mode JSON CloudEvent (raises ``ValueError`` when malformed)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a JSON document: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError("a structured CloudEvent must be a JSON object")
    try:
        return normalize(JSON_FORMAT.read(None, body))
    except Exception as exc:
        raise ValueError(f"not a valid CloudEvent: {exc}") from exc


def decode_data(event: CloudEvent) -> Any:
    """The payload as a JSON value when it is JSON, else text, else bytes."""
    data = event.get_data()
    if data is None:
        return None
    content_type = event.get_attributes().get("datacontenttype")
    if isinstance(data, bytes) and is_json_type(content_type):
        try:
            return codec.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    if isinstance(data, bytes):
        try:
            return data.decode()
        except UnicodeDecodeError:
            return data
    return data


def structured_dict(event: CloudEvent) -> dict[str, Any]:
    """The event as a structured-mode JSON object (JSON payloads embedded as JSON)."""
    attributes: dict[str, Any] = dict(event.get_attributes())
    time = attributes.get("time")
    if isinstance(time, datetime):
        attributes["time"] = rfc3339(time)
    data = event.get_data()
    if data is None:
        return attributes
    value = decode_data(event)
    if isinstance(value, bytes):
        attributes["data_base64"] = base64.b64encode(value).decode()
    elif isinstance(value, str) and is_json_type(attributes.get("datacontenttype")):
        # JSON content type but not parseable JSON: keep it as text, never lose it.
        attributes["data"] = value
    else:
        attributes["data"] = value
    return attributes


def structured_bytes(event: CloudEvent) -> bytes:
    return codec.dumps(structured_dict(event))


def partition_key(event: CloudEvent) -> str | None:
    value = event.get_attributes().get("partitionkey")
    return None if value is None else str(value)


def _result_attributes(
    *,
    type_: str,
    pipeline: str,
    original: CloudEvent,
    tenant: str,
    attempts: int,
    traceparent: str | None,
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": new_id(),
        "type": type_,
        "source": RESULT_SOURCE + pipeline,
        "subject": str(original.get_id()),
        "time": datetime.now(UTC),
        "tenant": tenant,
        "attempts": attempts,
    }
    key = partition_key(original)
    if key is not None:
        attributes["partitionkey"] = key
    if traceparent:
        attributes["traceparent"] = traceparent
    return attributes


def succeeded_event(
    *,
    pipeline: str,
    original: CloudEvent,
    tenant: str,
    attempts: int,
    traceparent: str | None,
    data: bytes | None,
    content_type: str | None,
) -> CloudEvent:
    """``bridge.task.succeeded``: the function's answer as data, with its content type."""
    attributes = _result_attributes(
        type_=SUCCEEDED_TYPE,
        pipeline=pipeline,
        original=original,
        tenant=tenant,
        attempts=attempts,
        traceparent=traceparent,
    )
    if data:
        attributes["datacontenttype"] = content_type or "application/octet-stream"
    return trusted_event(attributes, data or None)


def failed_event(
    *,
    pipeline: str,
    original: CloudEvent,
    tenant: str,
    attempts: int,
    traceparent: str | None,
    kind: ErrorKind,
    message: str,
    status: int | None,
) -> CloudEvent:
    """``bridge.task.failed``: ``{"error": {kind, message, status}, "event": original}``."""
    attributes = _result_attributes(
        type_=FAILED_TYPE,
        pipeline=pipeline,
        original=original,
        tenant=tenant,
        attempts=attempts,
        traceparent=traceparent,
    )
    attributes["datacontenttype"] = "application/json"
    body = {
        "error": {"kind": kind.value, "message": message, "status": status},
        "event": structured_dict(original),
    }
    return trusted_event(attributes, codec.dumps(body))


def reduced(event: CloudEvent) -> CloudEvent:
    """A copy of result ``event`` for a sink that refused it as too large.

    Every attribute stays (the id too: it is the same result), and two are added:
    ``dataref``, the task in the admin API (``/v1/tasks/{pipeline}:{subject}``), where
    the whole event is kept (a success's ``result``, a failure's original ``event``);
    and ``dataomitted``, how many bytes of data were left out. A success loses its data.
    A failure keeps its error and the original event's attributes, and loses the
    original's data.
    """
    attributes = dict(event.get_attributes())
    pipeline = str(attributes.get("source", "")).removeprefix(RESULT_SOURCE)
    task = f"{pipeline}:{attributes.get('subject', '')}"
    attributes["dataref"] = "/v1/tasks/" + quote(task, safe="/:@!$&'()*+,;=")
    data = event.get_data()
    raw = data if isinstance(data, bytes) else codec.dumps(data) if data is not None else b""
    body = _failure_body(raw) if attributes.get("type") == FAILED_TYPE else None
    if body is not None:
        original = dict(body.get("event") or {})
        left_out = original.pop("data", None), original.pop("data_base64", None)
        attributes["dataomitted"] = sum(len(codec.dumps(v)) for v in left_out if v is not None)
        return trusted_event(
            attributes, codec.dumps({"error": body.get("error"), "event": original})
        )
    attributes.pop("datacontenttype", None)
    attributes.pop("dataschema", None)
    attributes["dataomitted"] = len(raw)
    return trusted_event(attributes, None)


def _failure_body(raw: bytes) -> dict[str, Any] | None:
    """A failure event's data as its object, or ``None`` when it is not one."""
    try:
        body = codec.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict) or not isinstance(body.get("event"), dict | None):
        return None
    return body
