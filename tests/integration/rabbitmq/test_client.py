"""The RabbitMQ source and sink in-process, against the real broker (own vhost each)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pika
import pytest

from connectors.rabbitmq import RabbitMQSource
from connectors.rabbitmq.headers import read_cloudevent
from consumer_core.errors import FatalClientError, NotConnected, SinkError
from consumer_core.events import CloudEvent
from sinks.rabbitmq import RabbitMQSink
from tests.integration.rabbitmq.conftest import Broker
from tests.support.net import free_port

pytestmark = pytest.mark.rabbitmq


def plain(n: int, start: int = 0) -> list[tuple[bytes, pika.BasicProperties]]:
    return [
        (f"body {i}".encode(), pika.BasicProperties(message_id=f"m{i}", headers={"x-key": "k"}))
        for i in range(start, start + n)
    ]


async def eventually(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll a blocking ``check`` in a thread until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def receive_all(source: RabbitMQSource, n: int, timeout: float = 10.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        got += await source.receive(n - len(got), 0.2)
    return got


async def receive_until_lost(source: RabbitMQSource) -> None:
    for _ in range(50):
        await source.receive(10, 0.1)


@pytest.fixture
def broker(module_broker: Broker) -> Broker:
    return module_broker


@pytest.fixture
def queue(names: Callable[[str], str]) -> str:
    return names("in")


@pytest.fixture
async def source_factory(
    broker: Broker, queue: str
) -> AsyncIterator[Callable[..., RabbitMQSource]]:
    made: list[RabbitMQSource] = []

    def make(**kwargs: Any) -> RabbitMQSource:
        options: dict[str, Any] = {"pipeline": "t", "queue": queue, "url": broker.url}
        source = RabbitMQSource(**{**options, **kwargs})
        made.append(source)
        return source

    yield make
    for source in made:
        await source.close()


async def test_missing_queue_without_declare_is_fatal(
    source_factory: Callable[..., RabbitMQSource],
) -> None:
    with pytest.raises(FatalClientError, match="NOT_FOUND"):
        await source_factory().connect()


async def test_bad_credentials_are_fatal_and_no_broker_is_not_connected(
    broker: Broker, queue: str
) -> None:
    wrong = broker.url.replace("guest:guest", "guest:wrong")
    with pytest.raises(FatalClientError):
        await RabbitMQSource(pipeline="t", queue=queue, url=wrong).connect()
    nowhere = f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F"
    with pytest.raises(NotConnected):
        await RabbitMQSource(pipeline="t", queue=queue, url=nowhere).connect()


async def test_declare_with_a_dead_letter_exchange_dead_letters_rejected_messages(
    broker: Broker,
    source_factory: Callable[..., RabbitMQSource],
    queue: str,
    names: Callable[[str], str],
) -> None:
    dlx, dead = names("dlx"), names("dead")
    source = source_factory(declare=True, dead_letter_exchange=dlx)
    await source.connect()
    await asyncio.to_thread(broker.bind, dead, dlx)
    await asyncio.to_thread(broker.publish, queue, plain(3))
    first, second, third = await receive_all(source, 3)
    await first.reject()
    await second.ack()
    await third.nack()
    assert await eventually(lambda: broker.depth(dead) == 1)
    (letter,) = await asyncio.to_thread(broker.drain, dead)
    assert letter.message_id == first.event_id
    assert letter.headers["x-death"][0]["queue"] == queue
    (again,) = await receive_all(source, 1)  # the nacked one is requeued at once
    assert again.event_id == third.event_id
    assert again.attributes["messaging.rabbitmq.redelivered"] is True


async def test_settling_a_delivery_from_a_closed_channel_is_a_no_op_and_it_comes_back(
    broker: Broker, source_factory: Callable[..., RabbitMQSource], queue: str
) -> None:
    source = source_factory(declare=True)
    await source.connect()
    source.window_changed(100)
    await asyncio.to_thread(broker.publish, queue, plain(5))
    old = await receive_all(source, 5)
    await asyncio.to_thread(broker.close_all_connections)
    with pytest.raises(NotConnected, match="CONNECTION_FORCED"):
        await receive_until_lost(source)
    for delivery in old:  # tags of a dead channel: must not reach the new one
        await delivery.ack()
    await source.connect()
    again = await receive_all(source, 5)
    assert sorted(d.event_id for d in again) == sorted(d.event_id for d in old)
    assert all(d.attributes["messaging.rabbitmq.redelivered"] for d in again)
    for delivery in again:
        await delivery.ack()
    assert await eventually(lambda: broker.counts(queue) == (0, 1))


async def test_a_reject_on_a_closed_channel_rejects_the_redelivered_copy(
    broker: Broker,
    source_factory: Callable[..., RabbitMQSource],
    queue: str,
    names: Callable[[str], str],
) -> None:
    dlx, dead = names("dlx"), names("dead")
    source = source_factory(declare=True, dead_letter_exchange=dlx)
    await source.connect()
    await asyncio.to_thread(broker.bind, dead, dlx)
    await asyncio.to_thread(broker.publish, queue, plain(1))
    (old,) = await receive_all(source, 1)
    await asyncio.to_thread(broker.close_all_connections)
    await asyncio.sleep(0.3)
    await old.reject()  # the failure result reached on_failure, but the channel is gone
    await source.connect()
    (copy,) = await receive_all(source, 1)
    await copy.ack()  # what the core does with a redelivered copy of a finished task
    assert await eventually(lambda: broker.depth(dead) == 1)
    assert await asyncio.to_thread(broker.counts, queue) == (0, 1)


async def test_coalesced_acks_settle_exactly_the_acked_messages(
    broker: Broker, source_factory: Callable[..., RabbitMQSource], queue: str
) -> None:
    source = source_factory(declare=True, prefetch_max=1000)
    await source.connect()
    source.window_changed(1000)
    await asyncio.to_thread(broker.publish, queue, plain(400))
    deliveries = await receive_all(source, 400)
    kept = set(random.Random(7).sample(range(400), 37))
    order = list(range(400))
    random.Random(8).shuffle(order)
    for i in order:
        if i not in kept:
            await deliveries[i].ack()
    await asyncio.sleep(0.1)
    await source.close()  # the kept ones were never acked: the broker requeues them
    assert await eventually(lambda: broker.depth(queue) == len(kept))
    back = await asyncio.to_thread(broker.drain, queue)
    assert {m.message_id for m in back} == {deliveries[i].event_id for i in kept}


async def test_prefetch_follows_the_window_within_prefetch_max(
    broker: Broker, source_factory: Callable[..., RabbitMQSource], queue: str
) -> None:
    source = source_factory(declare=True, prefetch_max=30)
    await source.connect()
    source.window_changed(5)
    await asyncio.to_thread(broker.publish, queue, plain(100))
    held = await receive_all(source, 100, timeout=1.0)
    assert len(held) == 5  # nothing acked: the broker stops at the prefetch
    source.window_changed(20)
    held += await receive_all(source, 100, timeout=1.0)
    assert len(held) == 20
    source.window_changed(500)  # capped by prefetch_max
    held += await receive_all(source, 100, timeout=1.0)
    assert len(held) == 30
    assert await asyncio.to_thread(broker.depth, queue) == 70


async def test_pause_cancels_the_consumer_keeps_what_we_hold_and_resume_goes_on(
    broker: Broker, source_factory: Callable[..., RabbitMQSource], queue: str
) -> None:
    source = source_factory(declare=True, lag_interval=0.1)
    await source.connect()
    source.window_changed(10)
    await asyncio.to_thread(broker.publish, queue, plain(30))
    held = await receive_all(source, 10)
    await source.pause()
    assert await eventually(lambda: broker.counts(queue) == (20, 0))
    assert await eventually(lambda: source.lag() == {queue: 20})
    for delivery in held:
        await delivery.ack()
    await source.resume()
    rest = 0
    deadline = time.monotonic() + 10
    while rest < 20 and time.monotonic() < deadline:
        for delivery in await source.receive(20, 0.2):
            await delivery.ack()
            rest += 1
    assert rest == 20
    assert await eventually(lambda: source.lag() == {queue: 0})


async def test_a_consumer_cancelled_by_the_broker_is_a_lost_connection(
    broker: Broker, source_factory: Callable[..., RabbitMQSource], queue: str
) -> None:
    source = source_factory(declare=True)
    await source.connect()
    await asyncio.to_thread(broker.delete_queue, queue)
    with pytest.raises(NotConnected, match="cancelled by the broker"):
        await receive_until_lost(source)
    await source.connect()  # declare: true declares it again
    assert await eventually(lambda: broker.counts(queue) == (0, 1))


# ------------------------------------------------------------------ sink


def result(i: int, key: str = "k") -> CloudEvent:
    attributes = {
        "id": f"r{i}",
        "source": "/bridge/pipelines/t",
        "type": "bridge.task.succeeded",
        "subject": f"m{i}",
        "partitionkey": key,
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, f'{{"i": {i}}}'.encode())


async def test_the_sink_publishes_binary_cloudevents_and_returns_after_the_confirms(
    broker: Broker, names: Callable[[str], str]
) -> None:
    exchange, out = names("results"), names("out")
    await asyncio.to_thread(broker.declare_exchange, exchange)
    await asyncio.to_thread(broker.bind, out, exchange, "ok")
    sink = RabbitMQSink(name="s", url=broker.url, exchange=exchange, routing_key="ok")
    await sink.connect()
    try:
        await sink.emit([result(i) for i in range(300)])
        assert await asyncio.to_thread(broker.depth, out) == 300  # confirmed = enqueued
    finally:
        await sink.close()
    messages = await asyncio.to_thread(broker.drain, out)
    assert [m.message_id for m in messages] == [f"r{i}" for i in range(300)]
    first = messages[0]
    assert first.content_type == "application/json"
    assert first.headers["ce-subject"] == "m0"
    assert first.headers["ce-type"] == "bridge.task.succeeded"
    event = read_cloudevent(first.headers, first.content_type, first.body)
    assert event is not None
    assert event.get_data() == b'{"i": 0}'


async def test_the_sink_fails_unroutable_results_instead_of_losing_them(
    broker: Broker, names: Callable[[str], str]
) -> None:
    exchange = names("nowhere")
    await asyncio.to_thread(broker.declare_exchange, exchange)
    sink = RabbitMQSink(name="s", url=broker.url, exchange=exchange, routing_key="none")
    try:
        with pytest.raises(SinkError, match="NO_ROUTE"):
            await sink.emit([result(1), result(2)])
    finally:
        await sink.close()


async def test_the_sink_reconnects_after_its_connection_was_closed(
    broker: Broker, names: Callable[[str], str]
) -> None:
    out = names("out")
    await asyncio.to_thread(broker.declare_queue, out)
    sink = RabbitMQSink(name="s", url=broker.url, exchange="", routing_key=out)
    await sink.connect()
    try:
        await sink.emit([result(0)])
        await asyncio.to_thread(broker.close_all_connections)
        await asyncio.sleep(0.3)
        attempts = 0
        while True:  # what the core does: retry the emit with backoff
            attempts += 1
            try:
                await sink.emit([result(1), result(2)])
                break
            except SinkError:
                assert attempts < 20
                await asyncio.sleep(0.1)
    finally:
        await sink.close()
    ids = [m.message_id for m in await asyncio.to_thread(broker.drain, out)]
    assert ids == ["r0", "r1", "r2"]


async def test_a_missing_exchange_fails_the_emit_retryably(
    broker: Broker, names: Callable[[str], str]
) -> None:
    sink = RabbitMQSink(name="s", url=broker.url, exchange=names("absent"), routing_key="x")
    try:
        with pytest.raises(SinkError, match="NOT_FOUND") as caught:
            await sink.emit([result(1)])
        assert caught.value.retryable
    finally:
        await sink.close()
