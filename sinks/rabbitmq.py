"""``type: rabbitmq``: publish each result event to an exchange, with publisher confirms.

Each event is one message in CloudEvents binary mode, RabbitMQ binding (``ce-*``
headers as Knative eventing-rabbitmq; ``datacontenttype`` as the ``content_type``
property; the data as the body), persistent, ``message_id`` = the event id, published
``mandatory`` to ``exchange`` with ``routing_key``.

``emit`` returns only once the broker confirmed every message. A message the broker
nacks, or returns as unroutable (no queue bound for the routing key: it would be
lost), fails with ``PartialFailure``; so does every later event of the same
``partitionkey`` in that call, so that the core's retry cannot reorder a key (the
price is a possible duplicate, never a reordering). A lost connection fails every
unconfirmed message with ``SinkError`` (retryable); the next ``emit`` reconnects, and
the core retries with backoff. Duplicates are possible (at-least-once), losses not.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any, Final, Self

import pika
from pika import spec as amqp

from connectors.rabbitmq.client import AmqpChannel, AmqpConnection, redact
from connectors.rabbitmq.headers import to_binary
from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Resources
from consumer_core.errors import ConnectorError, PartialFailure, SinkError
from consumer_core.events import CloudEvent, partition_key

__all__ = ["RabbitMQSink"]

log = logging.getLogger(__name__)

DEFAULT_URL: Final = "amqp://guest:guest@127.0.0.1:5672/%2F"
CONFIRM_TIMEOUT: Final = 30.0
PERSISTENT: Final = 2


class _Batch:
    """The messages of one ``emit``: why each failed (``None``: confirmed)."""

    __slots__ = ("done", "outcomes", "remaining")

    def __init__(self, size: int) -> None:
        self.outcomes: list[str | None] = [None] * size
        self.remaining = size
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def settle(self, index: int, why: str | None) -> None:
        self.outcomes[index] = why
        self.remaining -= 1
        if self.remaining == 0 and not self.done.done():
            self.done.set_result(None)


class _Confirms:
    """Publisher confirms of one channel.

    Tags count publishes on the channel from 1; the broker confirms them, several at
    once with ``multiple``, and sends Basic.Return before the confirm of a message it
    could not route.
    """

    def __init__(self) -> None:
        self.next_tag = 0
        self.order: deque[int] = deque()
        self.pending: dict[int, tuple[_Batch, int, str]] = {}
        self.returned: dict[str, str] = {}
        """message_id -> why the broker returned it (until its confirm arrives)."""

    def track(self, batch: _Batch, index: int, message_id: str) -> None:
        self.next_tag += 1
        self.order.append(self.next_tag)
        self.pending[self.next_tag] = (batch, index, message_id)

    def on_confirm(self, method: Any) -> None:
        why = "nacked by the broker" if isinstance(method, amqp.Basic.Nack) else None
        tag = int(method.delivery_tag)
        if not method.multiple:
            self._settle(tag, why)
            return
        order = self.order
        while order and order[0] <= tag:
            self._settle(order.popleft(), why)

    def _settle(self, tag: int, why: str | None) -> None:
        entry = self.pending.pop(tag, None)
        if entry is None:
            return
        batch, index, message_id = entry
        returned = self.returned.pop(message_id, None)
        batch.settle(index, why or returned)

    def on_return(self, method: Any, properties: Any) -> None:
        if properties.message_id:
            self.returned[str(properties.message_id)] = (
                f"returned by the broker: {method.reply_code} {method.reply_text}"
            )

    def fail(self, why: str, batch: _Batch | None = None) -> None:
        """Settle every pending message (of ``batch``, or all) as failed with ``why``."""
        for tag, (owner, index, _) in list(self.pending.items()):
            if batch is None or owner is batch:
                del self.pending[tag]
                owner.settle(index, why)


class RabbitMQSink:
    """Publishes result events with confirms (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str,
        exchange: str,
        routing_key: str = "",
        url: str = DEFAULT_URL,
        confirm_timeout: float = CONFIRM_TIMEOUT,
    ) -> None:
        self.name = name
        self.url = url
        self.exchange = exchange
        self.routing_key = routing_key
        self.confirm_timeout = confirm_timeout
        self._conn: AmqpConnection | None = None
        self._channel: AmqpChannel | None = None
        self._confirms = _Confirms()
        self._opening = asyncio.Lock()

    @classmethod
    def from_config(cls, spec: ComponentSpec, res: Resources) -> Self:
        o = spec.options
        return cls(
            name=spec.path,
            url=str(o.get("url", DEFAULT_URL)),
            exchange=str(o["exchange"]),
            routing_key=str(o.get("routing_key", "")),
        )

    def __repr__(self) -> str:
        return (
            f"RabbitMQSink(url={redact(self.url)!r}, exchange={self.exchange!r}, "
            f"routing_key={self.routing_key!r})"
        )

    async def connect(self) -> None:
        """Connect now if the broker is there; if not, the first ``emit`` retries."""
        try:
            await self._ensure_channel()
        except SinkError as exc:
            log.warning("sink %s: %s (will retry on the first result)", self.name, exc)

    async def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            await conn.close()

    async def _ensure_channel(self) -> AmqpChannel:
        async with self._opening:
            channel = self._channel
            if channel is not None and channel.is_open:
                return channel
            await self.close()
            conn = AmqpConnection(self.url, name=f"bridge sink {self.name}")
            confirms = _Confirms()
            try:
                await conn.open()
                channel = await conn.channel()
                channel.on_close(lambda reason: confirms.fail(f"connection lost: {reason!r}"))
                channel.on_return(confirms.on_return)
                await channel.confirm_select(confirms.on_confirm)
            except ConnectorError as exc:
                await conn.close()
                raise SinkError(f"rabbitmq sink {redact(self.url)}: {exc}") from exc
            self._conn, self._channel, self._confirms = conn, channel, confirms
            return channel

    def _message(self, event: CloudEvent) -> tuple[bytes, Any]:
        message = to_binary(event)
        properties = pika.BasicProperties(
            content_type=message.content_type,
            headers=message.headers,
            message_id=str(event.get_id()),
            delivery_mode=PERSISTENT,
            app_id="bridge",
        )
        return message.body, properties

    async def emit(self, events: Sequence[CloudEvent]) -> None:
        """Publish every event; return once all are confirmed (see the module docstring)."""
        if not events:
            return
        channel = await self._ensure_channel()
        confirms = self._confirms
        batch = _Batch(len(events))
        index = -1
        try:
            for index, event in enumerate(events):
                body, properties = self._message(event)
                confirms.track(batch, index, properties.message_id)
                channel.publish(self.exchange, self.routing_key, body, properties, mandatory=True)
        except ConnectorError as exc:
            why = f"publishing: {exc}"
            confirms.fail(why, batch)  # those sent, and the one that failed
            for rest in range(index + 1, len(events)):
                batch.settle(rest, why)
        try:
            await asyncio.wait_for(asyncio.shield(batch.done), self.confirm_timeout)
        except TimeoutError:
            confirms.fail(f"no confirm within {self.confirm_timeout:g}s", batch)
            await self.close()  # its tags can no longer be trusted: start over
        self._raise_for(events, batch.outcomes)

    def _raise_for(self, events: Sequence[CloudEvent], outcomes: list[str | None]) -> None:
        failures: dict[str, str] = {}
        broken_keys: dict[str, str] = {}
        for event, why in zip(events, outcomes, strict=True):
            key = partition_key(event)
            if why is None and key is not None and key in broken_keys:
                why = f"after a failed event of its key ({broken_keys[key]})"
            if why is not None:
                failures[str(event.get_id())] = why
                if key is not None:
                    broken_keys.setdefault(key, why)
        if not failures:
            return
        first = next(iter(failures.values()))
        where = f"rabbitmq {self.exchange or '(default exchange)'}/{self.routing_key}"
        if len(failures) == len(events):
            raise SinkError(f"{where}: {first}")
        raise PartialFailure(
            f"{where}: {len(failures)} of {len(events)} failed ({first})", failures
        )
