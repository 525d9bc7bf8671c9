"""Reading messages again by offset, for tenants that spill by reference.

While an isolated tenant spills, the source hands its messages to the core undecoded,
as references (``topic/partition/offset``); the core stores the references (not the
messages) and the source commits past them. When the tenant's lane has room, the core
asks for them back: ``Rereader.fetch`` reads them with a second consumer that belongs
to no group (``assign``, never ``subscribe``, never commits), from the lowest wanted
offset of each partition up to the highest, keeping the wanted records and skipping
the rest (other tenants' messages, already processed).

A wanted offset the partition no longer has (retention deleted its segment, or
compaction removed the record) is reported missing: the consumer starts at the
earliest offset there is (``auto.offset.reset=earliest``), so the first record it gets
lies past it. A broker that answers a fetch past a partition's end with no error (tansu
does, after a topic was re-created) gives no such sign: there, a partition that sent
nothing for ``QUIET`` seconds and whose end (as last fetched) is at or below a wanted
offset has lost that offset. Spilling by reference therefore needs the topic's
retention to outlast the tenant's backlog; see docs/isolation.md.

All calls on the consumer run on one dedicated thread, like ``ConsumerClient``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, Message
from confluent_kafka import TopicPartition as _TP

from connectors.kafka.client import TopicPartition
from connectors.kafka.errors import map_kafka_errors
from consumer_core.errors import NotConnected

__all__ = ["Rereader", "parse_reference", "reference"]

FETCH_TIMEOUT: Final = 10.0
"""Seconds a fetch may take before it gives up (the core tries again later)."""
QUIET: Final = 5.0
"""Seconds without a record from a partition after which its end is looked at: wanted
offsets at or past it are gone (the partition was truncated or the topic re-created)."""
BATCH: Final = 1000

_DROPPED_SETTINGS: Final = frozenset(
    {
        "group.id",
        "group.instance.id",
        "partition.assignment.strategy",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "enable.partition.eof",
        "error_cb",
        "logger",
    }
)


def reference(topic: str, partition: int, offset: int) -> str:
    """A record's reference (Kafka topic names cannot contain ``/``)."""
    return f"{topic}/{partition}/{offset}"


def parse_reference(ref: str) -> tuple[TopicPartition, int]:
    topic, partition, offset = ref.rsplit("/", 2)
    return (topic, int(partition)), int(offset)


class Rereader:
    """A group-less consumer that fetches records by offset (see the module docstring)."""

    def __init__(self, config: Mapping[str, Any], *, name: str) -> None:
        settings = {k: v for k, v in config.items() if k not in _DROPPED_SETTINGS}
        settings.update(
            {
                # librdkafka wants a group id even for a consumer that only assigns;
                # this one never joins it and never commits.
                "group.id": f"{config.get('group.id', 'bridge')}.reread",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 10,
            }
        )
        self._settings = settings
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-reread-{name}")
        self._consumer: Consumer | None = None

    async def fetch(
        self, wanted: Sequence[tuple[TopicPartition, int]]
    ) -> dict[tuple[TopicPartition, int], Message[Any, Any]]:
        """The records at ``wanted`` that the partitions still have. Raises
        ``NotConnected`` when they could not all be read within ``FETCH_TIMEOUT``."""
        loop = asyncio.get_running_loop()
        found: dict[tuple[TopicPartition, int], Message[Any, Any]] = await loop.run_in_executor(
            self._executor, self._fetch, list(wanted)
        )
        return found

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    def _fetch(
        self, wanted: list[tuple[TopicPartition, int]]
    ) -> dict[tuple[TopicPartition, int], Message[Any, Any]]:
        if self._consumer is None:
            with map_kafka_errors("creating the Kafka re-reading consumer"):
                self._consumer = Consumer(self._settings)
        consumer = self._consumer
        by_partition: dict[TopicPartition, set[int]] = defaultdict(set)
        for tp, offset in wanted:
            by_partition[tp].add(offset)
        remaining = {tp: deque(sorted(offsets)) for tp, offsets in by_partition.items()}
        found: dict[tuple[TopicPartition, int], Message[Any, Any]] = {}
        with map_kafka_errors("re-reading spilled messages"):
            consumer.assign([_TP(t, p, o[0]) for (t, p), o in remaining.items()])
        started = time.monotonic()
        heard = dict.fromkeys(remaining, started)  # last record (or end) per partition
        try:
            while remaining:
                now = time.monotonic()
                if now > started + FETCH_TIMEOUT:
                    raise NotConnected(
                        f"re-reading {sum(map(len, remaining.values()))} spilled messages "
                        f"from {sorted(remaining)} took over {FETCH_TIMEOUT:.0f}s"
                    )
                with map_kafka_errors("re-reading spilled messages"):
                    messages = consumer.consume(BATCH, 0) or consumer.consume(1, 0.1)
                for message in messages:
                    source = _collect(message, remaining, found)
                    if source is not None:
                        heard[source] = now
                for quiet in [tp for tp in remaining if now - heard[tp] > QUIET]:
                    heard[quiet] = now
                    _past_the_end(consumer, quiet, remaining)
        finally:
            with map_kafka_errors("re-reading spilled messages"):
                consumer.unassign()
        return found


def _past_the_end(
    consumer: Consumer, tp: TopicPartition, remaining: dict[TopicPartition, deque[int]]
) -> None:
    """Drop the wanted offsets of ``tp`` at or past its end, as last fetched.

    A referenced record was below the end when it was read, and a partition's end only
    moves back when it is truncated or its topic is re-created, so those records are
    gone. Brokers that answer a fetch past the end with an out-of-range error make the
    consumer start over at the earliest offset and report the end (``_collect``); others
    (tansu) answer with nothing, and only the fetched end tells."""
    _low, high = consumer.get_watermark_offsets(_TP(*tp), cached=True)
    offsets = remaining[tp]
    if high is not None and high >= 0 and offsets and offsets[0] >= high:
        del remaining[tp]


def _collect(
    message: Message[Any, Any],
    remaining: dict[TopicPartition, deque[int]],
    found: dict[tuple[TopicPartition, int], Message[Any, Any]],
) -> TopicPartition | None:
    """Keep ``message`` if it is wanted; drop the wanted offsets it shows are gone.
    Returns the partition it came from when that is still being read."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None:
        return None
    tp = (topic, partition)
    offsets = remaining.get(tp)
    if offsets is None:
        return None
    error = message.error()
    if error is not None:
        if error.code() == KafkaError._PARTITION_EOF:
            del remaining[tp]  # nothing more to read: what is still wanted is not there
        return None
    if offset is None:
        return tp
    while offsets and offsets[0] < offset:
        offsets.popleft()  # the partition skipped it: gone
    if offsets and offsets[0] == offset:
        found[(tp, offset)] = message
        offsets.popleft()
    if not offsets:
        del remaining[tp]
    return tp
