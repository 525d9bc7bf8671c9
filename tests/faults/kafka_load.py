"""Load and result collection for the Kafka scenarios (tansu), all blocking: run in threads.

Messages are JSON ``{"i": n}`` keyed ``k{n % KEYS}``; the bridge wraps each one, so its
event id (and its results' ``subject``) is ``topic/partition/offset``, known once the
producer's delivery report arrived, which is when the message counts as accepted.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from tests.faults.harness import Collector, Feeder, Results
from tests.integration.kafka.tansu import Tansu

KEYS = 100


class KafkaFeed:
    """Produces to ``topic``; librdkafka buffers and retries through a broker restart
    (``message.timeout.ms`` bounds it).

    Across a broker restart tansu's acknowledgements are not reliable: a retried
    produce request may be acknowledged without an offset, or with the offset of
    another record. So ``finish`` reads the topic back: the accepted messages are
    exactly the records in it, and there must be as many as were produced (the broker
    neither lost nor duplicated any). ``misreported`` counts the acknowledgements that
    did not name their record's offset."""

    def __init__(self, tansu: Tansu, topic: str, partitions: int) -> None:
        self.tansu = tansu
        self.topic = topic
        self.partitions = partitions
        self.produced = 0
        self.misreported = 0
        self.producer = Producer(
            {
                "bootstrap.servers": tansu.bootstrap,
                "linger.ms": 5,
                # tansu (0.6) sometimes fails an idempotent producer with a fatal
                # OUT_OF_ORDER_SEQUENCE_NUMBER under load; plain acks=all is enough here
                # (``finish`` checks the topic holds exactly what was produced).
                "enable.idempotence": False,
                "acks": "all",
                "message.timeout.ms": 120_000,
                "log_level": 2,
            }
        )
        self._done: list[str] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def _report(self, error: Any, message: Any) -> None:
        if error is not None:
            self.errors.append(str(error))
            return
        offset = message.offset()
        if offset is not None and offset >= 0:
            with self._lock:
                self._done.append(f"{message.topic()}/{message.partition()}/{offset}")

    def _take(self) -> list[str]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def send(self, start: int, count: int) -> list[str]:
        for i in range(start, start + count):
            value = json.dumps({"i": i}).encode()
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        value=value,
                        key=f"k{i % KEYS}".encode(),
                        headers=[("content-type", b"application/json")],
                        on_delivery=self._report,
                    )
                    self.produced += 1
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.producer.poll(0)
        return self._take()

    def quiesce(self) -> list[str]:
        """Wait until every record produced so far was acknowledged (call with the
        feeder paused); return the ids acknowledged meanwhile."""
        left = self.producer.flush(30)
        assert left == 0, f"{left} messages not acknowledged after 30 s"
        return self._take()

    def finish(self, known: list[str]) -> list[str]:
        """Flush, read the topic back; return the accepted ids not in ``known`` yet."""
        left = self.producer.flush(150)
        assert left == 0, f"{left} messages never acknowledged by the broker"
        assert not self.errors, f"producing to {self.topic}: {self.errors[:3]}"
        reported = set(known) | set(self._take())
        records = self.tansu.read(self.topic, self.partitions, self.produced, timeout=60)
        stored = {f"{r.topic}/{r.partition}/{r.offset}" for r in records}
        assert len(stored) == self.produced, (
            f"{self.topic} holds {len(stored)} records, {self.produced} were acknowledged"
        )
        assert reported <= stored, f"acknowledged offsets not in {self.topic}"
        self.misreported = self.produced - len(reported)
        return sorted(stored - set(known))

    def feeder(self, *, total: int, rate: float) -> Feeder:
        feeder = Feeder(self.send, total=total, rate=rate, batch=25)
        feeder.finish = lambda: self.finish(feeder.ids())
        return feeder


def bridge_config(
    tansu: Tansu,
    *,
    name: str,
    topic: str,
    group: str,
    function_url: str,
    on_success: str,
    on_failure: str,
    settings: dict[str, Any],
) -> str:
    """One Kafka pipeline; the sinks are given as YAML flow mappings."""
    return f"""version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
shutdown_timeout: 10s
pipelines:
  - name: {name}
    source:
      type: kafka
      bootstrap_servers: "{tansu.bootstrap}"
      topics: [{topic}]
      group_id: {group}
      settings: {json.dumps(settings)}
      commit_interval: 250ms
    ordering: key
    target:
      url: "{function_url}"
      timeout: 10s
    concurrency: {{initial: 16, min: 1, max: 16}}
    retry: {{max_attempts: 5, initial_backoff: 50ms, max_backoff: 1s}}
    on_success:
      - {on_success}
    on_failure:
      - {on_failure}
"""


def kafka_sink(tansu: Tansu, topic: str) -> str:
    return f'{{type: kafka, bootstrap_servers: "{tansu.bootstrap}", topic: {topic}}}'


def collect_results(tansu: Tansu, topics: dict[str, int], results: Results) -> Collector:
    """A thread reading every result topic (name -> partitions) from the start into
    ``results``: subject from ``ce_subject``, failure kind from the JSON data."""
    consumer = Consumer(
        {
            "bootstrap.servers": tansu.bootstrap,
            "group.id": Tansu.unique("fault-reader"),
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 20,
            "log_level": 2,
        }
    )
    consumer.assign(
        [
            TopicPartition(topic, p, OFFSET_BEGINNING)
            for topic, count in topics.items()
            for p in range(count)
        ]
    )

    def poll() -> None:
        for message in consumer.consume(1000, 0.2):
            if message.error() is not None:
                continue
            raw: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]
            headers = {k: v.decode() for k, v in raw if v is not None}
            subject = headers.get("ce_subject", "")
            event_type = headers.get("ce_type", "")
            data = None
            if event_type != "bridge.task.succeeded":
                data = json.loads(message.value() or b"null")
            results.add(subject, event_type, data)

    return Collector(poll, consumer.close)
