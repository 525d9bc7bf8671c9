"""Events the hand-written bindings are held to the SDK's with (Kafka and HTTP binary
mode): an original message, results and failures built from it, and plain events with
the attribute types a binding must write (dict, text, bytes data; a time with an
offset; integers and booleans)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from cloudevents.core.v1.event import CloudEvent

from consumer_core.events import failed_event, succeeded_event, wrap
from consumer_core.outcome import ErrorKind

BASE = {"specversion": "1.0", "id": "x", "source": "/s", "type": "t"}


def parity_events() -> list[CloudEvent]:
    original = wrap(
        b'{"a": 1}',
        event_id="orders/0/7",
        source="kafka://orders",
        content_type="application/json",
        extensions={"partitionkey": "k-\u00e9"},
    )
    common = {"pipeline": "p", "original": original, "tenant": "t1", "attempts": 3}
    trace = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    return [
        original,
        succeeded_event(**common, traceparent=trace, data=b"{}", content_type="text/json"),
        succeeded_event(**common, traceparent=None, data=None, content_type=None),
        failed_event(
            **common, traceparent=trace, kind=ErrorKind.CLIENT_ERROR, message="no", status=404
        ),
        CloudEvent({**BASE, "partitionkey": "k"}, {"dict": ["data"]}),
        CloudEvent({**BASE, "datacontenttype": "text/plain"}, "text data"),
        CloudEvent({**BASE, "time": datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2)))}),
        CloudEvent({**BASE, "count": 5, "flag": True}, b""),
    ]
