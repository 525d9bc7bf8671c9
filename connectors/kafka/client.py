"""A confluent-kafka ``Consumer`` confined to one thread, driven from asyncio.

librdkafka calls block, and rebalance callbacks run *inside* ``consume()`` on the
calling thread. So every call on the consumer -- create, subscribe, consume, commit,
pause/resume, close -- runs on one dedicated single-thread executor, in submission
order, and no other thread ever touches the consumer.

Rebalances are handed to the event loop, which owns all partition state
(``RebalanceListener``):

* **assign** -- ``on_assigned`` is scheduled on the loop with ``call_soon_threadsafe``
  before ``consume()`` returns, so the loop learns of the partitions before it sees
  their first messages (both travel through the loop's FIFO callback queue).
* **revoke** -- the callback blocks the consumer thread on ``on_revoking`` (run on the
  loop with ``run_coroutine_threadsafe``), which returns the offsets to commit; they
  are committed synchronously, still inside the callback, before librdkafka gives the
  partitions up. Nothing on the loop may wait for this executor meanwhile, and
  nothing does: the loop only awaits its futures.
* **lost** -- like revoke, but nothing is committed (the group moved on without us).

Message errors that are fatal for the client raise ``FatalClientError`` from
``consume``; others (a broker went away, a topic does not exist yet) are logged and
skipped: librdkafka recovers from them itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as _TP

from connectors.kafka.errors import is_fatal, map_kafka_errors, translate
from consumer_core.errors import ConnectorError, FatalClientError

__all__ = ["ConsumerClient", "RebalanceListener", "TopicPartition"]

log = logging.getLogger(__name__)

TopicPartition = tuple[str, int]
"""A partition as plain values: ``(topic, partition)``."""

WATERMARK_REFRESH = 1.0
"""Seconds between refreshes of the cached high watermarks (a local lookup)."""
CALLBACK_TIMEOUT = 30.0
"""How long a rebalance callback waits for the loop before it gives up on it."""


class RebalanceListener(Protocol):
    """The event loop's side of a rebalance (see the module docstring)."""

    def on_assigned(
        self,
        partitions: Sequence[TopicPartition],
        committed: Mapping[TopicPartition, int],
        generation: int,
    ) -> None:
        """Called on the loop when partitions were assigned, with the committed offsets
        known for them (missing: none committed, or the lookup failed) and the
        assignment's generation (pass it to ``commit``)."""

    def on_revoking(
        self, partitions: Sequence[TopicPartition]
    ) -> Awaitable[Mapping[TopicPartition, int]]:
        """Run on the loop while the consumer thread waits: stop the partitions' work,
        give in-flight messages a grace, return the offsets to commit before giving the
        partitions up."""

    def on_lost(self, partitions: Sequence[TopicPartition]) -> Awaitable[None]:
        """Run on the loop while the consumer thread waits: the partitions are gone
        without a chance to commit."""


