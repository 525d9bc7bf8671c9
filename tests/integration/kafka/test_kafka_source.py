"""``KafkaSource`` bookkeeping on the loop side, with the consumer thread replaced by a
fake: commits, backpressure, revoke grace, zombies. No broker needed."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import Message

from connectors.kafka import source as source_module
from connectors.kafka.source import KafkaDelivery, KafkaSource, consumer_config

pytestmark = pytest.mark.kafka

T = "orders"


class FakeClient:
    """Stands in for ``ConsumerClient``: hands out queued messages, records calls."""

    def __init__(self) -> None:
        self.queue: list[Message[Any, Any]] = []
        self.commits: list[dict[tuple[str, int], int]] = []
        self.paused: list[tuple[str, int]] = []
        self.resumed: list[tuple[str, int]] = []
        self.high_watermarks: Mapping[tuple[str, int], int] = {}

    async def consume(self, max_messages: int, timeout: float) -> list[Message[Any, Any]]:
        taken, self.queue = self.queue[:max_messages], self.queue[max_messages:]
        return taken

    async def commit(
        self, offsets: Mapping[tuple[str, int], int], generations: Any = None
    ) -> dict[tuple[str, int], int]:
        self.commits.append(dict(offsets))
        return dict(offsets)

    def pause_nowait(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.paused.extend(partitions)

    def resume_nowait(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.resumed.extend(partitions)


def make_source(**kwargs: Any) -> tuple[KafkaSource, FakeClient]:
    config = consumer_config(
        bootstrap_servers="127.0.0.1:1", group_id="g", client_id="c", settings={}
    )
    source = KafkaSource(pipeline="p", config=config, topics=[T], **kwargs)
    fake = FakeClient()
    source.client = fake  # type: ignore[assignment]
    return source, fake


def messages(partition: int, offsets: Sequence[int], key: bytes | None = b"k") -> list[Any]:
    return [Message(topic=T, partition=partition, offset=o, key=key, value=b"{}") for o in offsets]


async def take(source: KafkaSource, fake: FakeClient, partition: int, offsets: Sequence[int]):
    fake.queue.extend(messages(partition, offsets))
    got = await source.receive(1000, 0)
    assert all(isinstance(d, KafkaDelivery) for d in got)
    return got


def test_our_commit_settings_win_over_the_users():
    config = consumer_config(
        bootstrap_servers="b:9092",
        group_id="g",
        client_id="c",
        settings={
            "enable.auto.commit": True,
            "enable.auto.offset.store": True,
            "fetch.queue.backoff.ms": 5,
            "security.protocol": "SASL_SSL",
        },
    )
    assert config["enable.auto.commit"] is False
    assert config["enable.auto.offset.store"] is False
    assert config["fetch.queue.backoff.ms"] == 5
    assert config["security.protocol"] == "SASL_SSL"
    default = consumer_config(bootstrap_servers="b", group_id="g", client_id="c", settings={})
    assert default["fetch.queue.backoff.ms"] == 20
    assert default["auto.offset.reset"] == "earliest"


async def test_commit_stops_at_the_first_unfinished_offset():
    source, fake = make_source()
    source.on_assigned([(T, 0)], {(T, 0): 10})
    d = await take(source, fake, 0, [10, 11, 12, 14])  # 13 compacted away
    assert [x.event_id for x in d] == [f"{T}/0/10", f"{T}/0/11", f"{T}/0/12", f"{T}/0/14"]
    assert [x.partition for x in d] == [f"{T}/0"] * 4
    await d[1].ack()
    await d[2].ack()
    await source.commit()
    assert fake.commits == []  # 10 is not done: nothing beyond what is committed
    await d[0].ack()
    await d[3].nack()  # Kafka cannot redeliver one message: the offset stays open
    await source.commit()
    assert fake.commits == [{(T, 0): 14}]
    await source.commit()
    assert len(fake.commits) == 1  # unchanged offsets are not committed again


async def test_partition_pauses_at_its_buffer_and_resumes_below_half():
    source, fake = make_source(partition_buffer=4)
    source.on_assigned([(T, 0), (T, 1)], {})
    d = await take(source, fake, 0, range(4))
    await take(source, fake, 1, range(2))
    assert fake.paused == [(T, 0)]
    await d[0].ack()
    await d[1].ack()
    assert fake.resumed == []  # 2 outstanding: not below half of 4
    await d[2].ack()
    assert fake.resumed == [(T, 0)]


async def test_unset_partition_buffer_follows_the_cores_window():
    source, fake = make_source()
    source.on_assigned([(T, 0)], {})
    source.window_changed(64)  # one event per call: the least buffer still holds
    assert source.partition_buffer == 1000
    source.window_changed(6400)  # 64 batches of 100 in flight
    d = await take(source, fake, 0, range(1000))
    assert fake.paused == []  # 1,000 taken: a fixed buffer of 1,000 would pause here
    fake.queue.extend(messages(0, range(1000, 6400)))
    while fake.queue:
        d += await source.receive(1000, 0)
    assert len(d) == 6400
    assert fake.paused == [(T, 0)]
    source.window_changed(100)  # the window shrank: back to the least
    for delivery in d[:5900]:
        await delivery.ack()
    assert fake.resumed == []  # 500 outstanding: not below half of 1,000
    await d[5900].ack()
    assert fake.resumed == [(T, 0)]


def test_from_config_without_partition_buffer_follows_the_window():
    spec = SimpleNamespace(
        options={"bootstrap_servers": "127.0.0.1:1", "topics": [T], "group_id": "g"}
    )
    source = KafkaSource.from_config("p", spec, None)  # type: ignore[arg-type]
    source.window_changed(6400)
    assert (source.partition_buffer, source.resume_below) == (6400, 3200)
    spec.options["partition_buffer"] = 300
    pinned = KafkaSource.from_config("p", spec, None)  # type: ignore[arg-type]
    pinned.window_changed(6400)
    assert pinned.partition_buffer == 300


async def test_keepalive_polls_take_one_message_once_a_batch_waits(monkeypatch):
    """While the core does not ask, the keep-alive poll keeps the member in its group; it
    takes a batch, then one message per poll, however large ``partition_buffer`` is."""
    monkeypatch.setattr(source_module, "KEEPALIVE", 0.01)
    source, fake = make_source(partition_buffer=100_000)
    source.on_assigned([(T, 0)], {})
    fake.queue.extend(messages(0, range(5000)))
    asked: list[int] = []
    six_polls = asyncio.Event()
    consume = fake.consume

    async def counted(max_messages: int, timeout: float) -> list[Message[Any, Any]]:
        asked.append(max_messages)
        if len(asked) == 6:
            six_polls.set()
        return await consume(max_messages, timeout)

    fake.consume = counted  # type: ignore[method-assign]
    loop = asyncio.create_task(source._keepalive_loop())
    try:
        await asyncio.wait_for(six_polls.wait(), 5)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert asked == [500, 1, 1, 1, 1, 1]  # one batch, then one message per poll
    assert len(source._released) == 505
    got = await source.receive(1000, 0)  # the core takes them, in order, then more
    assert [d.event_id for d in got[:3]] == [f"{T}/0/0", f"{T}/0/1", f"{T}/0/2"]
    assert len(got) == 1000


async def test_a_set_partition_buffer_ignores_the_window():
    source, fake = make_source(partition_buffer=4)
    source.on_assigned([(T, 0)], {})
    source.window_changed(6400)
    await take(source, fake, 0, range(4))
    assert fake.paused == [(T, 0)]


async def test_revoke_drops_queued_work_and_commits_what_finished_in_the_grace():
    source, fake = make_source(revoke_grace=5.0)
    source.on_assigned([(T, 0)], {(T, 0): 0})
    queued, running, finished = await take(source, fake, 0, [0, 1, 2])
    await finished.ack()

    async def core() -> None:
        await asyncio.sleep(0.05)
        assert queued.revoked  # the core's dispatch check drops it...
        await running.ack()  # ...and the running one finishes within the grace

    loop = asyncio.get_running_loop()
    started = loop.time()
    offsets, _ = await asyncio.gather(source.on_revoking([(T, 0)]), core())
    assert loop.time() - started < 1.0  # did not wait for the whole grace
    assert offsets == {}  # offset 0 was dropped unfinished: nothing to commit
    assert source.lag() == {}


async def test_late_acks_of_a_revoked_partition_are_ignored():
    source, fake = make_source(revoke_grace=0.05)
    source.on_assigned([(T, 0)], {(T, 0): 0})
    (slow,) = await take(source, fake, 0, [0])
    assert await source.on_revoking([(T, 0)]) == {}
    source.on_assigned([(T, 0)], {})
    await slow.ack()  # the lost assignment's message finishes late
    await source.commit()
    assert fake.commits == []


async def test_redelivered_messages_wait_for_zombies_of_the_last_assignment():
    """A message still in the core after the grace must not be joined by its own
    redelivery (the core would drop both): the partition's new messages are held
    until the old delivery settled or was dropped, then handed over in order."""
    source, fake = make_source(revoke_grace=0.05)
    source.on_assigned([(T, 0)], {(T, 0): 0})
    (zombie, done) = await take(source, fake, 0, [0, 1])
    await done.ack()
    assert await source.on_revoking([(T, 0)]) == {}  # 0 still running: commit nothing
    source.on_assigned([(T, 0)], {(T, 0): 0})
    assert await take(source, fake, 0, [0, 1, 2]) == []  # held
    assert zombie.revoked  # the core drops it when its retry falls due
    again = await source.receive(1000, 0)
    assert [d.event_id for d in again] == [f"{T}/0/0", f"{T}/0/1", f"{T}/0/2"]
    for d in again:
        await d.ack()
    await source.commit()
    assert fake.commits == [{(T, 0): 3}]


async def test_a_consumer_that_goes_back_starts_a_new_epoch():
    source, fake = make_source()
    source.on_assigned([(T, 0)], {(T, 0): 5})
    (first,) = await take(source, fake, 0, [5])
    # An offset reset rewound the partition: its messages wait until the old epoch's
    # delivery left the core, like after a rebalance.
    assert await take(source, fake, 0, [3]) == []
    await first.ack()  # from the abandoned epoch: ignored, but releases the held one
    (again,) = await source.receive(10, 0)
    assert again.event_id == f"{T}/0/3"
    await source.commit()
    assert fake.commits == []  # 3 is below what the group committed: never rewind it
    await again.ack()
    await source.commit()
    assert fake.commits == []
    (later,) = await take(source, fake, 0, [4, 5, 6][2:])
    await later.ack()
    await source.commit()
    assert fake.commits == [{(T, 0): 7}]


async def test_lag_is_high_watermark_minus_committed():
    source, fake = make_source()
    source.on_assigned([(T, 0), (T, 1)], {(T, 0): 100})
    fake.high_watermarks = {(T, 0): 150, (T, 1): 7}
    assert source.lag() == {f"{T}/0": 50}  # partition 1: nothing committed or taken yet
    d = await take(source, fake, 1, [0, 1])
    assert source.lag() == {f"{T}/0": 50, f"{T}/1": 7}
    for x in d:
        await x.ack()
    await source.commit()
    assert source.lag() == {f"{T}/0": 50, f"{T}/1": 5}
