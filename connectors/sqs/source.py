"""``type: sqs``: long-poll an Amazon SQS queue (standard or FIFO).

Background *receivers* long-poll (``wait_time``) for ten messages each and feed a
bounded buffer that ``receive`` drains, so the core's short ``receive`` calls never
wait on SQS. How many receivers run follows the core's AIMD window
(``window_changed``: about one per ten messages the window allows, at most
``max_receivers``); pausing the pipeline stops them. A FIFO queue gets one receiver:
AWS keeps a group's messages out of concurrent receive calls, but compatible
services (moto, at least) do not, and two calls holding messages of one group could
hand them to the core out of order.

A *heartbeat* keeps every received, unsettled message invisible: once half of
``visibility_timeout`` has passed, ChangeMessageVisibility extends it by another
``visibility_timeout``, until it is settled. A function slower than the visibility
timeout therefore does not see its message twice.

What the settle verbs mean here:

========  ==================================================================
ack       DeleteMessageBatch (ten at a time, sent within a few ms); entries
          that fail for a transient reason are retried; a receipt handle that
          expired is logged, SQS delivers the message again and the core drops
          the copy as a duplicate of a finished task
nack      ChangeMessageVisibility to ``delay`` (0 when none): SQS delivers it
          again after that
reject    (the task failed for good; its failure event reached ``on_failure``)
          with a redrive policy on the queue: move the message to its
          dead-letter queue (``connectors.sqs.deadletter``); without: delete
========  ==================================================================

Ordering: on a FIFO queue the ordering key and the partition are the message's
MessageGroupId (groups run in parallel, a group in order; SQS itself hands out a
group's next messages only once the earlier ones are deleted). On a standard queue
the key is the CloudEvent's ``partitionkey`` or a ``key`` message attribute, and the
partition is the queue. Decoding: ``connectors.sqs.decode``.

``lag()`` reports ApproximateNumberOfMessages + ApproximateNumberOfMessagesNotVisible,
refreshed every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Self

from connectors.sqs.client import AwsClient, AwsEndpoint, queue_name
from connectors.sqs.deadletter import dead_letter_entry, resolve_dead_letter_queue
from connectors.sqs.decode import decode_message
from connectors.sqs.errors import map_aws_errors
from connectors.sqs.settle import Batcher, Handle, InFlight, settle_entries
from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Clock, Delivery, Resources
from consumer_core.errors import FatalClientError, NotConnected

__all__ = ["SQSDelivery", "SQSSource"]

log = logging.getLogger(__name__)

MAX_PER_RECEIVE: Final = 10
MAX_VISIBILITY: Final = 43200
LAG_INTERVAL: Final = 5.0
HEARTBEAT_CALLS: Final = 4
"""Most ChangeMessageVisibilityBatch calls the heartbeat has in flight at once."""
IDLE_PAUSE: Final = 0.2
"""Pause after an empty short poll (``wait_time: 0``), so an idle queue is not hammered."""
CLOSE_TIMEOUT: Final = 10.0
DELETE_LINGER: Final = 0.005
"""How long an ack waits for others to share its DeleteMessageBatch call."""
Release = tuple[Handle, int]
DeadLetter = tuple[Handle, dict[str, Any]]


def _visibility_seconds(value: float | None) -> int:
    return max(0, min(MAX_VISIBILITY, math.ceil(value or 0.0)))


class SQSDelivery(Delivery):
    __slots__ = ("handle", "message", "source")

    def __init__(
        self, source: SQSSource, handle: Handle, message: Mapping[str, Any], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.handle = handle
        self.message = message
        """The message as received, for moving it to the dead-letter queue."""

    async def _ack(self) -> None:
        self.source.delete(self.handle)

    async def _nack(self, delay: float | None) -> None:
        self.source.release(self.handle, delay)

    async def _reject(self) -> None:
        self.source.reject(self.handle, self.message)


class SQSSource:
    """An SQS queue as a Bridge source (see the module docstring)."""

    type_name: ClassVar[str] = "sqs"

    def __init__(
        self,
        *,
        pipeline: str,
        queue_url: str,
        endpoint: AwsEndpoint,
        wait_time: float = 20.0,
        visibility_timeout: float = 30.0,
        max_receivers: int = 4,
        clock: Clock = time.monotonic,
    ) -> None:
        self.pipeline = pipeline
        self.queue_url = queue_url
        self.queue = queue_name(queue_url)
        self.wait_time = max(0, min(20, round(wait_time)))
        self.visibility = max(1, _visibility_seconds(visibility_timeout))
        self.max_receivers = max(1, max_receivers)
        self.clock = clock
        self.client = AwsClient(
            "sqs",
            endpoint,
            read_timeout=self.wait_time + 15.0,
            max_connections=self.max_receivers + 12,
        )
        self.fifo = queue_url.endswith(".fifo")
        self.arn = queue_url
        self._target = 1
        """Receivers wanted now (from the window); those with an index >= it stop."""
        self._receivers: dict[int, asyncio.Task[None]] = {}
        self._buffer: deque[SQSDelivery] = deque()
        """Received, tracked in ``_inflight``, not yet handed to the core."""
        self._inflight = InFlight(float(self.visibility))
        self._deleter: Batcher[Handle] = Batcher(
            self._delete_batch, name=f"{pipeline}:sqs-delete", linger=DELETE_LINGER
        )
        self._releaser: Batcher[Release] = Batcher(
            self._release_batch, name=f"{pipeline}:sqs-release"
        )
        self._dead_letterer: Batcher[DeadLetter] = Batcher(
            self._dead_letter_batch, name=f"{pipeline}:sqs-dead-letter"
        )
        self.dead_letter_url: str | None = None
        """The redrive policy's dead-letter queue, where rejected messages go."""
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._paused = False
        self._closing = False
        self._fatal: FatalClientError | None = None
        self._group: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        """The heartbeat and lag loops, cancelled at close."""
        self._lag: dict[str, int] = {}

    @classmethod
    def from_config(cls, pipeline: str, spec: ComponentSpec, res: Resources) -> Self:
        o = spec.options
        return cls(
            pipeline=pipeline,
            queue_url=str(o["queue_url"]),
            endpoint=AwsEndpoint.from_options(o),
            wait_time=float(o.get("wait_time", 20.0)),
            visibility_timeout=float(o.get("visibility_timeout", 30.0)),
            max_receivers=int(o.get("max_receivers", 4)),
            clock=res.clock,
        )

    def __repr__(self) -> str:
        return f"SQSSource(queue_url={self.queue_url!r}, fifo={self.fifo})"

    # ----------------------------------------------------------------- lifecycle

    async def connect(self) -> None:
        """Open the client, read the queue's attributes, start the background tasks.

        Raises ``NotConnected`` (the core retries) while SQS cannot be reached. A
        fatal error (no such queue, access denied) is raised by the next ``receive``,
        which stops this pipeline only. Idempotent once connected.
        """
        if self._supervisor is not None or self._fatal is not None:
            return
        await self.client.open()
        try:
            with map_aws_errors(f"getting the attributes of {self.queue_url}"):
                answer = await self.client.api.get_queue_attributes(
                    QueueUrl=self.queue_url, AttributeNames=["All"]
                )
        except FatalClientError as exc:
            self._fatal = exc
            return
        attributes: Mapping[str, str] = answer.get("Attributes") or {}
        self.arn = attributes.get("QueueArn") or self.queue_url
        self.fifo = attributes.get("FifoQueue") == "true" or self.fifo
        self._set_lag(attributes)
        self.dead_letter_url = await resolve_dead_letter_queue(
            self.client.api, self.queue, attributes
        )
        self._supervisor = asyncio.create_task(self._run(), name=f"{self.pipeline}:sqs")
        log.info(
            "sqs source %s connected (fifo=%s, visibility %ds, wait %ds)",
            self.queue,
            self.fifo,
            self.visibility,
            self.wait_time,
        )

    async def close(self) -> None:
        """Stop receiving, hand back what the core never took, flush settles, close.

        Called once, after the core settled what it will settle. Long polls in flight
        are cancelled; a message SQS handed to one of them comes back after its
        visibility timeout.
        """
        self._closing = True
        background = [*self._receivers.values(), *self._loops]
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)  # parked releases queued
        self._buffer.clear()
        for handle in self._inflight.drain():
            self._releaser.add((handle, 0))
        self._dead_letterer.stop()
        self._releaser.stop()
        self._arrived.set()
        self._room.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and not supervisor.done():
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._dead_letterer.stopped.wait()  # it deletes what it moved
                    self._deleter.stop()
                    await supervisor
            except TimeoutError:
                log.warning("sqs source %s: settles still pending at close", self.queue)
                supervisor.cancel()
        await self.client.close()

    # ----------------------------------------------------------------- the core's calls

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        """Take up to ``max_messages`` from the buffer, waiting up to ``timeout``.

        Raises ``FatalClientError`` once SQS refused us for good.
        """
        if self._fatal is not None:
            raise self._fatal
        if not self._buffer:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), timeout)
            if self._fatal is not None:
                raise self._fatal
        count = min(max_messages, len(self._buffer))
        taken = [self._buffer.popleft() for _ in range(count)]
        if taken:
            self._room.set()
        return taken

    def window_changed(self, messages: int) -> None:
        """Run about one receiver per ten messages the window allows (one on FIFO)."""
        limit = 1 if self.fifo else self.max_receivers
        target = max(1, min(limit, math.ceil(messages / MAX_PER_RECEIVE)))
        if target != self._target:
            log.debug("sqs source %s: %d receivers", self.queue, target)
            self._target = target
            self._room.set()
            self._spawn_receivers()

    async def pause(self) -> None:
        """Stop polling and hand back the messages the core has not taken yet."""
        self._paused = True
        self._release_buffered()

    async def resume(self) -> None:
        self._paused = False
        self._spawn_receivers()

    def lag(self) -> Mapping[str, int]:
        return dict(self._lag)

    # ----------------------------------------------------------------- settling

    def delete(self, handle: Handle) -> None:
        """Ack: stop the heartbeat and queue the delete (sent within a few ms)."""
        self._inflight.remove(handle)
        self._deleter.add(handle)

    def release(self, handle: Handle, delay: float | None) -> None:
        """Nack: make the message visible again after ``delay`` seconds."""
        self._inflight.remove(handle)
        seconds = _visibility_seconds(delay)
        if handle.extending:
            handle.pending_release = seconds
        else:
            self._releaser.add((handle, seconds))

    def reject(self, handle: Handle, message: Mapping[str, Any]) -> None:
        """Reject: move to the dead-letter queue if the queue has one, else delete."""
        if self.dead_letter_url is None:
            self.delete(handle)
            return
        self._inflight.remove(handle)
        self._dead_letterer.add((handle, dead_letter_entry(message, fifo=self.fifo)))

    def _release_buffered(self) -> None:
        while self._buffer:
            self.release(self._buffer.popleft().handle, 0)
        self._room.set()

    async def _delete_batch(self, handles: list[Handle]) -> None:
        await self._settle_batch(
            "deleting messages",
            "delete_message_batch",
            [({"ReceiptHandle": h.receipt}, h) for h in handles],
        )

    async def _release_batch(self, releases: list[Release]) -> None:
        await self._settle_batch(
            "changing message visibility",
            "change_message_visibility_batch",
            [({"ReceiptHandle": h.receipt, "VisibilityTimeout": s}, h) for h, s in releases],
        )

    async def _dead_letter_batch(self, items: list[DeadLetter]) -> None:
        """Send to the dead-letter queue, then delete here (also what could not be sent:
        its failure is recorded and went to ``on_failure``; keeping it would only have
        the core delete it as a duplicate)."""
        url = self.dead_letter_url
        action = f"moving messages to {url}"

        async def call(**kwargs: Any) -> Any:
            with map_aws_errors(action):
                return await self.client.api.send_message_batch(QueueUrl=url, **kwargs)

        moved = await settle_entries(
            call, [(entry, handle) for handle, entry in items], queue=self.queue, action=action
        )
        for handle, _ in items:
            if handle not in moved:
                log.error(
                    "sqs source %s: message %s failed for good and could not be moved to the "
                    "dead-letter queue; deleting it (its failure event went to on_failure)",
                    self.queue,
                    handle.message_id,
                )
            self._deleter.add(handle)

    async def _settle_batch(
        self, action: str, method: str, entries: list[tuple[dict[str, Any], Handle]]
    ) -> None:
        async def call(**kwargs: Any) -> Any:
            with map_aws_errors(action):
                return await getattr(self.client.api, method)(QueueUrl=self.queue_url, **kwargs)

        await settle_entries(call, entries, queue=self.queue, action=action)

    # ----------------------------------------------------------------- background tasks

    async def _run(self) -> None:
        """Own every background task; a bug in one surfaces through ``receive``."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._deleter.run(), name=f"{self.pipeline}:sqs-delete")
                group.create_task(self._releaser.run(), name=f"{self.pipeline}:sqs-release")
                group.create_task(
                    self._dead_letterer.run(), name=f"{self.pipeline}:sqs-dead-letter"
                )
                self._loops = [
                    group.create_task(
                        self._heartbeat_loop(), name=f"{self.pipeline}:sqs-heartbeat"
                    ),
                    group.create_task(self._lag_loop(), name=f"{self.pipeline}:sqs-lag"),
                ]
                self._spawn_receivers()
        except Exception as exc:  # recorded: the next receive() raises it
            log.exception("sqs source %s: background task failed", self.queue)
            self._fatal = FatalClientError(f"sqs source {self.queue} failed: {exc!r}")
            self._arrived.set()
        finally:
            self._group = None

    def _spawn_receivers(self) -> None:
        group = self._group
        if group is None or self._closing or self._paused or self._fatal is not None:
            return
        for index in range(self._target):
            if index not in self._receivers:
                self._receivers[index] = group.create_task(
                    self._receiver(index), name=f"{self.pipeline}:sqs-receive-{index}"
                )

    def _receiving(self, index: int) -> bool:
        return (
            index < self._target and not self._paused and not self._closing and self._fatal is None
        )

    async def _receiver(self, index: int) -> None:
        """Long-poll while this receiver is wanted; back off while SQS is unreachable."""
        backoff = 0.0
        try:
            while self._receiving(index):
                while len(self._buffer) >= self._capacity() and self._receiving(index):
                    self._room.clear()
                    await self._room.wait()
                if not self._receiving(index):
                    break
                try:
                    messages = await self._poll()
                except NotConnected as exc:
                    level = logging.DEBUG if backoff else logging.WARNING  # once per streak
                    backoff = min(10.0, max(0.1, backoff * 2))
                    log.log(level, "sqs source %s: %s; retrying", self.queue, exc)
                    await asyncio.sleep(backoff)
                    continue
                except FatalClientError as exc:
                    self._fatal = exc
                    self._arrived.set()
                    return
                backoff = 0.0
                if messages:
                    self._accept(messages)
                elif self.wait_time == 0:
                    await asyncio.sleep(IDLE_PAUSE)
        finally:
            if self._receivers.get(index) is asyncio.current_task():
                del self._receivers[index]

    def _capacity(self) -> int:
        """The buffer's bound: one poll's worth per receiver wanted."""
        return MAX_PER_RECEIVE * self._target

    async def _poll(self) -> list[Mapping[str, Any]]:
        with map_aws_errors("receiving messages"):
            answer = await self.client.api.receive_message(
                QueueUrl=self.queue_url,
                MaxNumberOfMessages=MAX_PER_RECEIVE,
                WaitTimeSeconds=self.wait_time,
                VisibilityTimeout=self.visibility,
                MessageSystemAttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
        return list(answer.get("Messages") or [])

    def _accept(self, messages: list[Mapping[str, Any]]) -> None:
        now = self.clock()
        for message in messages:
            handle = Handle(str(message["MessageId"]), str(message["ReceiptHandle"]))
            self._inflight.add(handle, now)
            if self._paused or self._closing:
                self.release(handle, 0)
                continue
            self._buffer.append(self._delivery(message, handle))
        if self._buffer:
            self._arrived.set()

    def _delivery(self, message: Mapping[str, Any], handle: Handle) -> SQSDelivery:
        decoded = decode_message(message, source=self.arn, fifo=self.fifo, queue=self.queue)
        system = message.get("Attributes") or {}
        return SQSDelivery(
            self,
            handle,
            message,
            event=decoded.event,
            event_id=decoded.event_id,
            raw=decoded.raw,
            key=decoded.key,
            partition=decoded.partition,
            headers=decoded.headers,
            attributes={
                "messaging.system": "aws_sqs",
                "messaging.destination.name": self.queue,
                "messaging.message.id": handle.message_id,
                "aws.sqs.receive_count": int(system.get("ApproximateReceiveCount", 1)),
            },
            decode_error=decoded.decode_error,
        )

    async def _heartbeat_loop(self) -> None:
        """Extend every unsettled message at half its visibility timeout."""
        tick = min(1.0, max(0.05, self.visibility / 4))
        while not self._closing:
            await asyncio.sleep(tick)
            while True:
                batches: list[list[Handle]] = []
                while len(batches) < HEARTBEAT_CALLS and (
                    due := self._inflight.due(self.clock(), MAX_PER_RECEIVE)
                ):
                    batches.append(due)
                if not batches:
                    break
                extended = await asyncio.gather(*(self._extend(b) for b in batches))
                if not all(extended):
                    break  # SQS is unreachable: the failed ones are retried next tick

    async def _extend(self, handles: list[Handle]) -> bool:
        """One ChangeMessageVisibilityBatch call; False if the call itself failed."""
        for handle in handles:
            handle.extending = True
        try:
            with map_aws_errors("extending message visibility"):
                answer = await self.client.api.change_message_visibility_batch(
                    QueueUrl=self.queue_url,
                    Entries=[
                        {
                            "Id": str(i),
                            "ReceiptHandle": h.receipt,
                            "VisibilityTimeout": self.visibility,
                        }
                        for i, h in enumerate(handles)
                    ],
                )
        except (NotConnected, FatalClientError) as exc:
            log.warning("sqs source %s: %s", self.queue, exc)
            self._inflight.retry_soon(handles, self.clock())
            return False
        finally:
            for handle in handles:
                handle.extending = False
                if handle.pending_release is not None:
                    self._releaser.add((handle, int(handle.pending_release)))
                    handle.pending_release = None
        for failed in answer.get("Failed") or []:
            handle = handles[int(failed["Id"])]
            if self._inflight.remove(handle):
                log.warning(
                    "sqs source %s: could not extend the visibility of message %s (%s); "
                    "it may be delivered again while it runs",
                    self.queue,
                    handle.message_id,
                    failed.get("Code", ""),
                )
        return True

    async def _lag_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(LAG_INTERVAL)
            try:
                with map_aws_errors("getting the queue depth"):
                    answer = await self.client.api.get_queue_attributes(
                        QueueUrl=self.queue_url,
                        AttributeNames=[
                            "ApproximateNumberOfMessages",
                            "ApproximateNumberOfMessagesNotVisible",
                        ],
                    )
            except (NotConnected, FatalClientError) as exc:
                log.debug("sqs source %s: %s", self.queue, exc)
                continue
            self._set_lag(answer.get("Attributes") or {})

    def _set_lag(self, attributes: Mapping[str, str]) -> None:
        visible = int(attributes.get("ApproximateNumberOfMessages", 0))
        hidden = int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0))
        self._lag = {self.queue: visible + hidden}
