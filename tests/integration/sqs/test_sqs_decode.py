"""How SQS messages become CloudEvents, keys and partitions (pure, no server)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from connectors.sqs.deadletter import dead_letter_entry
from connectors.sqs.decode import decode_message

pytestmark = pytest.mark.sqs

ARN = "arn:aws:sqs:us-east-1:123456789012:orders"


def message(body: str, attributes: dict[str, str] | None = None, **system: str) -> dict[str, Any]:
    return {
        "MessageId": "m-1",
        "ReceiptHandle": "r-1",
        "Body": body,
        "Attributes": {"ApproximateReceiveCount": "1", **system},
        "MessageAttributes": {
            name: {"DataType": "String", "StringValue": value}
            for name, value in (attributes or {}).items()
        },
    }


def decode(msg: dict[str, Any], *, fifo: bool = False) -> Any:
    return decode_message(msg, source=ARN, fifo=fifo, queue="orders")


def test_plain_json_message_is_wrapped_with_message_id_and_queue_arn() -> None:
    decoded = decode(message('{"a": 1}', {"x-tenant": "acme"}))
    attributes = decoded.event.get_attributes()
    assert decoded.event_id == attributes["id"] == "m-1"
    assert attributes["source"] == ARN
    assert attributes["type"] == "bridge.message"
    assert attributes["datacontenttype"] == "application/json"
    assert decoded.event.get_data() == b'{"a": 1}'
    assert decoded.headers == {"x-tenant": "acme"}
    assert (decoded.key, decoded.partition) == (None, "orders")


def test_plain_text_message_is_wrapped_as_text() -> None:
    decoded = decode(message("hello"))
    assert decoded.event.get_attributes()["datacontenttype"] == "text/plain; charset=utf-8"


def test_structured_cloudevent_body_keeps_its_attributes() -> None:
    body = {
        "specversion": "1.0",
        "id": "e-9",
        "source": "/shop",
        "type": "shop.order",
        "partitionkey": "cust-1",
        "region": "eu",
        "data": {"n": 1},
    }
    decoded = decode(message(json.dumps(body)))
    attributes = decoded.event.get_attributes()
    assert decoded.event_id == "e-9"
    assert attributes["source"] == "/shop"
    assert attributes["region"] == "eu"
    assert decoded.key == "cust-1"
    assert json.loads(decoded.event.get_data()) == {"n": 1}


def test_binary_mode_attributes_with_either_prefix_make_a_cloudevent() -> None:
    attributes = {
        "ce-specversion": "1.0",
        "ce_id": "e-3",
        "ce-source": "/billing",
        "ce_type": "invoice.paid",
        "ce-region": "us",
        "content_type": "application/json",
    }
    decoded = decode(message('{"total": 3}', attributes))
    event = decoded.event.get_attributes()
    assert decoded.event_id == "e-3"
    assert (event["type"], event["source"], event["region"]) == ("invoice.paid", "/billing", "us")
    assert event["datacontenttype"] == "application/json"
    assert decoded.event.get_data() == b'{"total": 3}'


def test_invalid_cloudevent_is_a_decode_error_not_an_event() -> None:
    decoded = decode(message(json.dumps({"specversion": "1.0", "id": "x"})))
    assert decoded.event is None
    assert decoded.decode_error
    assert decoded.event_id == "m-1"
    broken = decode(message("x", {"ce-id": "1", "ce-source": "/s"}))
    assert broken.event is None
    assert "binary-mode" in (broken.decode_error or "")


def test_fifo_message_group_is_the_key_and_the_partition() -> None:
    decoded = decode(message("x", MessageGroupId="g-7"), fifo=True)
    assert (decoded.key, decoded.partition) == ("g-7", "g-7")
    assert decoded.event.get_attributes()["partitionkey"] == "g-7"


def test_standard_queue_key_comes_from_the_key_attribute() -> None:
    decoded = decode(message("x", {"key": "k-1"}))
    assert (decoded.key, decoded.partition) == ("k-1", "orders")
    assert decoded.event.get_attributes()["partitionkey"] == "k-1"


def test_dead_letter_entry_keeps_body_attributes_and_fifo_group() -> None:
    original = message("payload", {"tenant": "acme"}, MessageGroupId="g-1")
    entry = dead_letter_entry(original, fifo=True)
    assert entry == {
        "MessageBody": "payload",
        "MessageAttributes": {"tenant": {"DataType": "String", "StringValue": "acme"}},
        "MessageGroupId": "g-1",
        "MessageDeduplicationId": "m-1",
    }
    assert dead_letter_entry(message("x"), fifo=False) == {"MessageBody": "x"}
