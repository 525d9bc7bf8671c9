"""CloudEvents on AMQP messages, and how a message becomes a Delivery (no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest

from connectors.rabbitmq.headers import header_text, read_cloudevent, text_headers, to_binary
from connectors.rabbitmq.source import RabbitMQSource
from consumer_core.errors import PartialFailure, SinkError
from consumer_core.events import CloudEvent, content_hash_id, succeeded_event
from sinks.rabbitmq import RabbitMQSink

pytestmark = pytest.mark.rabbitmq

CE = {"ce-specversion": "1.0", "ce-id": "e1", "ce-source": "/shop", "ce-type": "order.created"}


def test_binary_rabbitmq_headers_keep_attributes_and_the_body_byte_for_byte() -> None:
    headers = {**CE, "ce-partitionkey": "cust-7", "ce-time": "2026-01-02T03:04:05Z", "x": 1}
    body = b'{"a":  [1, "x"]}'
    event = read_cloudevent(headers, "application/json", body)
    assert event is not None
    attributes = event.get_attributes()
    assert (attributes["id"], attributes["source"], attributes["type"]) == (
        "e1",
        "/shop",
        "order.created",
    )
    assert attributes["datacontenttype"] == "application/json"
    assert attributes["partitionkey"] == "cust-7"
    assert attributes["time"] == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert "x" not in attributes
    assert event.get_data() == body  # not re-serialized


def test_binary_headers_are_matched_case_insensitively_and_bytes_values_decoded() -> None:
    headers = {"CE-SpecVersion": "1.0", "ce-id": b"e2", "Ce-Source": "/s", "ce-type": "t"}
    event = read_cloudevent(headers, None, b"")
    assert event is not None
    assert event.get_id() == "e2"
    assert event.get_data() is None


@pytest.mark.parametrize("prefix", ["cloudEvents_", "cloudEvents:"])
def test_amqp_binding_application_properties_keep_native_types(prefix: str) -> None:
    stamp = datetime(2026, 5, 6, 7, 8, 9, tzinfo=UTC)
    headers = {
        f"{prefix}specversion": "1.0",
        f"{prefix}id": "a1",
        f"{prefix}source": "/jms",
        f"{prefix}type": "t",
        f"{prefix}time": stamp,
        f"{prefix}priority": 5,
    }
    event = read_cloudevent(headers, "text/plain", b"hello")
    assert event is not None
    attributes = event.get_attributes()
    assert attributes["id"] == "a1"
    assert attributes["time"] == stamp
    assert attributes["priority"] == 5
    assert attributes["datacontenttype"] == "text/plain"
    assert event.get_data() == b"hello"


def test_amqp_binding_accepts_a_millisecond_timestamp() -> None:
    headers = {
        "cloudEvents_specversion": "1.0",
        "cloudEvents_id": "a2",
        "cloudEvents_source": "/jms",
        "cloudEvents_type": "t",
        "cloudEvents_time": 1_700_000_000_000,
    }
    event = read_cloudevent(headers, None, b"x")
    assert event is not None
    assert event.get_attributes()["time"] == datetime.fromtimestamp(1_700_000_000, UTC)


def test_structured_content_type_reads_the_whole_event_and_makes_data_bytes() -> None:
    doc = {
        "specversion": "1.0",
        "id": "s1",
        "source": "/s",
        "type": "t",
        "partitionkey": "k",
        "datacontenttype": "application/json",
        "data": {"n": 1},
    }
    event = read_cloudevent({}, "application/cloudevents+json", json.dumps(doc).encode())
    assert event is not None
    assert event.get_id() == "s1"
    assert json.loads(event.get_data()) == {"n": 1}


def test_structured_base64_data_comes_back_as_the_original_bytes() -> None:
    doc = {"specversion": "1.0", "id": "s2", "source": "/s", "type": "t", "data_base64": "AAEC"}
    body = json.dumps(doc).encode()
    event = read_cloudevent(None, "application/cloudevents+json; charset=utf-8", body)
    assert event is not None
    assert event.get_data() == b"\x00\x01\x02"


def test_a_plain_message_is_not_a_cloudevent() -> None:
    assert read_cloudevent({"x-key": "k", "x-death": []}, "application/json", b"{}") is None
    assert read_cloudevent(None, None, b"raw") is None


@pytest.mark.parametrize(
    ("headers", "content_type", "body", "why"),
    [
        ({"ce-specversion": "1.0", "ce-type": "t"}, None, b"x", "not a valid CloudEvent"),
        ({}, "application/cloudevents+json", b"{not json", "not a valid CloudEvent"),
        ({}, "application/cloudevents+json", b"[1, 2]", "not a valid CloudEvent"),
        ({**CE, "ce-time": "yesterday"}, None, b"", "not a valid CloudEvent"),
        ({**CE, "ce-Bad_Name": "x"}, None, b"", "not a valid CloudEvent"),
        ({}, "application/cloudevents-batch+json", b"[]", "batched CloudEvents"),
    ],
)
def test_a_message_that_claims_to_be_a_cloudevent_but_is_not_raises(
    headers: dict[str, Any], content_type: str | None, body: bytes, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        read_cloudevent(headers, content_type, body)


def test_header_values_become_text() -> None:
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    assert header_text(b"\xff") == "\ufffd"
    assert header_text(True) == "true"
    assert header_text(7) == "7"
    assert header_text(Decimal("1.50")) == "1.50"
    assert header_text(stamp) == "2026-01-01T00:00:00Z"
    assert header_text(None) is None
    death = [{"count": 1, "reason": b"rejected", "time": stamp}]
    assert json.loads(header_text(death) or "") == [
        {"count": 1, "reason": "rejected", "time": "2026-01-01T00:00:00Z"}
    ]
    assert text_headers({"a": 1, "b": None, "c": "x"}) == {"a": "1", "c": "x"}
    assert text_headers(None) == {}


def test_the_sink_binding_round_trips_through_the_source_binding() -> None:
    original = CloudEvent(
        {"id": "o1", "source": "/q", "type": "bridge.message", "partitionkey": "k9"}, b"{}"
    )
    result = succeeded_event(
        pipeline="p",
        original=original,
        tenant="t1",
        attempts=3,
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        data=b'{"ok": true}',
        content_type="application/json",
    )
    message = to_binary(result)
    assert message.content_type == "application/json"
    assert message.body == b'{"ok": true}'
    assert message.headers["ce-subject"] == "o1"
    assert message.headers["ce-partitionkey"] == "k9"
    assert message.headers["ce-attempts"] == "3"  # the binding sends every value as text
    assert message.headers["ce-time"].endswith("Z")
    back = read_cloudevent(message.headers, message.content_type, message.body)
    assert back is not None
    assert back.get_id() == result.get_id()
    assert back.get_data() == b'{"ok": true}'
    assert back.get_attributes()["tenant"] == "t1"


# ------------------------------------------------------------------ message -> Delivery


def _deliver(
    source: RabbitMQSource,
    body: bytes = b'{"n": 1}',
    *,
    headers: dict[str, Any] | None = None,
    content_type: str | None = "application/json",
    message_id: str | None = None,
    routing_key: str = "orders",
) -> Any:
    method = SimpleNamespace(delivery_tag=1, routing_key=routing_key, redelivered=False)
    properties = SimpleNamespace(headers=headers, content_type=content_type, message_id=message_id)
    return source._delivery(SimpleNamespace(), method, properties, body)  # type: ignore[arg-type]


def _source(**kwargs: Any) -> RabbitMQSource:
    return RabbitMQSource(pipeline="p", queue="orders", url="amqp://u:p@h:5672/shop", **kwargs)


def test_a_plain_message_is_wrapped_with_its_message_id_queue_and_key() -> None:
    delivery = _deliver(_source(key_header="x-key"), message_id="m1", headers={"x-key": "c7"})
    assert delivery.event_id == "m1"
    assert delivery.key == "c7"
    assert delivery.partition == "orders"
    assert delivery.decode_error is None
    attributes = delivery.event.get_attributes()
    assert attributes["id"] == "m1"
    assert attributes["type"] == "bridge.message"
    assert attributes["source"] == "/rabbitmq/shop/orders"
    assert attributes["datacontenttype"] == "application/json"
    assert attributes["partitionkey"] == "c7"
    assert delivery.event.get_data() == b'{"n": 1}'
    assert delivery.headers == {"x-key": "c7"}


def test_without_a_message_id_the_id_is_a_content_hash() -> None:
    delivery = _deliver(_source(), b"same body")
    assert delivery.event_id == content_hash_id(b"same body")
    assert _deliver(_source(), b"same body").event_id == delivery.event_id


def test_the_key_is_the_routing_key_when_no_key_header_is_configured() -> None:
    assert _deliver(_source(), routing_key="eu.orders").key == "eu.orders"
    assert _deliver(_source(), routing_key="").key is None


def test_a_configured_key_header_that_is_missing_means_no_key_not_the_routing_key() -> None:
    assert _deliver(_source(key_header="x-key"), routing_key="eu.orders").key is None


def test_a_cloudevent_keeps_its_id_and_orders_by_its_partitionkey() -> None:
    headers = {**CE, "ce-partitionkey": "p1"}
    delivery = _deliver(_source(), headers=headers, message_id="ignored")
    assert delivery.event_id == "e1"
    assert delivery.key == "p1"
    assert delivery.event.get_attributes()["source"] == "/shop"
    with_header = _deliver(_source(key_header="x-key"), headers={**headers, "x-key": "h"})
    assert with_header.key == "h"  # the configured header wins


def test_an_undecodable_cloudevent_becomes_a_decode_error_not_an_exception() -> None:
    delivery = _deliver(
        _source(), b"{oops", content_type="application/cloudevents+json", message_id="bad"
    )
    assert delivery.event is None
    assert delivery.event_id == "bad"
    assert "not a valid CloudEvent" in delivery.decode_error
    assert delivery.raw == b"{oops"


# ------------------------------------------------------------------ sink failures


def _events(*keys: str | None) -> list[CloudEvent]:
    out = []
    for i, key in enumerate(keys):
        attributes = {"id": f"r{i}", "source": "/b", "type": "t"}
        if key is not None:
            attributes["partitionkey"] = key
        out.append(CloudEvent(attributes, None))
    return out


def test_a_failed_publish_fails_every_later_event_of_its_key() -> None:
    sink = RabbitMQSink(name="s", exchange="x")
    events = _events("a", "b", "a", None, "b")
    with pytest.raises(PartialFailure) as caught:
        sink._raise_for(events, [None, None, "nacked by the broker", None, None])
    assert caught.value.failed_ids == {"r2"}
    with pytest.raises(PartialFailure) as caught:
        sink._raise_for(events, ["returned by the broker: 312 NO_ROUTE", None, None, None, None])
    assert caught.value.failed_ids == {"r0", "r2"}
    with pytest.raises(SinkError, match="NO_ROUTE"):
        sink._raise_for(events[:1], ["returned by the broker: 312 NO_ROUTE"])
    sink._raise_for(events, [None] * 5)
