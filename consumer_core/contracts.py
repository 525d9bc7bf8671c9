"""The interfaces between the core and the outside world.

A *source* hands the core ``Delivery`` objects; the core turns each into a task, runs it
against the *target* and delivers its result event to *sinks*; only then does it
settle the delivery. Connectors implement these; the core never imports a vendor SDK.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from consumer_core.events import CloudEvent
from consumer_core.outcome import Outcome

if TYPE_CHECKING:
    from consumer_core.admin.metrics import Metrics
    from consumer_core.admin.tracing import Tracing
    from consumer_core.store.base import TaskStore
    from consumer_core.store.sqlite import SqliteDatabases

__all__ = [
    "Clock",
    "Delivery",
    "FloodGuard",
    "FollowsWindow",
    "Intake",
    "Pausable",
    "RawTenant",
    "ReportsLag",
    "Rereads",
    "Resources",
    "Sink",
    "Source",
    "Target",
]


class Delivery:
    """One message taken from a source, with the means to settle it.

    ``event`` is the message as a CloudEvent, or ``None`` when it could not be decoded
    (then ``decode_error`` says why and the core fails it to ``on_failure``);
    ``event_id`` is stable across redelivery. ``key`` is the ordering key, ``partition``
    the unit of ``ordering: partition``; ``headers`` feed tenant extraction and trace
    propagation; ``attributes`` are source facts for spans and logs (offset, queue...).

    Settling is idempotent, first call wins, and only the core settles:

    * ``ack()`` -- the message is done: never deliver it again.
    * ``nack(delay)`` -- hand it back for redelivery (after ``delay`` seconds if the
      source can delay).
    * ``reject()`` -- it failed for good and ``on_failure`` has its result: dead-letter
      it where the source can, else ack it.

    Connectors subclass this and implement ``_ack``/``_nack``.
    """

    __slots__ = (
        "attributes",
        "decode_error",
        "event",
        "event_id",
        "headers",
        "key",
        "partition",
        "positions",
        "raw",
        "received_at",
        "reference",
        "revoked",
        "settled",
        "tenant",
    )

    def __init__(
        self,
        *,
        event: CloudEvent | None,
        event_id: str,
        raw: bytes = b"",
        key: str | None = None,
        partition: str | None = None,
        headers: Mapping[str, str] | None = None,
        attributes: Mapping[str, Any] | None = None,
        decode_error: str | None = None,
    ) -> None:
        self.event = event
        self.event_id = event_id
        self.raw = raw
        self.key = key
        self.partition = partition
        self.headers: Mapping[str, str] = headers or {}
        self.attributes: Mapping[str, Any] = attributes or {}
        self.decode_error = decode_error
        self.received_at = time.time()
        self.settled: str | None = None
        self.revoked = False
        """Set by the connector when the message is no longer ours (a Kafka partition
        was revoked): the core drops its task without invoking or settling it."""
        self.reference: str | None = None
        """Set (with ``tenant`` and ``positions``) on messages the source did not decode
        because their tenant spills by reference (see ``Rereads``): where they are (a
        Kafka ``topic/partition``). ``event`` is ``None``; one such delivery stands for
        every message at ``positions`` there, and settling it settles them all."""
        self.positions: list[int] = []
        """The positions (Kafka offsets), ascending, of the messages a delivery with a
        ``reference`` stands for; ``f"{reference}/{position}"`` names each of them."""
        self.tenant: str | None = None

    async def ack(self) -> None:
        if self.settled is None:
            self.settled = "ack"
            await self._ack()

    async def nack(self, *, delay: float | None = None) -> None:
        if self.settled is None:
            self.settled = "nack"
            await self._nack(delay)

    async def reject(self) -> None:
        """The message failed for good and its failure result reached ``on_failure``.

        Sources with a dead-letter path (RabbitMQ DLX, SQS redrive) override
        ``_reject``; by default a rejected message is simply acked.
        """
        if self.settled is None:
            self.settled = "reject"
            await self._reject()

    async def _reject(self) -> None:
        await self._ack()

    async def _ack(self) -> None:
        raise NotImplementedError

    async def _nack(self, delay: float | None) -> None:
        raise NotImplementedError


class Source(Protocol):
    """Where messages come from.

    ``connect`` is called before the first ``receive`` and again after
    ``NotConnected`` (with backoff). ``receive`` returns at most ``max_messages``
    deliveries, or an empty sequence once ``timeout`` seconds passed with none: the
    core passes the window's free room, so backpressure reaches the broker here.
    ``close`` is called once, after the core settled everything it will settle.
    ``connect`` may raise ``FatalClientError`` (bad credentials, no such queue): the
    pipeline then stops and ``/readyz`` reports it; the other pipelines go on.

    Optionally, ``stop_receiving()`` (synchronous) is called when shutdown begins, so a
    source with background receivers can stop them before the drain.
    """

    async def connect(self) -> None: ...

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]: ...

    async def close(self) -> None: ...


@runtime_checkable
class ReportsLag(Protocol):
    """A source that knows how far behind it is, per partition (or queue)."""

    def lag(self) -> Mapping[str, int]: ...


@runtime_checkable
class Pausable(Protocol):
    """A source that can stop its broker from sending while the pipeline is paused."""

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...


@runtime_checkable
class FollowsWindow(Protocol):
    """A source that sizes its broker-side prefetch to the core's AIMD window.

    ``window_changed`` is called at start and whenever the window moves, with the
    number of messages the core may have in flight (window x events per request).
    """

    def window_changed(self, messages: int) -> None: ...


RawTenant = Callable[
    [str | bytes | None, Sequence[tuple[str, str | bytes | None]] | None], str | None
]
"""A message's tenant from its raw key and headers, or ``None`` when that cannot be
told without decoding the message."""

FloodGuard = Callable[[Mapping[str, int], int], None]
"""Looks at how many messages of each tenant (those whose tenant can be told raw) one
full read of that many messages brought, before they are decoded; may add tenants to
the spilling set (see ``Rereads``)."""


@runtime_checkable
class Rereads(Protocol):
    """A source that can read a message again later (Kafka: by topic, partition and
    offset), so that a spilling tenant's backlog stays in the source instead of being
    copied into the store (``isolation.spill_by_reference``).

    ``spill_by_reference(tenants, tenant_of, flood_guard)`` is called once, before the
    first ``receive``. From then on, messages whose ``tenant_of(key, headers)`` is in
    ``tenants`` (a set the core keeps changing) are handed over undecoded: a delivery
    with ``reference``, ``positions`` and ``tenant`` set and no event stands for a run
    of them. Acking it means their references are safely stored, so a commit may pass
    them. ``flood_guard``, when given, is called with the count of each tenant's
    messages, and the read's size, for every read that brought as many as were asked
    for, before any of them is decoded; a tenant it adds to ``tenants`` is handed over
    by reference from that read on (so a flood is not decoded before the core sees it).

    A task never attempted is parked the same way, by ``position(delivery)``.

    ``reread(references)`` returns, by reference, the messages still in the source,
    decoded, as deliveries that are never settled. A reference it leaves out is gone
    for good (retention or compaction removed the message). It raises
    ``ConnectorError`` when it cannot tell now (the core tries again later).

    ``full_read_at`` is when (``time.monotonic()``) a ``receive`` last read as many
    messages as it could take: more were waiting behind them. While that is recent and
    the source is reading past a spilling tenant's flood, the core does not read that
    tenant's messages back, so as not to slow the reading past.
    """

    full_read_at: float

    def spill_by_reference(
        self,
        tenants: Set[str],
        tenant_of: RawTenant,
        flood_guard: FloodGuard | None = None,
        *,
        reads_headers: bool = True,
    ) -> None:
        """``reads_headers=False``: ``tenant_of`` does not look at the headers (a tenant
        from the key), so the source may pass ``None`` for them and skip building them."""

    def position(self, delivery: Delivery) -> tuple[str, int] | None:
        """Where a (decoded) delivery of this source can be read again, as
        ``(reference, position)``; ``None`` when it cannot (not ours, or revoked)."""

    async def reread(self, references: Sequence[str]) -> Mapping[str, Delivery]: ...


class Target(Protocol):
    """Where events are processed: one ``Outcome`` per event, in order, never raises
    for a remote failure."""

    async def invoke(
        self, events: Sequence[CloudEvent], *, attempt: int, traceparent: str | None
    ) -> Sequence[Outcome]: ...

    async def close(self) -> None: ...


class Sink(Protocol):
    """Where result events go.

    ``emit`` returns once every event is safely delivered, or raises ``SinkError``
    (retryable per class) or ``PartialFailure`` naming the event ids not delivered;
    the core retries the rest. It may be called again with the same events. An event
    over what the sink can take in one message is named in ``too_large_ids``: the core
    then sends a reduced copy of it (``events.reduced``).
    """

    name: str

    async def connect(self) -> None: ...

    async def emit(self, events: Sequence[CloudEvent]) -> None: ...

    async def close(self) -> None: ...


Clock = Callable[[], float]


class Intake(Protocol):
    """The receiving end of ``POST /v1/pipelines/{name}/events`` (embedded source).

    ``submit`` returns once the event is durably stored; ``headers`` are the request's
    headers worth keeping (tenant, trace context).
    """

    max_body_bytes: int

    async def submit(self, event: CloudEvent, headers: Mapping[str, str]) -> None: ...


@dataclass(slots=True, kw_only=True)
class Resources:
    """Everything a component's constructor may need, handed in (no singletons)."""

    metrics: Metrics
    store: TaskStore
    base_dir: Path
    state_url: str
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("bridge"))
    clock: Clock = time.monotonic
    databases: SqliteDatabases
    tracing: Tracing
    intake: dict[str, Intake] = field(default_factory=dict)
    """Embedded sources register their intake here, by pipeline name."""
