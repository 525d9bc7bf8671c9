"""Kafka records <-> CloudEvents (``connectors.kafka.headers``). Pure: no broker needed,
but they live with the Kafka tests because they import confluent-kafka's siblings."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from connectors.kafka.headers import decode_headers, decode_key, decode_record, encode_event
from consumer_core.events import CloudEvent
from tests.support.parity import parity_events

pytestmark = pytest.mark.kafka

CE = [
    ("ce_specversion", b"1.0"),
    ("ce_id", b"evt-1"),
    ("ce_source", b"/orders"),
    ("ce_type", b"order.created"),
]


def decode(**overrides: object):
    record: dict[str, object] = {
        "topic": "orders",
        "partition": 3,
        "offset": 42,
        "key": None,
        "value": b"",
        "headers": None,
    }
    record.update(overrides)
    return decode_record(**record)  # type: ignore[arg-type]


def test_plain_record_is_wrapped_with_a_stable_id():
    decoded = decode(key=b"order-9", value=b'{"a": 1}', headers=[("x-tenant", b"acme")])
    assert decoded.error is None
    assert decoded.event_id == "orders/3/42"
    assert decoded.key == "order-9"
    assert decoded.headers == {"x-tenant": "acme"}
    event = decoded.event
    assert event is not None
    attributes = event.get_attributes()
    assert attributes["id"] == "orders/3/42"
    assert attributes["source"] == "kafka://orders"
    assert attributes["type"] == "bridge.message"
    assert attributes["partitionkey"] == "order-9"
    assert attributes["datacontenttype"] == "application/octet-stream"
    assert event.get_data() == b'{"a": 1}'


def test_plain_record_keeps_its_content_type():
    decoded = decode(value=b"{}", headers=[("Content-Type", b"application/json")])
    assert decoded.event is not None
    assert decoded.event.get_attributes()["datacontenttype"] == "application/json"
    assert "partitionkey" not in decoded.event.get_attributes()
    assert decoded.key is None


def test_binary_cloudevent_keeps_attributes_and_bytes():
    body = b'{"amount":  10,\n "currency": "\xc3\xa9"}'  # odd spacing survives untouched
    headers = [*CE, ("ce_tenant", b"acme"), ("content-type", b"application/json")]
    decoded = decode(key=b"order-1", value=body, headers=headers)
    assert decoded.error is None
    assert decoded.event_id == "evt-1"
    assert decoded.key == "order-1"
    event = decoded.event
    assert event is not None
    attributes = event.get_attributes()
    assert attributes["source"] == "/orders"
    assert attributes["type"] == "order.created"
    assert attributes["tenant"] == "acme"
    assert attributes["datacontenttype"] == "application/json"
    assert attributes["partitionkey"] == "order-1"
    assert event.get_data() == body


def test_binary_cloudevent_without_a_record_key_orders_by_its_partitionkey():
    decoded = decode(value=b"x", headers=[*CE, ("ce_partitionkey", b"cust-7")])
    assert decoded.key == "cust-7"


def test_binary_cloudevent_time_is_parsed():
    decoded = decode(headers=[*CE, ("ce_time", b"2024-05-01T12:00:00Z")])
    assert decoded.event is not None
    assert decoded.event.get_attributes()["time"] == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert decoded.event.get_data() is None


def test_structured_cloudevent_is_read_whole():
    doc = {
        "specversion": "1.0",
        "id": "evt-2",
        "source": "/orders",
        "type": "order.paid",
        "partitionkey": "cust-1",
        "datacontenttype": "application/json",
        "data": {"paid": True},
    }
    decoded = decode(
        value=json.dumps(doc).encode(),
        headers=[("content-type", b"application/cloudevents+json; charset=utf-8")],
    )
    assert decoded.error is None
    assert decoded.event_id == "evt-2"
    assert decoded.key == "cust-1"
    assert decoded.event is not None
    assert json.loads(decoded.event.get_data()) == {"paid": True}


@pytest.mark.parametrize(
    ("headers", "value", "reason"),
    [
        ([("ce_specversion", b"1.0"), ("ce_id", b"x")], b"{}", "source"),
        ([*CE, ("ce_time", b"yesterday")], b"{}", "binary"),
        ([("content-type", b"application/cloudevents+json")], b"not json", "structured"),
        ([("content-type", b"application/cloudevents+json")], b'{"id": "x"}', "structured"),
    ],
)
def test_malformed_cloudevent_is_a_decode_error_not_an_exception(headers, value, reason):
    decoded = decode(value=value, headers=headers)
    assert decoded.event is None
    assert decoded.event_id == "orders/3/42"
    assert decoded.error is not None
    assert reason in decoded.error


def test_keys_that_are_not_utf8_become_hex():
    assert decode_key(b"\xff\x00") == "ff00"
    assert decode_key(b"caf\xc3\xa9") == "café"
    assert decode_key(None) is None
    assert decode(key=b"\xff\x00", headers=CE).key == "ff00"


def test_headers_decode_leniently():
    assert decode_headers([("a", b"1"), ("a", b"2"), ("n", None), ("bad", b"\xff")]) == {
        "a": "2",
        "n": "",
        "bad": "\ufffd",
    }
    assert decode_headers(None) == {}
    assert decode_headers({"s": "text"}) == {"s": "text"}


def test_encode_is_binary_mode_keyed_by_partitionkey():
    event = CloudEvent(
        {
            "specversion": "1.0",
            "id": "r-1",
            "source": "/bridge/pipelines/orders",
            "type": "bridge.task.succeeded",
            "subject": "orders/3/42",
            "partitionkey": "order-1",
            "datacontenttype": "application/json",
            "time": datetime(2024, 5, 1, 12, tzinfo=UTC),
            "attempts": 2,
        },
        b'{"ok":true}',
    )
    key, value, headers = encode_event(event)
    assert key == "order-1"
    assert value == b'{"ok":true}'
    as_dict = dict(headers)
    assert as_dict["ce_id"] == b"r-1"
    assert as_dict["ce_subject"] == b"orders/3/42"
    assert as_dict["ce_attempts"] == b"2"
    assert as_dict["ce_time"] == b"2024-05-01T12:00:00Z"
    assert as_dict["content-type"] == b"application/json"
    assert "ce_datacontenttype" not in as_dict


def test_encode_then_decode_round_trips():
    event = CloudEvent(
        {"specversion": "1.0", "id": "r-2", "source": "/s", "type": "t", "partitionkey": "k"},
        b"\x00\x01binary",
    )
    key, value, headers = encode_event(event)
    raw_key = key.encode() if isinstance(key, str) else key
    decoded = decode(key=raw_key, value=value, headers=headers)
    assert decoded.event is not None
    assert decoded.event_id == "r-2"
    assert decoded.key == "k"
    assert decoded.event.get_data() == b"\x00\x01binary"


def test_encode_without_partitionkey_has_no_key():
    event = CloudEvent({"specversion": "1.0", "id": "r-3", "source": "/s", "type": "t"}, None)
    key, value, _ = encode_event(event)
    assert key is None
    assert value == b""


@pytest.mark.parametrize("index", range(len(parity_events())))
def test_encode_is_byte_for_byte_the_sdk_binding(index: int) -> None:
    from cloudevents.core.bindings import kafka as ce_kafka

    from consumer_core.events import JSON_FORMAT

    event = parity_events()[index]
    expected = ce_kafka.to_binary(event, JSON_FORMAT)
    key, value, headers = encode_event(event)
    assert key == expected.key
    assert value == expected.value
    assert headers == list(expected.headers.items())


def test_waiting_for_the_coordinator_is_transient_not_fatal():
    from confluent_kafka import KafkaError

    from connectors.kafka.errors import translate
    from consumer_core.errors import NotConnected

    for code in (KafkaError._WAIT_COORD, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
        assert isinstance(translate(KafkaError(code), "committing offsets"), NotConnected)
