"""pika's ``AsyncioConnection`` on the running event loop, with awaitable channel calls.

The source and the sink each own one ``AmqpConnection`` and open ``AmqpChannel`` objects
on it. pika is callback-based; here every RPC (declare, qos, consume, cancel, confirm
select) becomes an awaitable that fails with ``NotConnected``/``FatalClientError``
(``errors.translate``) when its channel or connection closes first, so nothing ever
waits on a reply that cannot come.

Why the asyncio adapter and not a dedicated thread (a ``BlockingConnection`` per
thread): pika's frame codec is pure Python, so a thread buys no parallelism under the
GIL, only a hand-off per message and per ack; on the loop, a delivery is decoded and
handed to the core with no copy and no cross-thread wake-up. pika's I/O callbacks
are short and never block.

A channel is single-use: once closed (by us, by the broker, or with its connection) it
stays closed, and a fresh one is opened. That makes a channel object a natural
*epoch*: a delivery remembers the channel it came on, and acking it on any other
channel is never attempted (delivery tags are per channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions as pe
from pika.adapters.asyncio_connection import AsyncioConnection

from connectors.rabbitmq.errors import map_pika_errors, translate
from consumer_core.errors import ConnectorError

__all__ = ["AmqpChannel", "AmqpConnection", "LostCallback", "MessageCallback", "redact"]

log = logging.getLogger(__name__)

_pika_log = logging.getLogger("pika")
if _pika_log.level == logging.NOTSET:
    # pika logs every socket and connection-workflow step at INFO (about 15 lines per
    # connect); the bridge logs the lifecycle itself. An explicit level set before this
    # import (``logging.getLogger("pika").setLevel(...)``) is left alone.
    _pika_log.setLevel(logging.WARNING)

CLOSE_TIMEOUT: Final = 5.0
"""How long ``close`` waits for the broker's Close-Ok before dropping the socket."""

LostCallback = Callable[[BaseException], None]
MessageCallback = Callable[["AmqpChannel", Any, Any, bytes], None]
"""``(channel, method, properties, body)`` for each delivery of a consumer."""


def redact(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class _Waiters:
    """Futures waiting on replies; all failed at once when their channel or connection
    closes (pika never calls the reply callback of an RPC cut short)."""

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[Any]] = set()

    def new(self) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def fail(self, reason: BaseException) -> None:
        for future in list(self._futures):
            if not future.done():
                future.set_exception(reason)
        self._futures.clear()


def _resolver(future: asyncio.Future[Any]) -> Callable[[Any], None]:
    def resolve(value: Any) -> None:
        if not future.done():
            future.set_result(value)

    return resolve


