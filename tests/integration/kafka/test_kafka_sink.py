"""``sinks.kafka.KafkaSink`` against tansu: binary mode, keys, delivery reports."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest

from consumer_core.errors import PartialFailure, SinkError
from consumer_core.events import CloudEvent
from sinks.kafka import KafkaSink, producer_config
from tests.integration.kafka.tansu import Tansu
from tests.support.net import free_port

pytestmark = pytest.mark.kafka


def result(i: int, key: str | None, data: bytes = b'{"ok":true}') -> CloudEvent:
    attributes = {
        "specversion": "1.0",
        "id": f"r-{i}",
        "source": "/bridge/pipelines/test",
        "type": "bridge.task.succeeded",
        "subject": f"orders/0/{i}",
        "datacontenttype": "application/json",
    }
    if key is not None:
        attributes["partitionkey"] = key
    return CloudEvent(attributes, data)


def sink_for(bootstrap: str, topic: str, **settings: object) -> KafkaSink:
    config = producer_config(bootstrap_servers=bootstrap, settings=settings)
    return KafkaSink(name="on_success[0]", config=config, topic=topic)


async def test_sink_produces_binary_cloudevents_keyed_and_in_order(tansu: Tansu) -> None:
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("results"), 4)
    sink = sink_for(tansu.bootstrap, topic)
    await sink.connect()
    try:
        await sink.emit([result(i, f"k{i % 5}") for i in range(200)])
        await sink.emit([result(999, None)])
    finally:
        await sink.close()
    records = await asyncio.to_thread(tansu.read, topic, 4, 201, 30)
    assert len(records) == 201
    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    order: dict[bytes | None, list[int]] = defaultdict(list)
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert record.header("ce_type") == "bridge.task.succeeded"
        assert record.header("content-type") == "application/json"
        assert record.value == b'{"ok":true}'
        partitions[record.key].add(record.partition)
        order[record.key].append(int((record.header("ce_id") or "r-0")[2:]))
    assert all(len(p) == 1 for key, p in partitions.items() if key is not None)
    for key, ids in order.items():
        assert ids == sorted(ids), key
    assert order[None] == [999]


async def test_refused_event_fails_itself_and_the_rest_of_its_key(tansu: Tansu) -> None:
    """``produce`` refuses a record above ``message.max.bytes``: that event is reported
    too large (the core sends a reduced copy), the later ones of its key failed (so the
    copy cannot be overtaken); other keys are delivered."""
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("results"), 2)
    sink = sink_for(tansu.bootstrap, topic, **{"message.max.bytes": 10_000})
    await sink.connect()
    try:
        events = [
            result(1, "a"),
            result(2, "a", b"x" * 20_000),
            result(3, "a"),
            result(4, "b"),
        ]
        with pytest.raises(PartialFailure) as failure:
            await sink.emit(events)
        assert failure.value.too_large_ids == {"r-2"}
        assert failure.value.failed_ids == {"r-3"}
        assert failure.value.retryable
    finally:
        await sink.close()
    records = await asyncio.to_thread(tansu.read, topic, 2, 2, 30)
    assert sorted(r.header("ce_id") or "" for r in records) == ["r-1", "r-4"]


@pytest.mark.timeout(60)
async def test_unreachable_broker_fails_the_whole_emit() -> None:
    sink = sink_for(f"127.0.0.1:{free_port()}", "nowhere", **{"message.timeout.ms": 1000})
    await sink.connect()
    try:
        with pytest.raises(SinkError) as failure:
            await sink.emit([result(1, "a"), result(2, "b")])
        assert not isinstance(failure.value, PartialFailure)
        assert failure.value.retryable
    finally:
        await sink.close(timeout=0)
