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
========  ==================================================================

On a task's final failure the core emits its ``bridge.task.failed`` event to the
``on_failure`` sinks and then acks, so the message is deleted, also when no
``on_failure`` sink is configured: the queue's redrive policy does not see
failures the bridge finished (see docs/connectors/sqs.md).

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
from connectors.sqs.decode import decode_message
from connectors.sqs.errors import map_aws_errors
from connectors.sqs.settle import Batcher, Handle, InFlight
from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Clock, Delivery, Resources
from consumer_core.errors import FatalClientError, NotConnected

__all__ = ["SQSDelivery", "SQSSource"]

log = logging.getLogger(__name__)

MAX_PER_RECEIVE: Final = 10
MAX_VISIBILITY: Final = 43200
LAG_INTERVAL: Final = 5.0
SETTLE_ATTEMPTS: Final = 5
CLOSE_TIMEOUT: Final = 10.0
GONE_CODES: Final = frozenset(
    {
        "AWS.SimpleQueueService.MessageNotInflight",
        "InvalidParameterValue",
        "MessageNotInflight",
        "ReceiptHandleIsInvalid",
    }
)
"""Per-entry codes meaning the receipt handle no longer works (expired, or settled)."""

Release = tuple[Handle, int]


def _visibility_seconds(value: float | None) -> int:
    return max(0, min(MAX_VISIBILITY, math.ceil(value or 0.0)))


class SQSDelivery(Delivery):
    __slots__ = ("handle", "source")

    def __init__(self, source: SQSSource, handle: Handle, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.handle = handle

    async def _ack(self) -> None:
        self.source.delete(self.handle)

    async def _nack(self, delay: float | None) -> None:
        self.source.release(self.handle, delay)


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
        self._deleter: Batcher[Handle] = Batcher(self._delete_batch, name=f"{pipeline}:sqs-delete")
        self._releaser: Batcher[Release] = Batcher(
            self._release_batch, name=f"{pipeline}:sqs-release"
        )
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
        if "RedrivePolicy" in attributes:
            log.info(
                "sqs queue %s has a redrive policy; it applies to messages the bridge hands "
                "back, not to tasks that failed for good (those are deleted after on_failure)",
                self.queue,
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
        for task in [*self._receivers.values(), *self._loops]:
            task.cancel()
        self._buffer.clear()
        for handle in self._inflight.drain():
            self._releaser.add((handle, 0))
        self._deleter.stop()
        self._releaser.stop()
        self._arrived.set()
        self._room.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            try:
                await asyncio.wait_for(supervisor, CLOSE_TIMEOUT)
            except TimeoutError:
                log.warning("sqs source %s: settles still pending at close", self.queue)
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

    async def _settle_batch(
        self, action: str, method: str, entries: list[tuple[dict[str, Any], Handle]]
    ) -> None:
        """One batched settle call, retrying the entries (or the call) that failed for a
        transient reason; never raises (a lost settle means a redelivery, deduplicated)."""
        pending = entries
        for attempt in range(SETTLE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.1 * 2**attempt)
            try:
                with map_aws_errors(action):
                    answer = await getattr(self.client.api, method)(
                        QueueUrl=self.queue_url,
                        Entries=[{"Id": str(i), **e} for i, (e, _) in enumerate(pending)],
                    )
            except NotConnected as exc:
                log.debug("sqs source %s: %s (attempt %d)", self.queue, exc, attempt + 1)
                continue
            except FatalClientError as exc:
                log.error("sqs source %s: %s", self.queue, exc)
                return
            retry: list[tuple[dict[str, Any], Handle]] = []
            for failed in answer.get("Failed") or []:
                entry = pending[int(failed["Id"])]
                code = str(failed.get("Code", ""))
                if code in GONE_CODES:
                    log.warning(
                        "sqs source %s: %s: receipt handle of message %s no longer valid (%s); "
                        "SQS delivers it again and the bridge drops the copy as a duplicate",
                        self.queue,
                        action,
                        entry[1].message_id,
                        code,
                    )
                elif failed.get("SenderFault"):
                    log.warning(
                        "sqs source %s: %s: message %s refused: %s %s",
                        self.queue,
                        action,
                        entry[1].message_id,
                        code,
                        failed.get("Message", ""),
                    )
                else:
                    retry.append(entry)
            if not retry:
                return
            pending = retry
        log.warning(
            "sqs source %s: %s: gave up on %d messages after %d attempts; they will be "
            "delivered again",
            self.queue,
            action,
            len(pending),
            SETTLE_ATTEMPTS,
        )

    # ----------------------------------------------------------------- background tasks

    async def _run(self) -> None:
        """Own every background task; a bug in one surfaces through ``receive``."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                group.create_task(self._deleter.run(), name=f"{self.pipeline}:sqs-delete")
                group.create_task(self._releaser.run(), name=f"{self.pipeline}:sqs-release")
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
                    backoff = min(10.0, max(0.1, backoff * 2))
                    log.warning("sqs source %s: %s; retrying in %.1fs", self.queue, exc, backoff)
                    await asyncio.sleep(backoff)
                    continue
                except FatalClientError as exc:
                    self._fatal = exc
                    self._arrived.set()
                    return
                backoff = 0.0
                self._accept(messages)
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
            batches: list[list[Handle]] = []
            while len(batches) < 20 and (due := self._inflight.due(self.clock(), 10)):
                batches.append(due)
            if batches:
                await asyncio.gather(*(self._extend(batch) for batch in batches))

    async def _extend(self, handles: list[Handle]) -> None:
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
            return
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
