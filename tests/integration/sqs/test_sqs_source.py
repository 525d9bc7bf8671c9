"""The SQS source and the EventBridge sink in-process, against the moto server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from connectors.sqs.client import AwsEndpoint
from connectors.sqs.source import SQSSource
from consumer_core.contracts import Delivery
from consumer_core.errors import FatalClientError, PartialFailure
from consumer_core.events import CloudEvent, reduced
from sinks.eventbridge import EventBridgeSink

pytestmark = pytest.mark.sqs


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch, moto_server: Any) -> None:
    for name, value in moto_server.env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def open_source(aws: Any) -> AsyncIterator[Callable[..., Any]]:
    sources: list[SQSSource] = []

    async def make(url: str, **options: Any) -> SQSSource:
        source = SQSSource(
            pipeline="t",
            queue_url=url,
            endpoint=AwsEndpoint(endpoint_url=aws.server.url),
            **{"wait_time": 1.0, **options},
        )
        sources.append(source)
        await source.connect()
        source.window_changed(10)
        return source

    yield make
    for source in sources:
        await source.close()


async def take(source: SQSSource, count: int, timeout: float = 10.0) -> Sequence[Delivery]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    taken: list[Delivery] = []
    while len(taken) < count and loop.time() < deadline:
        taken.extend(await source.receive(count - len(taken), 0.25))
    return taken


async def test_nack_hands_the_message_back_and_ack_deletes_it(aws, open_source) -> None:
    url = await aws.create_queue("settle")
    (message_id,) = await aws.send(url, [{"MessageBody": '{"n": 1}'}])
    source = await open_source(url)

    (first,) = await take(source, 1)
    assert first.event_id == message_id
    assert first.event.get_attributes()["source"] == await aws.queue_arn(url)
    await first.nack()
    (again,) = await take(source, 1)
    assert again.event_id == message_id
    assert again.attributes["aws.sqs.receive_count"] == 2
    await again.ack()

    assert await aws.wait_empty(url, timeout=5) == 0
    assert await source.receive(10, 0.5) == []


async def test_nack_with_delay_keeps_the_message_away_that_long(aws, open_source) -> None:
    url = await aws.create_queue("delay")
    await aws.send(url, [{"MessageBody": "x"}])
    source = await open_source(url)
    (first,) = await take(source, 1)
    await first.nack(delay=2.0)
    assert await take(source, 1, timeout=1.0) == []
    (again,) = await take(source, 1, timeout=5.0)
    assert again.event_id == first.event_id
    await again.ack()


async def test_missing_queue_stops_the_source_for_good(aws, open_source) -> None:
    source = await open_source(aws.server.url + "/123456789012/no-such-queue")
    with pytest.raises(FatalClientError, match=r"NonExistentQueue|QueueDoesNotExist"):
        await source.receive(10, 0.25)


async def test_pause_hands_back_what_the_core_did_not_take(aws, open_source) -> None:
    url = await aws.create_queue("pause")
    await aws.send(url, [{"MessageBody": str(n)} for n in range(5)])
    source = await open_source(url)
    (one,) = await take(source, 1)
    await asyncio.sleep(0.5)  # the receiver buffered the other four
    await source.pause()
    await asyncio.sleep(0.3)
    others = await aws.collect(url, 4, timeout=5)  # visible again at once
    assert len(others) == 4
    await one.ack()
    await source.resume()
    assert await take(source, 1, timeout=1.5) == []


async def test_lag_counts_waiting_and_in_flight_messages(aws, open_source) -> None:
    url = await aws.create_queue("lag")
    await aws.send(url, [{"MessageBody": str(n)} for n in range(3)])
    source = await open_source(url)
    assert source.lag() == {url.rsplit("/", 1)[-1]: 3}


async def test_eventbridge_sink_reports_an_event_over_256_kib_and_takes_its_copy(aws) -> None:
    bus, target = await aws.bus_to_queue("big")
    sink = EventBridgeSink(
        name="t", event_bus_name=bus, endpoint=AwsEndpoint(endpoint_url=aws.server.url)
    )
    base = {
        "specversion": "1.0",
        "source": "/bridge/pipelines/t",
        "type": "bridge.task.succeeded",
        "subject": "orig",
    }
    big = CloudEvent({**base, "id": "big"}, json.dumps({"blob": "x" * 300_000}).encode())
    small = CloudEvent({**base, "id": "small"}, b'{"ok": true}')
    await sink.connect()
    try:
        with pytest.raises(PartialFailure) as caught:
            await sink.emit([big, small])
        assert caught.value.too_large_ids == {"big"}
        assert caught.value.failed_ids == frozenset()
        (arrived,) = await aws.collect(target, 1, timeout=5)
        assert json.loads(arrived["Body"])["detail"]["id"] == "small"
        await sink.emit([reduced(big)])  # what the core sends next
    finally:
        await sink.close()
    (arrived,) = await aws.collect(target, 1, timeout=5)
    detail = json.loads(arrived["Body"])["detail"]
    assert detail["id"] == "big"
    assert detail["dataref"] == "/v1/tasks/t:orig"
    assert detail["dataomitted"] > 300_000
    assert "data" not in detail
