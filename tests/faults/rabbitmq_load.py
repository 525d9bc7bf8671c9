"""Load and result collection for the RabbitMQ scenarios, all blocking: run in threads.

Message ``n`` has ``message_id`` ``m{n}`` (the bridge's event id for a plain message),
header ``x-key: k{n % KEYS}`` (the ordering key) and a JSON body. It counts as
accepted once the broker confirmed it (publisher confirms). Results come back through
the bridge's RabbitMQ sinks: exchange ``results``, routing keys ``ok`` and ``failed``,
each bound to a queue of that name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pika

from tests.faults.harness import Collector, Feeder, Results
from tests.integration.rabbitmq.conftest import Broker

KEYS = 100
QUEUE = "work"
RESULTS = "results"
DEAD = "dead"

Message = tuple[bytes, pika.BasicProperties]


def plain(n: int) -> Message:
    key = f"k{n % KEYS}"
    body = json.dumps({"i": n, "key": key}).encode()
    properties = pika.BasicProperties(
        content_type="application/json",
        message_id=f"m{n}",
        headers={"x-key": key},
        delivery_mode=2,
    )
    return body, properties


def prepare(broker: Broker) -> None:
    """The work queue (dead-lettering to ``dead``) and the result queues."""
    broker.declare_exchange(DEAD, "fanout")
    broker.bind(DEAD, DEAD)
    broker.declare_queue(QUEUE, {"x-dead-letter-exchange": DEAD})
    broker.declare_exchange(RESULTS)
    broker.bind("ok", RESULTS, "ok")
    broker.bind("failed", RESULTS, "failed")


def bridge_config(
    broker: Broker,
    function_url: str,
    *,
    name: str,
    concurrency: str,
    shutdown_timeout: str = "10s",
    schema: str | None = None,
) -> str:
    schema_line = f"\n    schema: {schema}" if schema else ""
    return f"""
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
shutdown_timeout: {shutdown_timeout}
pipelines:
  - name: {name}
    source:
      type: rabbitmq
      url: "{broker.url}"
      queue: {QUEUE}
      key_header: x-key
      dead_letter_exchange: {DEAD}
    ordering: key{schema_line}
    target:
      url: "{function_url}"
      timeout: 10s
    concurrency: {concurrency}
    retry: {{max_attempts: 5, initial_backoff: 50ms, max_backoff: 500ms}}
    on_success:
      - {{type: rabbitmq, url: "{broker.url}", exchange: {RESULTS}, routing_key: ok}}
    on_failure:
      - {{type: rabbitmq, url: "{broker.url}", exchange: {RESULTS}, routing_key: failed}}
"""


class RabbitFeed:
    """Publishes with publisher confirms on a connection of the feeder thread's own."""

    def __init__(self, broker: Broker, message: Callable[[int], Message] = plain) -> None:
        self.broker = broker
        self.message = message
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None

    def send(self, start: int, count: int) -> list[str]:
        if self._channel is None:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.broker.url))
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        accepted = []
        for n in range(start, start + count):
            body, properties = self.message(n)
            # Raises when the broker nacks it: nothing unconfirmed counts as accepted.
            self._channel.basic_publish("", QUEUE, body, properties, mandatory=True)
            accepted.append(str(properties.message_id))
        return accepted

    def finish(self) -> list[str]:
        if self._connection is not None:
            self._connection.close()
        return []

    def feeder(self, *, total: int, rate: float, batch: int = 50) -> Feeder:
        return Feeder(self.send, total=total, rate=rate, batch=batch, finish=self.finish)


def collect_results(broker: Broker, results: Results) -> Collector:
    """A thread consuming the ``ok`` and ``failed`` queues into ``results`` (on a
    connection it opens itself: pika's are not to be shared between threads)."""
    opened: list[pika.BlockingConnection] = []

    def on_message(_channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        headers = properties.headers or {}
        event_type = str(headers.get("ce-type", ""))
        data = json.loads(body) if event_type != "bridge.task.succeeded" else None
        results.add(str(headers.get("ce-subject", "")), event_type, data)

    def poll() -> None:
        if not opened:
            opened.append(pika.BlockingConnection(pika.URLParameters(broker.url)))
            channel = opened[0].channel()
            for queue in ("ok", "failed"):
                channel.basic_consume(queue, on_message, auto_ack=True)
        opened[0].process_data_events(time_limit=0.2)

    def close() -> None:
        if opened and opened[0].is_open:
            opened[0].close()

    return Collector(poll, close)
