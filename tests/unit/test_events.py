import json

import pytest

from consumer_core.events import (
    failed_event,
    from_http,
    reduced,
    structured_bytes,
    structured_dict,
    succeeded_event,
    wrap,
)
from consumer_core.outcome import ErrorKind


def test_binary_http_event_keeps_body_bytes_and_attributes():
    headers = {
        "ce-id": "e1",
        "ce-source": "/shop",
        "ce-type": "order.created",
        "ce-specversion": "1.0",
        "ce-partitionkey": "cust-7",
        "content-type": "application/json",
    }
    event = from_http(headers, b'{"a": [1, "x"]}')
    assert event is not None
    assert event.get_id() == "e1"
    assert event.get_data() == b'{"a": [1, "x"]}'
    assert event.get_attributes()["partitionkey"] == "cust-7"


def test_structured_http_event_round_trips_json_data():
    doc = {"specversion": "1.0", "id": "e2", "source": "/s", "type": "t", "data": ["a", 1]}
    event = from_http({"content-type": "application/cloudevents+json"}, json.dumps(doc).encode())
    assert event is not None
    assert structured_dict(event)["data"] == ["a", 1]


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"[]", b'{"id": "x"}', b'{"specversion": "1.0", "id": "", "source": "s"}'],
)
def test_malformed_structured_event_is_a_value_error(body):
    with pytest.raises(ValueError):  # noqa: PT011
        from_http({"content-type": "application/cloudevents+json"}, body)


def test_plain_body_is_not_a_cloudevent():
    assert from_http({"content-type": "application/json"}, b"{}") is None


def test_binary_payload_goes_base64_in_structured_form():
    event = wrap(b"\xff\x00", event_id="i", source="/q")
    assert structured_dict(event)["data_base64"] == "/wA="


def test_result_events_follow_the_spec():
    original = wrap(
        b'{"n": 1}',
        event_id="orig-1",
        source="/q",
        content_type="application/json",
        extensions={"partitionkey": "k1"},
    )
    ok = succeeded_event(
        pipeline="orders",
        original=original,
        tenant="acme",
        attempts=2,
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
        data=b'{"done": true}',
        content_type="application/json",
    )
    doc = structured_dict(ok)
    assert doc["type"] == "bridge.task.succeeded"
    assert doc["source"] == "/bridge/pipelines/orders"
    assert doc["subject"] == "orig-1"
    assert doc["tenant"] == "acme"
    assert doc["attempts"] == 2
    assert doc["traceparent"].startswith("00-aaaa")
    assert doc["data"] == {"done": True}
    assert doc["id"] != "orig-1"

    bad = failed_event(
        pipeline="orders",
        original=original,
        tenant="acme",
        attempts=5,
        traceparent=None,
        kind=ErrorKind.SERVER_ERROR,
        message="HTTP 500",
        status=500,
    )
    data = structured_dict(bad)["data"]
    assert data["error"] == {"kind": "server_error", "message": "HTTP 500", "status": 500}
    assert data["event"]["id"] == "orig-1"
    assert data["event"]["data"] == {"n": 1}


def test_config_reprs_never_show_secrets():
    from consumer_core.config.model import ComponentSpec, TargetSpec

    sink = ComponentSpec(
        type="webhook",
        options={"url": "http://x", "secret": "s3cr3t", "headers": {"Authorization": "Bearer t0k"}},
        path="p",
    )
    kafka = ComponentSpec(type="kafka", options={"settings": {"sasl.password": "pw123"}}, path="p")
    target = TargetSpec(url="http://fn", headers={"Authorization": "Bearer abc"})
    text = repr(sink) + repr(kafka) + repr(target)
    for secret in ("s3cr3t", "t0k", "pw123", "abc"):
        assert secret not in text
    assert "http://x" in text


def test_result_event_ids_are_unique_version_4_uuids():
    import uuid

    from consumer_core.tracing import child_traceparent, new_id

    ids = {new_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    for value in list(ids)[:500]:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    parent = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"
    child = child_traceparent(parent)
    assert child.startswith("00-" + "ab" * 16 + "-")
    assert child != parent


def test_reduced_copies_keep_every_attribute_and_point_at_the_task():
    original = wrap(
        b"\x00" * 200_000,
        event_id="orig-1",
        source="/shop",
        content_type="application/octet-stream",
        extensions={"partitionkey": "cust-7"},
    )
    common = {"pipeline": "orders", "original": original, "tenant": "acme", "attempts": 2}
    ok = succeeded_event(**common, traceparent=None, data=b"y" * 300_000, content_type="text/plain")
    copy = reduced(ok)
    attributes = copy.get_attributes()
    assert {k: v for k, v in attributes.items() if k not in ("dataref", "dataomitted")} == {
        k: v for k, v in ok.get_attributes().items() if k != "datacontenttype"
    }
    assert attributes["dataref"] == "/v1/tasks/orders:orig-1"
    assert attributes["dataomitted"] == 300_000
    assert copy.get_data() is None
    assert len(structured_bytes(copy)) < 1000

    failed = failed_event(
        **common, traceparent=None, kind=ErrorKind.CLIENT_ERROR, message="HTTP 400", status=400
    )
    assert len(structured_bytes(failed)) > 256 * 1024, "base64 makes 200 KB into 267 KB"
    body = json.loads(reduced(failed).get_data())
    assert body["error"] == {"kind": "client_error", "message": "HTTP 400", "status": 400}
    assert body["event"]["id"] == "orig-1"
    assert body["event"]["partitionkey"] == "cust-7"
    assert "data" not in body["event"]
    assert "data_base64" not in body["event"]
    failed_copy = reduced(failed).get_attributes()
    assert failed_copy["dataref"] == "/v1/tasks/orders:orig-1"
    assert failed_copy["dataomitted"] > 266_000
    assert failed_copy["id"] == failed.get_id(), "the same result: the same id"


def test_a_reduced_copy_refers_to_its_task_even_with_odd_subjects_and_data():
    odd = wrap(b"{}", event_id="a b?c#d%e/\u00e9", source="/s")
    common = {"pipeline": "p", "original": odd, "tenant": "t", "attempts": 1}
    ok = succeeded_event(**common, traceparent=None, data=b"x", content_type="text/plain")
    assert reduced(ok).get_attributes()["dataref"] == "/v1/tasks/p:a%20b%3Fc%23d%25e/%C3%A9"
    # a failure event whose data is not the usual object loses its data like a success
    strange = failed_event(
        **common, traceparent=None, kind=ErrorKind.CLIENT_ERROR, message="no", status=400
    )
    strange._data = b"not json"
    copy = reduced(strange)
    assert copy.get_data() is None
    assert copy.get_attributes()["dataomitted"] == len(b"not json")