class ConsumerClient:
    """One ``Consumer`` and the one thread allowed to call it."""

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        topics: Sequence[str],
        listener: RebalanceListener,
        name: str,
    ) -> None:
        self._config = dict(config)
        self._config["error_cb"] = self._on_error
        self._config.setdefault("logger", logging.getLogger("connectors.kafka.librdkafka"))
        self.topics = list(topics)
        self._listener = listener
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-{name}")
        self._consumer: Consumer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fatal: KafkaError | None = None
        self._deferred: ConnectorError | None = None
        self._cooperative = "cooperative" in str(
            self._config.get("partition.assignment.strategy", "")
        )
        # Thread-side state (only the executor thread writes these):
        self._assigned: dict[TopicPartition, int] = {}
        """Assigned partitions and the generation of the assignment that gave them."""
        self._generation = 0
        self._paused_all = False
        self._watermarks_at = 0.0
        self.high_watermarks: Mapping[TopicPartition, int] = {}
        """Cached high watermarks from fetch responses; replaced wholesale by the
        consumer thread, read by the loop (a reference swap, no lock needed)."""

    # ----------------------------------------------------------------- plumbing

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return await self._loop.run_in_executor(self._executor, fn, *args)

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` on the consumer thread without waiting (errors are logged)."""
        future: Future[Any] = self._executor.submit(fn, *args)
        future.add_done_callback(_log_failure)

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            raise FatalClientError("the Kafka consumer is not started")
        return self._consumer

    def _on_error(self, error: KafkaError) -> None:
        # librdkafka's global errors, served inside consume() on the consumer thread.
        if is_fatal(error):
            self._fatal = error
            log.error("kafka consumer failed for good: %s", error.str())
        else:
            log.debug("kafka consumer: %s", error.str())

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise translate(self._fatal, "consuming")

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Create the consumer, subscribe, and check that a broker answers.

        Raises ``NotConnected`` when no broker answered within 10 s (the core calls
        ``connect`` again) and ``FatalClientError`` for invalid settings. Idempotent.
        """
        self._loop = asyncio.get_running_loop()
        await self._run(self._start)

    def _start(self) -> None:
        if self._consumer is None:
            with map_kafka_errors("creating the Kafka consumer"):
                self._consumer = Consumer(self._config)
            with map_kafka_errors("subscribing"):
                self._consumer.subscribe(
                    self.topics,
                    on_assign=self._on_assign,
                    on_revoke=self._on_revoke,
                    on_lost=self._on_lost,
                )
        with map_kafka_errors("reaching the Kafka brokers"):
            self._consumer.list_topics(timeout=10)

    async def close(self) -> None:
        """Leave the group (the revoke callback commits one last time) and stop the
        thread. Idempotent; errors are logged, not raised."""
        if self._consumer is not None:
            try:
                await self._run(self._close)
            except Exception as exc:
                log.warning("closing the Kafka consumer: %s", exc)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            consumer.close()

    # ----------------------------------------------------------------- consuming

    async def consume(self, max_messages: int, timeout: float) -> list[Message[Any, Any]]:
        """Up to ``max_messages`` records, returning as soon as at least one is there or
        ``timeout`` passed. Rebalance callbacks run inside. Raises ``FatalClientError``
        when the client cannot go on, ``NotConnected`` for transient failures."""
        result: list[Message[Any, Any]] = await self._run(self._consume, max_messages, timeout)
        return result

    def _consume(self, max_messages: int, timeout: float) -> list[Message[Any, Any]]:
        # Records taken from librdkafka's queue must reach the caller: one that is
        # dropped would look like a compaction gap and a commit could pass it. So an
        # error met after some records were taken is kept for the next call.
        self._raise_if_fatal()
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        consumer = self.consumer
        with map_kafka_errors("consuming"):
            messages = consumer.consume(max_messages, 0)
            if not messages:
                messages = consumer.consume(1, timeout)
        if messages and len(messages) < max_messages:
            try:
                with map_kafka_errors("consuming"):
                    messages += consumer.consume(max_messages - len(messages), 0)
            except ConnectorError as exc:
                self._deferred = exc
        good = [m for m in messages if not self._is_error(m)]
        self._refresh_watermarks()
        return good

    def _is_error(self, message: Message[Any, Any]) -> bool:
        """True for an error event in place of a record (never a record: no offset is
        skipped by leaving it out). A fatal one fails the next ``consume``."""
        error = message.error()
        if error is None:
            return False
        if is_fatal(error):
            self._fatal = error
        elif error.code() != KafkaError._PARTITION_EOF:
            log.warning("kafka consumer: %s", error.str())
        return True

    def _refresh_watermarks(self) -> None:
        now = time.monotonic()
        if now - self._watermarks_at < WATERMARK_REFRESH or self._consumer is None:
            return
        self._watermarks_at = now
        highs: dict[TopicPartition, int] = {}
        for tp in self._assigned:
            try:
                _low, high = self._consumer.get_watermark_offsets(_TP(*tp), cached=True)
            except KafkaException:
                continue
            if high is not None and high >= 0:
                highs[tp] = high
        self.high_watermarks = highs

    # ----------------------------------------------------------------- commits

    async def commit(
        self,
        offsets: Mapping[TopicPartition, int],
        generations: Mapping[TopicPartition, int | None] | None = None,
    ) -> dict[TopicPartition, int]:
        """Commit ``offsets`` synchronously; return those the broker accepted.

        Offsets of partitions no longer assigned, or assigned again since (their
        ``generations`` entry differs), are skipped: they were computed for an
        assignment that is over. Raises ``NotConnected`` for a transient failure,
        ``FatalClientError`` otherwise.
        """
        result: dict[TopicPartition, int] = await self._run(
            self._commit, dict(offsets), dict(generations or {})
        )
        return result

    def _commit(
        self,
        offsets: Mapping[TopicPartition, int],
        generations: Mapping[TopicPartition, int | None] | None = None,
    ) -> dict[TopicPartition, int]:
        def current(tp: TopicPartition) -> bool:
            if tp not in self._assigned:
                return False
            wanted_generation = (generations or {}).get(tp)
            return wanted_generation is None or wanted_generation == self._assigned[tp]

        wanted = [_TP(t, p, o) for (t, p), o in offsets.items() if current((t, p))]
        if not wanted or self._consumer is None:
            return {}
        with map_kafka_errors("committing offsets"):
            try:
                answers = self._consumer.commit(offsets=wanted, asynchronous=False)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() == KafkaError._NO_OFFSET:
                    return {}
                raise
        accepted: dict[TopicPartition, int] = {}
        for tp in answers or ():
            if tp.error is None and tp.topic is not None:
                accepted[(tp.topic, tp.partition)] = tp.offset
            else:
                log.warning("committing %s[%d]: %s", tp.topic, tp.partition, tp.error)
        return accepted

    # ----------------------------------------------------------------- flow control

    def pause_nowait(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop fetching ``partitions`` (queued behind any running call)."""
        tps = list(partitions)
        if tps:
            self._submit(self._pause, tps)

    def resume_nowait(self, partitions: Iterable[TopicPartition]) -> None:
        """Fetch ``partitions`` again, from the next offset not yet returned."""
        tps = list(partitions)
        if tps:
            self._submit(self._resume, tps)

    async def pause_all(self) -> None:
        """Pause every assigned partition, and partitions assigned later too."""
        await self._run(self._pause_all, True)

    async def resume_all(self, keep_paused: Iterable[TopicPartition]) -> None:
        """Undo ``pause_all``, except for ``keep_paused``."""
        await self._run(self._pause_all, False, set(keep_paused))

    def _pause_all(self, paused: bool, keep: set[TopicPartition] | None = None) -> None:
        self._paused_all = paused
        if paused:
            self._pause(list(self._assigned))
        else:
            self._resume([tp for tp in self._assigned if tp not in (keep or set())])

    def _pause(self, partitions: list[TopicPartition]) -> None:
        mine = [_TP(*tp) for tp in partitions if tp in self._assigned]
        if mine and self._consumer is not None:
            with map_kafka_errors("pausing partitions"):
                self._consumer.pause(mine)

    def _resume(self, partitions: list[TopicPartition]) -> None:
        if self._paused_all:
            return
        mine = [_TP(*tp) for tp in partitions if tp in self._assigned]
        if mine and self._consumer is not None:
            with map_kafka_errors("resuming partitions"):
                self._consumer.resume(mine)

    # ----------------------------------------------------------------- rebalance callbacks
    # These run on the consumer thread, inside consume() or close(). An exception
    # escaping them would surface from consume(), so each one catches everything.

    def _on_assign(self, consumer: Consumer, partitions: list[_TP]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions if tp.topic is not None]
        try:
            if self._cooperative:
                consumer.incremental_assign(partitions)
            else:
                consumer.assign(partitions)
            self._generation += 1
            for tp in tps:
                self._assigned[tp] = self._generation
            # A partition paused in an earlier assignment may come back paused.
            if self._paused_all:
                consumer.pause(partitions)
            else:
                consumer.resume(partitions)
            committed = self._committed(consumer, partitions)
        except Exception:
            log.exception("handling the assignment of %s", tps)
            committed = {}
        log.info("kafka: assigned %s", ", ".join(f"{t}[{p}]" for t, p in tps) or "nothing")
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._listener.on_assigned, tps, committed, self._generation)

    @staticmethod
    def _committed(consumer: Consumer, partitions: list[_TP]) -> dict[TopicPartition, int]:
        try:
            answers = consumer.committed(partitions, timeout=5)
        except KafkaException as exc:
            log.warning("reading committed offsets: %s", exc)
            return {}
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in answers
            if tp.topic is not None and tp.error is None and tp.offset != OFFSET_INVALID
        }

    def _on_revoke(self, consumer: Consumer, partitions: list[_TP]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions if tp.topic is not None]
        log.info("kafka: revoking %s", ", ".join(f"{t}[{p}]" for t, p in tps) or "nothing")
        try:
            offsets = self._call_loop(self._listener.on_revoking(tps))
            if offsets:
                self._commit(offsets)
        except Exception:
            log.exception("committing before giving up %s", tps)
        finally:
            for tp in tps:
                self._assigned.pop(tp, None)

    def _on_lost(self, consumer: Consumer, partitions: list[_TP]) -> None:
        tps = [(tp.topic, tp.partition) for tp in partitions if tp.topic is not None]
        log.warning("kafka: lost %s", ", ".join(f"{t}[{p}]" for t, p in tps))
        for tp in tps:
            self._assigned.pop(tp, None)
        try:
            self._call_loop(self._listener.on_lost(tps))
        except Exception:
            log.exception("handling the loss of %s", tps)

    def _call_loop(self, awaitable: Awaitable[Any]) -> Any:
        loop = self._loop
        if loop is None or loop.is_closed():
            _close_awaitable(awaitable)
            return None
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), loop)
        return future.result(CALLBACK_TIMEOUT)


async def _as_coroutine(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _close_awaitable(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


def _log_failure(future: Future[Any]) -> None:
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.warning("kafka consumer call failed: %s", exc)
