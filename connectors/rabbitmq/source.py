"""``type: rabbitmq``: consume one queue with manual acknowledgements.

What the settle verbs mean here:

=========  ===================================================================
ack        ``basic.ack`` (coalesced per loop iteration, see ``client``).
reject     ``basic.reject`` without requeue: the core rejects a message whose
           task failed for good, once its failure event reached ``on_failure``.
           A queue with a dead-letter exchange (``dead_letter_exchange``, or a
           policy) dead-letters it with an ``x-death`` header; without one the
           broker drops it, exactly like an ack.
nack       ``basic.nack`` with requeue: back to the head of the queue at once.
           RabbitMQ cannot delay a redelivery, so ``delay`` is ignored (the core
           only nacks at shutdown, for work it hands back).
=========  ===================================================================

A settle for a delivery that came on a channel that has since closed is a no-op:
delivery tags are per channel, and the broker has already requeued the message. It
comes back on the new channel; the core's dedup acks it if its task had finished,
or joins it to the still-live task. A reject that found its channel closed is
remembered by event id, so that the copy the broker redelivers is rejected (and
dead-lettered) too when the core acks it.

Flow: the channel-wide prefetch (basic.qos) follows the core's AIMD window, capped by
``prefetch_max``; ``pause`` cancels the consumer (prefetch 0 would mean *unlimited*),
``resume`` starts it again. Unacked messages stay with us across a pause.

Keys and ids: the ordering key is the ``key_header`` header when configured; else a
CloudEvent's ``partitionkey``; else (no ``key_header``) the routing key. The event id
is the CloudEvent's id, else the AMQP ``message_id``, else a hash of the body. The
partition (``ordering: partition``) is the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Final, Self
from urllib.parse import quote, unquote, urlsplit

from connectors.rabbitmq.client import AmqpChannel, AmqpConnection, redact
from connectors.rabbitmq.errors import translate
from connectors.rabbitmq.headers import read_cloudevent, text_headers
from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Delivery, Resources
from consumer_core.errors import ConnectorError, NotConnected
from consumer_core.events import CloudEvent, content_hash_id, partition_key, wrap

__all__ = ["RabbitMQDelivery", "RabbitMQSource"]

log = logging.getLogger(__name__)

DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1:5672/%2F"
LAG_INTERVAL: Final = 5.0
"""Seconds between two queue-depth reads (passive declare) for ``lag``."""
STALE_REJECTS_KEPT: Final = 10_000
"""Event ids of rejects that found their channel closed, kept for the redelivered copy."""
INITIAL_PREFETCH: Final = 8
"""Prefetch until the core first reports its window (it does right after connect)."""

Raw = tuple[AmqpChannel, Any, Any, bytes]
"""A delivery as pika hands it over: channel, Basic.Deliver, properties, body."""


class RabbitMQDelivery(Delivery):
    """A message of the queue; remembers the channel its delivery tag belongs to."""

    __slots__ = ("channel", "source", "tag")

    def __init__(
        self, source: RabbitMQSource, channel: AmqpChannel, tag: int, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.channel = channel
        self.tag = tag

    async def _ack(self) -> None:
        await self.source.settle(self, ack=True)

    async def _nack(self, delay: float | None) -> None:
        await self.source.settle(self, ack=False)

    async def _reject(self) -> None:
        self.source.reject(self)


class RabbitMQSource:
    """Consumes ``queue`` (see the module docstring for the contract)."""

    type_name = "rabbitmq"

    def __init__(
        self,
        *,
        pipeline: str,
        queue: str,
        url: str = DEFAULT_URL,
        declare: bool = False,
        key_header: str | None = None,
        dead_letter_exchange: str | None = None,
        prefetch_max: int = 1000,
        lag_interval: float = LAG_INTERVAL,
    ) -> None:
        self.pipeline = pipeline
        self.queue = queue
        self.url = url
        self.declare = declare
        self.key_header = key_header or None
        self.dead_letter_exchange = dead_letter_exchange or None
        self.prefetch_max = prefetch_max
        self.lag_interval = lag_interval
        vhost = unquote(urlsplit(url).path.removeprefix("/")) or "/"
        self.event_source = f"/rabbitmq/{quote(vhost, safe='')}/{queue}"
        """``source`` of the events wrapped from plain messages (``/rabbitmq/%2F/q``)."""
        self.prefetch = min(INITIAL_PREFETCH, prefetch_max)
        self.paused = False
        self._conn: AmqpConnection | None = None
        self._channel: AmqpChannel | None = None
        self._consumer: str | None = None
        self._lost: str | None = "not connected yet"
        """Why we have no usable channel (``None`` while consuming normally)."""
        self._buffer: deque[Raw] = deque()
        self._arrived = asyncio.Event()
        self._depth: int | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._closing = False
        self._stale_rejects: dict[str, None] = {}

    @classmethod
    def from_config(cls, pipeline: str, spec: ComponentSpec, res: Resources) -> Self:
        o = spec.options
        return cls(
            pipeline=pipeline,
            queue=str(o["queue"]),
            url=str(o.get("url", DEFAULT_URL)),
            declare=bool(o.get("declare", False)),
            key_header=o.get("key_header"),
            dead_letter_exchange=o.get("dead_letter_exchange"),
            prefetch_max=int(o.get("prefetch_max", 1000)),
        )

    def __repr__(self) -> str:
        return f"RabbitMQSource(url={redact(self.url)!r}, queue={self.queue!r})"

    # ------------------------------------------------------------------ lifecycle

    async def connect(self) -> None:
        """(Re)connect: drop any old connection, declare or check the queue, set the
        prefetch and start consuming (unless paused). Idempotent; raises
        ``NotConnected`` (the core retries with backoff) or ``FatalClientError``."""
        await self._drop_connection()
        conn = AmqpConnection(self.url, name=f"bridge {self.pipeline} source")
        try:
            await conn.open()
            channel = await conn.channel()
            self._depth = await self._declare(channel)
            await channel.qos(self.prefetch)
            conn.on_lost(lambda reason: self._on_lost(f"connection lost: {reason!r}"))
            channel.on_close(lambda reason: self._on_lost(f"channel closed: {reason!r}"))
            channel.on_cancel(lambda tag: self._on_lost(f"consumer {tag} cancelled by the broker"))
            self._conn, self._channel, self._lost = conn, channel, None
            if not self.paused:
                self._consumer = await channel.consume(self.queue, self._on_message)
        except BaseException:
            self._conn = self._channel = None
            self._lost = "connect failed"
            await conn.close()
            raise
        if self._lag_task is None:
            self._lag_task = asyncio.create_task(self._lag_loop(), name=f"{self.pipeline}:lag")
        log.info(
            "pipeline %s: consuming %s from %s (prefetch %d)",
            self.pipeline,
            self.queue,
            redact(self.url),
            self.prefetch,
        )

    async def _declare(self, channel: AmqpChannel) -> int:
        if not self.declare:
            return await channel.declare_queue(self.queue, passive=True)
        arguments: dict[str, Any] = {}
        if self.dead_letter_exchange:
            await channel.declare_exchange(self.dead_letter_exchange, "fanout")
            arguments["x-dead-letter-exchange"] = self.dead_letter_exchange
        return await channel.declare_queue(self.queue, durable=True, arguments=arguments or None)

    async def close(self) -> None:
        """Stop consuming and close; the broker requeues whatever is still unacked."""
        self._closing = True
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
            self._lag_task = None
        await self._drop_connection()

    async def _drop_connection(self) -> None:
        self._lost = self._lost or "reconnecting"  # our own close is not a loss to report
        conn, self._conn, self._channel, self._consumer = self._conn, None, None, None
        self._buffer.clear()
        if conn is not None:
            await conn.close()

    def _on_lost(self, why: str) -> None:
        if self._closing or self._lost is not None:
            return
        self._lost = why
        self._consumer = None
        self._buffer.clear()  # the broker requeues them; they come back on the next channel
        self._arrived.set()
        log.debug("pipeline %s: rabbitmq source %s", self.pipeline, why)  # the core logs it

    # ------------------------------------------------------------------ receive

    def _on_message(self, channel: AmqpChannel, method: Any, properties: Any, body: bytes) -> None:
        if channel is not self._channel:
            return  # a late frame of a channel we dropped; the broker requeued it
        self._buffer.append((channel, method, properties, body))
        if not self._arrived.is_set():
            self._arrived.set()

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Up to ``max_messages`` buffered deliveries (waiting up to ``timeout`` for the
        first); raises ``NotConnected`` once the connection or channel is gone."""
        if self._lost is not None:
            raise NotConnected(f"rabbitmq {self.queue}: {self._lost}")
        if not self._buffer:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
            if self._lost is not None:
                raise NotConnected(f"rabbitmq {self.queue}: {self._lost}")
        count = min(max_messages, len(self._buffer))
        popleft = self._buffer.popleft
        return [self._delivery(*popleft()) for _ in range(count)]

    def _delivery(
        self, channel: AmqpChannel, method: Any, properties: Any, body: bytes
    ) -> RabbitMQDelivery:
        raw_headers: Mapping[str, Any] | None = properties.headers
        headers = text_headers(raw_headers)
        content_type: str | None = properties.content_type
        error: str | None = None
        try:
            event = read_cloudevent(raw_headers, content_type, body)
        except ValueError as exc:
            event, error = None, str(exc)
        key = self._key(headers, event, method.routing_key)
        if event is not None:
            event_id = str(event.get_id())
        else:
            event_id = properties.message_id or content_hash_id(body)
            if error is None:
                event = wrap(
                    body,
                    event_id=event_id,
                    source=self.event_source,
                    content_type=content_type,
                    extensions={"partitionkey": key} if key is not None else None,
                )
        return RabbitMQDelivery(
            self,
            channel,
            method.delivery_tag,
            event=event,
            event_id=event_id,
            raw=body,
            key=key,
            partition=self.queue,
            headers=headers,
            attributes={
                "messaging.system": "rabbitmq",
                "messaging.source.name": self.queue,
                "messaging.message.id": event_id,
                "messaging.rabbitmq.destination.routing_key": method.routing_key,
                "messaging.rabbitmq.redelivered": bool(method.redelivered),
            },
            decode_error=error,
        )

    def _key(
        self, headers: Mapping[str, str], event: CloudEvent | None, routing_key: str
    ) -> str | None:
        if self.key_header is not None:
            value = headers.get(self.key_header)
            if value is not None:
                return value
        if event is not None and (key := partition_key(event)) is not None:
            return key
        if self.key_header is None and routing_key:
            return str(routing_key)
        return None

    # ------------------------------------------------------------------ settle

    async def settle(self, delivery: RabbitMQDelivery, *, ack: bool) -> None:
        """Ack, or nack with requeue; a no-op when the delivery's channel is gone."""
        if not ack:
            delivery.channel.nack(delivery.tag, requeue=True)
            return
        if delivery.event_id in self._stale_rejects:
            del self._stale_rejects[delivery.event_id]
            self.reject(delivery)  # a redelivered copy of a message that failed for good
            return
        if not delivery.channel.ack(delivery.tag):
            log.debug("pipeline %s: %s came on a closed channel", self.pipeline, delivery.event_id)

    def reject(self, delivery: RabbitMQDelivery) -> None:
        """Reject without requeue (to the queue's dead-letter exchange, if any)."""
        if delivery.channel.reject(delivery.tag, requeue=False):
            return
        stale = self._stale_rejects
        stale[delivery.event_id] = None
        if len(stale) > STALE_REJECTS_KEPT:
            del stale[next(iter(stale))]

    # ------------------------------------------------------------------ flow

    def window_changed(self, messages: int) -> None:
        """The core's window moved: prefetch = min(window in messages, prefetch_max)."""
        prefetch = max(1, min(messages, self.prefetch_max))
        if prefetch == self.prefetch:
            return
        self.prefetch = prefetch
        channel = self._channel
        if channel is not None and channel.is_open:
            task = asyncio.get_running_loop().create_task(self._apply_prefetch(channel, prefetch))
            task.add_done_callback(_log_failure)

    async def _apply_prefetch(self, channel: AmqpChannel, prefetch: int) -> None:
        with contextlib.suppress(NotConnected):  # a new channel gets the latest value
            await channel.qos(prefetch)

    async def pause(self) -> None:
        """Cancel the consumer; what we hold stays unacked with us."""
        self.paused = True
        channel, tag, self._consumer = self._channel, self._consumer, None
        if channel is not None and tag is not None:
            with contextlib.suppress(NotConnected):  # reconnecting will not consume
                await channel.cancel(tag)
        log.info("pipeline %s: stopped consuming %s", self.pipeline, self.queue)

    async def resume(self) -> None:
        self.paused = False
        channel = self._channel
        if channel is not None and self._consumer is None and self._lost is None:
            with contextlib.suppress(NotConnected):  # connect() starts it instead
                self._consumer = await channel.consume(self.queue, self._on_message)

    # ------------------------------------------------------------------ lag

    def lag(self) -> Mapping[str, int]:
        """Messages ready in the queue (not counting those we hold unacked)."""
        return {} if self._depth is None else {self.queue: self._depth}

    async def _lag_loop(self) -> None:
        lag_channel: AmqpChannel | None = None
        while True:
            await asyncio.sleep(self.lag_interval)
            conn = self._conn
            if conn is None or not conn.is_open:
                continue
            try:
                if lag_channel is None or not lag_channel.is_open:
                    lag_channel = await conn.channel()
                started = time.monotonic()
                self._depth = await lag_channel.declare_queue(self.queue, passive=True)
                log.debug("queue depth read in %.1f ms", (time.monotonic() - started) * 1000)
            except ConnectorError as exc:
                lag_channel = None
                log.debug("pipeline %s: reading queue depth: %s", self.pipeline, exc)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("rabbitmq source: %s", translate(exc, "setting prefetch"))
