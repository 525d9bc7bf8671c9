"""``type: kafka``: produce each result event to a topic (CloudEvents Kafka binding).

Binary content mode: attributes as ``ce_`` headers, ``datacontenttype`` as
``content-type``, the data as the record value, and the ``partitionkey`` extension
(when present) as the record key, so one key's results land on one partition in
order.

Delivery guarantee: the producer is idempotent with ``acks=all`` (those two always
win over ``settings``), and ``emit`` returns only after the delivery report of every
event came back without error. Events whose report failed are named in a
``PartialFailure`` (or the whole call raises ``SinkError``); the core retries them and
keeps their source messages uncommitted meanwhile. When ``produce`` itself refuses an
event, the later events with the same key are not produced either in that call, so a
retry cannot reorder a key.

Threads: ``produce`` is thread-safe and never blocks, so it is called from the loop.
Delivery reports are served by ``poll`` on the sink's own single-thread executor;
each report decrements its ``emit`` call's counter there, and the last one completes
the call's future through ``call_soon_threadsafe`` (one loop wake-up per call).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Self

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from connectors.kafka.errors import is_fatal, map_kafka_errors
from connectors.kafka.headers import HeaderValue, encode_event
from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Resources
from consumer_core.errors import PartialFailure, SinkError
from consumer_core.events import CloudEvent

__all__ = ["KafkaSink", "producer_config"]

log = logging.getLogger(__name__)

FORCED_SETTINGS: Final[Mapping[str, Any]] = {"enable.idempotence": True, "acks": "all"}
POLL_INTERVAL: Final = 0.1
FULL_QUEUE_WAIT: Final = 0.005


def producer_config(*, bootstrap_servers: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """librdkafka producer settings: ``settings`` < idempotence and acks."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap_servers}
    config.update(settings)
    config.update(FORCED_SETTINGS)
    return config