class _CoalescingConnection(AsyncioConnection):  # type: ignore[misc]
    """pika's asyncio connection, writing all frames of one loop iteration at once.

    pika hands its adapter one frame at a time (``_adapter_emit_data``, the hook every
    adapter implements) and the stock transport makes one ``send()`` per frame: three
    per published message, one per ack. Joining them per loop iteration keeps the
    order and cuts the syscalls (measured: about 10% of the bridge's CPU at a few
    thousand messages/s).
    """

    def __init__(self, *args: Any, loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        self._out: list[bytes] = []
        self._out_loop = loop
        super().__init__(*args, custom_ioloop=loop, **kwargs)

    def _adapter_emit_data(self, data: bytes) -> None:
        if not self._out:
            self._out_loop.call_soon(self._flush_out)
        self._out.append(data)

    def _flush_out(self) -> None:
        if not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        transport = self._transport
        if transport is not None:
            transport.write(data)


class AmqpConnection:
    """One AMQP connection on the running loop (open it before use; not reopenable).

    ``on_lost`` callbacks run once if the connection closes without ``close`` having
    been called (broker restart, ``close_all_connections``, socket error, missed
    heartbeats), with pika's reason.
    """

    def __init__(self, url: str, *, name: str) -> None:
        self.url = url
        self.name = name
        self.close_reason: BaseException | None = None
        self._raw: Any = None
        self._closing = False
        self._waiters = _Waiters()
        self._closed: asyncio.Future[None] | None = None
        self._lost_callbacks: list[LostCallback] = []
        self._channels: list[AmqpChannel] = []

    def __repr__(self) -> str:
        return f"AmqpConnection({redact(self.url)!r}, name={self.name!r})"

    @property
    def is_open(self) -> bool:
        return self._raw is not None and bool(self._raw.is_open)

    def on_lost(self, callback: LostCallback) -> None:
        self._lost_callbacks.append(callback)

    async def open(self) -> None:
        """Connect and log in; raises ``NotConnected`` or ``FatalClientError``."""
        loop = asyncio.get_running_loop()
        opened = self._waiters.new()
        self._closed = loop.create_future()
        params = pika.URLParameters(self.url)
        params.client_properties = {"connection_name": self.name, "product": "bridge"}

        def on_open_error(_conn: Any, error: Any) -> None:
            reason = error if isinstance(error, BaseException) else pe.AMQPConnectionError(error)
            self._finish(reason)

        doing = f"connecting to {redact(self.url)}"
        with map_pika_errors(doing):
            self._raw = _CoalescingConnection(
                params,
                on_open_callback=_resolver(opened),
                on_open_error_callback=on_open_error,
                on_close_callback=lambda _conn, reason: self._finish(reason),
                loop=loop,
            )
            try:
                await opened
            except asyncio.CancelledError:
                self._abort()
                raise

    async def channel(self) -> AmqpChannel:
        """A new open channel on this connection."""
        with map_pika_errors("opening a channel"):
            if not self.is_open:
                raise self.close_reason or pe.ConnectionWrongStateError("connection not open")
            future = self._waiters.new()
            self._raw.channel(on_open_callback=_resolver(future))
            raw = await future
        channel = AmqpChannel(raw)
        self._channels.append(channel)
        return channel

    async def close(self) -> None:
        """Close gracefully (idempotent): the broker requeues every unacked delivery."""
        self._closing = True
        raw = self._raw
        if raw is None or raw.is_closed:
            return
        if not raw.is_closing:
            for channel in self._channels:
                channel.flush_acks()  # acks still waiting go out before the Close
            with contextlib.suppress(pe.AMQPError, OSError):
                raw.close()
        if self._closed is not None:
            with contextlib.suppress(TimeoutError, ConnectorError, pe.AMQPError, OSError):
                await asyncio.wait_for(asyncio.shield(self._closed), CLOSE_TIMEOUT)

    def _abort(self) -> None:
        self._closing = True
        raw = self._raw
        if raw is not None and not (raw.is_closing or raw.is_closed):
            with contextlib.suppress(pe.AMQPError, OSError):
                raw.close()

    def _finish(self, reason: BaseException) -> None:
        """pika says the connection is closed (or never opened)."""
        self.close_reason = reason
        self._waiters.fail(reason)
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._closing:
            return
        self._closing = True
        for callback in self._lost_callbacks:
            callback(reason)


class AmqpChannel:
    """A pika channel whose RPCs are awaitable; single-use (see the module docstring).

    The fire-and-forget methods (``ack``, ``nack``, ``reject``, ``publish``) are no-ops
    on a closed channel for settling, and raise ``NotConnected`` for publishing.
    """

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.close_reason: BaseException | None = None
        self._waiters = _Waiters()
        self._close_callbacks: list[LostCallback] = []
        self._delivered: deque[int] = deque()
        """Delivery tags in the order the broker sent them (pruned from the front)."""
        self._unsettled: set[int] = set()
        """Tags the broker still counts as unacked on this channel."""
        self._to_ack: set[int] = set()
        """Acks waiting for the end of this loop iteration (``flush_acks``)."""
        raw.add_on_close_callback(self._on_close)

    @property
    def is_open(self) -> bool:
        return bool(self.raw.is_open)

    def on_close(self, callback: LostCallback) -> None:
        """Run ``callback(reason)`` once the channel is closed, whatever closed it."""
        self._close_callbacks.append(callback)

    def on_cancel(self, callback: Callable[[str], None]) -> None:
        """Run ``callback(consumer_tag)`` when the broker cancels one of our consumers
        (its queue was deleted, or the node holding it went down)."""
        self.raw.add_on_cancel_callback(lambda frame: callback(frame.method.consumer_tag))

    def _on_close(self, _raw: Any, reason: BaseException) -> None:
        self.close_reason = reason
        self._waiters.fail(reason)
        for callback in self._close_callbacks:
            callback(reason)

    async def _rpc(self, doing: str, start: Callable[[Callable[[Any], None]], Any]) -> Any:
        with map_pika_errors(doing):
            if not self.is_open:
                # Closed earlier, for whatever reason: not an answer to this request.
                raise pe.ChannelWrongStateError(f"channel closed ({self.close_reason})")
            future = self._waiters.new()
            start(_resolver(future))
            return await future

    # ---------------------------------------------------------------- RPCs

    async def declare_queue(
        self,
        queue: str,
        *,
        passive: bool = False,
        durable: bool = True,
        arguments: dict[str, Any] | None = None,
    ) -> int:
        """Declare (or, ``passive``, check) a queue; return its ready message count."""
        doing = f"{'checking' if passive else 'declaring'} queue {queue!r}"
        frame = await self._rpc(
            doing,
            lambda done: self.raw.queue_declare(
                queue, passive=passive, durable=durable, arguments=arguments, callback=done
            ),
        )
        return int(frame.method.message_count)

    async def declare_exchange(self, exchange: str, kind: str, *, durable: bool = True) -> None:
        await self._rpc(
            f"declaring exchange {exchange!r}",
            lambda done: self.raw.exchange_declare(
                exchange, exchange_type=kind, durable=durable, callback=done
            ),
        )

    async def qos(self, prefetch: int) -> None:
        """Set the channel-wide prefetch (``global``: RabbitMQ applies a changed
        per-consumer prefetch only to consumers started later; the channel limit
        applies at once, so it can follow a moving window)."""
        await self._rpc(
            "setting prefetch",
            lambda done: self.raw.basic_qos(
                prefetch_count=prefetch, global_qos=True, callback=done
            ),
        )

    async def consume(self, queue: str, on_message: MessageCallback) -> str:
        """Start a manual-ack consumer; return its tag."""

        def deliver(_raw: Any, method: Any, properties: Any, body: bytes) -> None:
            tag = method.delivery_tag
            self._delivered.append(tag)
            self._unsettled.add(tag)
            on_message(self, method, properties, body)

        tag: list[str] = []
        await self._rpc(
            f"consuming queue {queue!r}",
            lambda done: tag.append(
                self.raw.basic_consume(queue, deliver, auto_ack=False, callback=done)
            ),
        )
        return tag[0]

    async def cancel(self, consumer_tag: str) -> None:
        await self._rpc(
            "cancelling the consumer",
            lambda done: self.raw.basic_cancel(consumer_tag, callback=done),
        )

    async def confirm_select(self, on_confirm: Callable[[Any], None]) -> None:
        """Turn on publisher confirms; ``on_confirm(method)`` gets each Basic.Ack/Nack."""
        await self._rpc(
            "enabling publisher confirms",
            lambda done: self.raw.confirm_delivery(
                ack_nack_callback=lambda frame: on_confirm(frame.method), callback=done
            ),
        )

    async def close(self) -> None:
        if not self.is_open:
            return
        closed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.on_close(_resolver(closed))
        with contextlib.suppress(pe.AMQPError, OSError, TimeoutError):
            self.raw.close()
            await asyncio.wait_for(closed, CLOSE_TIMEOUT)

    # ---------------------------------------------------------------- fire and forget

    def ack(self, tag: int) -> bool:
        """Ack ``tag`` of a consumer's delivery; False (nothing sent) if the channel is
        closed.

        Acks are coalesced: those asked for within one loop iteration go out together,
        as one ``multiple`` ack for the run of oldest deliveries they settle and single
        acks for the rest.
        """
        if not self.is_open or tag not in self._unsettled:
            return False
        if not self._to_ack:
            asyncio.get_running_loop().call_soon(self.flush_acks)
        self._to_ack.add(tag)
        return True

    def flush_acks(self) -> None:
        """Send the acks waiting (see ``ack``); called by the loop and before a close."""
        to_ack, unsettled, delivered = self._to_ack, self._unsettled, self._delivered
        if not to_ack or not self.is_open:
            to_ack.clear()
            return
        top = 0
        while delivered and (delivered[0] not in unsettled or delivered[0] in to_ack):
            tag = delivered.popleft()
            if tag in to_ack:
                to_ack.discard(tag)
                unsettled.discard(tag)
                top = tag
        if top:
            self.raw.basic_ack(top, multiple=True)
        for tag in to_ack:
            unsettled.discard(tag)
            self.raw.basic_ack(tag)
        to_ack.clear()

    def nack(self, tag: int, *, requeue: bool) -> bool:
        if not self.is_open or tag not in self._unsettled or tag in self._to_ack:
            return False
        self._unsettled.discard(tag)
        self.raw.basic_nack(tag, multiple=False, requeue=requeue)
        return True

    def reject(self, tag: int, *, requeue: bool) -> bool:
        if not self.is_open or tag not in self._unsettled or tag in self._to_ack:
            return False
        self._unsettled.discard(tag)
        self.raw.basic_reject(tag, requeue=requeue)
        return True

    def on_return(self, callback: Callable[[Any, Any], None]) -> None:
        """Run ``callback(method, properties)`` for each mandatory message the broker
        could not route (Basic.Return; its confirm follows)."""
        self.raw.add_on_return_callback(lambda _raw, method, props, _body: callback(method, props))

    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Any,
        *,
        mandatory: bool,
    ) -> None:
        """Send one message (raises ``NotConnected`` if the channel is closed)."""
        if not self.is_open:
            reason = self.close_reason or pe.ChannelWrongStateError("channel closed")
            raise translate(reason, "publishing")
        with map_pika_errors("publishing"):
            self.raw.basic_publish(exchange, routing_key, body, properties, mandatory=mandatory)
