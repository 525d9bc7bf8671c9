"""The function target's binary mode writes ``ce-*`` headers by hand: byte for byte
what the SDK's HTTP binding writes, percent-encoding included."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from connectors.function.encoding import binary
from consumer_core.events import JSON_FORMAT
from tests.support.parity import BASE, parity_events


def _events() -> list[CloudEvent]:
    return [
        *parity_events(),
        CloudEvent({**BASE, "time": datetime(2024, 5, 1, 12, tzinfo=UTC)}),  # "Z"
        # what must be percent-encoded, each alone: space, double quote, percent,
        # non-ASCII, controls
        CloudEvent(
            {**BASE, "sp": "a b", "dq": 'a"b', "pc": "100%", "na": "caf\u00e9", "tab": "x\ty"},
            None,
        ),
        CloudEvent({**BASE, "subject": 'a b "c" 100% \u2603', "del": "x\x7f"}, None),
        CloudEvent({**BASE, "id": "~!#$&'()*+,/:;<=>?@[\\]^_`{|}", "source": "urn:a/b?c=d"}, b"x"),
    ]


@pytest.mark.parametrize("index", range(len(_events())))
def test_binary_mode_is_byte_for_byte_the_sdk_binding(index: int) -> None:
    event = _events()[index]
    expected = ce_http.to_binary(event, JSON_FORMAT)
    headers, body = binary(event)
    assert headers == dict(expected.headers)
    assert list(headers) == list(expected.headers), "in the same order"
    assert body == expected.body