class _Emit:
    """Delivery reports of one ``emit`` call.

    The loop counts what it handed to librdkafka and calls ``seal`` once; ``report``
    runs on the poll thread for each delivery report. Whichever of the two sees the
    last report completes ``future`` (via ``call_soon_threadsafe`` from the thread).
    """

    __slots__ = ("expected", "failures", "future", "lock", "loop", "reported", "too_large")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.failures: dict[str, str] = {}
        self.too_large: set[str] = set()
        """Refused by ``produce`` for their size (the client's ``message.max.bytes``). A
        delivery report of the same error is an ordinary failure: the broker refuses a
        whole batch for one record over the topic's ``max.message.bytes``, so it cannot
        tell which record was too large (and later records of a key may be in)."""
        self.reported = 0
        self.expected: int | None = None
        self.lock = threading.Lock()

    def report(self, event_id: str, error: KafkaError | None) -> None:
        with self.lock:
            if error is not None:
                self.failures[event_id] = error.str()
            self.reported += 1
            last = self.reported == self.expected
        if last:
            self.loop.call_soon_threadsafe(self._complete)

    def seal(self, produced: int) -> None:
        with self.lock:
            self.expected = produced
            last = self.reported == produced
        if last:
            self._complete()

    def _complete(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


class KafkaSink:
    """A producer for one topic (see the module docstring)."""

    def __init__(self, *, name: str, config: Mapping[str, Any], topic: str) -> None:
        self.name = name
        self.topic = topic
        self._config = dict(config)
        self._config["error_cb"] = self._on_error
        self._config.setdefault("logger", logging.getLogger("sinks.kafka.librdkafka"))
        self._producer: Producer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._polling: asyncio.Future[None] | None = None
        self._stop = threading.Event()
        self._fatal: KafkaError | None = None

    @classmethod
    def from_config(cls, spec: ComponentSpec, res: Resources) -> Self:
        o = spec.options
        return cls(
            name=spec.path,
            config=producer_config(
                bootstrap_servers=str(o["bootstrap_servers"]),
                settings=dict(o.get("settings") or {}),
            ),
            topic=str(o["topic"]),
        )

    def __repr__(self) -> str:
        return f"KafkaSink(topic={self.topic!r})"

    # ----------------------------------------------------------------- lifecycle

    async def connect(self) -> None:
        """Create the producer and start serving its delivery reports. Raises
        ``FatalClientError`` for invalid settings. Idempotent."""
        if self._producer is not None:
            return
        with map_kafka_errors(f"creating the Kafka producer for {self.topic}"):
            self._producer = Producer(self._config)
        self._fatal = None
        self._stop.clear()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-sink-{self.topic}")
        loop = asyncio.get_running_loop()
        self._polling = loop.run_in_executor(self._executor, self._poll_forever, self._producer)

    def _poll_forever(self, producer: Producer) -> None:
        while not self._stop.is_set():
            producer.poll(POLL_INTERVAL)

    async def close(self, timeout: float = 10.0) -> None:
        """Wait up to ``timeout`` seconds for outstanding deliveries, then stop."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        self._stop.set()
        if self._polling is not None:
            await self._polling
            self._polling = None
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        left = await loop.run_in_executor(self._executor, producer.flush, timeout)
        if left:
            log.warning("kafka sink %s: %d results undelivered at close", self.name, left)
        self._executor.shutdown(wait=True)
        self._executor = None

    def _on_error(self, error: KafkaError) -> None:
        if is_fatal(error):
            self._fatal = error
            log.error("kafka sink %s: producer failed for good: %s", self.name, error.str())
        else:
            log.debug("kafka sink %s: %s", self.name, error.str())

    # ----------------------------------------------------------------- emit

    async def emit(self, events: Sequence[CloudEvent]) -> None:
        """Produce ``events`` and return once every delivery report came back OK.

        Raises ``PartialFailure`` naming the events not delivered, or ``SinkError``
        when none was (both retryable: the core calls again with those events). A
        producer that failed for good is replaced before the next call produces.
        """
        if self._fatal is not None:
            await self._restart()
        producer = self._producer
        if producer is None:
            raise SinkError(f"kafka sink {self.name}: emit() before connect()")
        call = _Emit(asyncio.get_running_loop())
        refused: dict[str, str] = {}
        blocked_keys: set[Any] = set()
        produced = 0
        for event in events:
            event_id = str(event.get_id())
            key, value, headers = encode_event(event)
            if key is not None and key in blocked_keys:
                refused[event_id] = "an earlier event of its key was refused"
                continue
            error = await self._produce(producer, call, event_id, key, value, headers)
            if error is None:
                produced += 1
                continue
            refused[event_id] = error
            if key is not None:
                blocked_keys.add(key)
        call.seal(produced)
        await call.future
        failures = {**call.failures, **refused}
        if not failures:
            return
        first = next(iter(failures.values()))
        too_large = call.too_large
        if len(failures) == len(events) and not too_large:
            raise SinkError(f"kafka sink {self.name}: {first}")
        raise PartialFailure(
            f"kafka sink {self.name}: {len(failures)} failed ({first})",
            [i for i in failures if i not in too_large],
            too_large_ids=too_large,
        )

    async def _produce(
        self,
        producer: Producer,
        call: _Emit,
        event_id: str,
        key: str | bytes | None,
        value: bytes,
        headers: list[tuple[str, HeaderValue]],
    ) -> str | None:
        """Hand one event to librdkafka; return why it was refused, or ``None``."""

        def on_delivery(error: KafkaError | None, _message: Message[Any, Any]) -> None:
            call.report(event_id, error)

        while True:
            try:
                producer.produce(
                    self.topic, value=value, key=key, headers=headers, on_delivery=on_delivery
                )
                return None
            except BufferError:
                await asyncio.sleep(FULL_QUEUE_WAIT)  # the poll thread drains the queue
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError.MSG_SIZE_TOO_LARGE:
                    call.too_large.add(event_id)
                return str(exc)

    async def _restart(self) -> None:
        log.warning("kafka sink %s: recreating the producer after a fatal error", self.name)
        await self.close(timeout=0)
        await self.connect()
