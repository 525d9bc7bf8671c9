"""The function target's binary mode writes ``ce-*`` headers by hand: byte for byte
what the SDK's HTTP binding writes, percent-encoding included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from connectors.function.encoding import binary
from consumer_core.events import JSON_FORMAT, failed_event, succeeded_event, wrap
from consumer_core.outcome import ErrorKind


def _events() -> list[CloudEvent]:
    original = wrap(
        b'{"a": 1}',
        event_id="orders/0/7",
        source="kafka://orders",
        content_type="application/json",
        extensions={"partitionkey": "k-\u00e9", "time": datetime(2024, 5, 1, 12, tzinfo=UTC)},
    )
    common = {"pipeline": "p", "original": original, "tenant": "t1", "attempts": 3}
    trace = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    base = {"specversion": "1.0", "id": "x", "source": "/s", "type": "t"}
    return [
        original,
        succeeded_event(**common, traceparent=trace, data=b"{}", content_type="text/json"),
        succeeded_event(**common, traceparent=None, data=None, content_type=None),
        failed_event(
            **common, traceparent=trace, kind=ErrorKind.CLIENT_ERROR, message="no", status=404
        ),
        CloudEvent({**base, "partitionkey": "k"}, {"dict": ["data"]}),
        CloudEvent({**base, "datacontenttype": "text/plain"}, "text data"),
        CloudEvent({**base, "time": datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2)))}),
        CloudEvent({**base, "count": 5, "flag": True}, b""),
        # what must be percent-encoded, each alone: space, double quote, percent,
        # non-ASCII, controls
        CloudEvent(
            {**base, "sp": "a b", "dq": 'a"b', "pc": "100%", "na": "caf\u00e9", "tab": "x\ty"},
            None,
        ),
        CloudEvent({**base, "subject": 'a b "c" 100% \u2603', "del": "x\x7f"}, None),
        CloudEvent({**base, "id": "~!#$&'()*+,/:;<=>?@[\\]^_`{|}", "source": "urn:a/b?c=d"}, b"x"),
    ]


@pytest.mark.parametrize("index", range(len(_events())))
def test_binary_mode_is_byte_for_byte_the_sdk_binding(index: int) -> None:
    event = _events()[index]
    expected = ce_http.to_binary(event, JSON_FORMAT)
    headers, body = binary(event)
    assert headers == dict(expected.headers)
    assert list(headers) == list(expected.headers), "in the same order"
    assert body == expected.body
