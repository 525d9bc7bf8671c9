"""One pipeline: source -> ordering gates -> lanes -> target -> sinks -> settle.

Four named loops share the pipeline's state, all on one event loop (no locks):

* **receive** takes deliveries from the source only while the buffer has room, drops
  those whose task already finished (dedup) and admits the rest through the ordering
  gates into their tenant's lane;
* **dispatch** starts invocations from every lane while that lane's AIMD window has
  room (one event per request, or up to ``batch.max_events`` in batch mode), serving
  the tenants of a lane round robin;
* **deliver** (``consumer_core.delivery``) takes finished tasks in the order they
  finished, emits their result events to every sink, makes the task records durable,
  and only then settles the source messages;
* **housekeeping** isolates misbehaving tenants into dedicated lanes, spills their
  backlog to the store, loads parked tasks back and reclaims idle lanes.

A task keeps its ordering key from admission until its invocation reached a final
outcome, retries included, so same-key tasks never overlap and finish in order; the
deliver loop is FIFO, so their results are emitted in that order too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from opentelemetry.trace import Span

from consumer_core.admin.tracing import Tracing
from consumer_core.config.model import Ordering, PipelineConfig, TargetMode
from consumer_core.contracts import (
    Delivery,
    FollowsWindow,
    Pausable,
    ReportsLag,
    Resources,
    Sink,
    Source,
    Target,
)
from consumer_core.delivery import ResultDelivery
from consumer_core.errors import FatalClientError, IllegalTransition, NotConnected, StoreError
from consumer_core.events import CloudEvent, failed_event, succeeded_event, wrap
from consumer_core.flow import AimdWindow
from consumer_core.isolation import Detector, Thresholds
from consumer_core.lanes import SHARED, Lane
from consumer_core.ordering import KeyedQueues
from consumer_core.outcome import ErrorKind, Outcome, OutcomeKind
from consumer_core.parking import Parking
from consumer_core.payload import PayloadChecks
from consumer_core.retry import RetryPolicy
from consumer_core.store.base import TaskQuery
from consumer_core.tasks import AttemptRecord, TaskRecord, TaskState, task_id
from consumer_core.tenancy import Tenancy
from consumer_core.tracing import child_traceparent, incoming_traceparent

__all__ = ["Pipeline", "Task", "run_pipeline"]

log = logging.getLogger(__name__)

DEDUP_WINDOW = 24 * 3600.0
"""How long a finished task's id suppresses a redelivered copy of its message."""

_WAITING = (TaskState.PENDING, TaskState.PAUSED, TaskState.RETRYING)

HOUSEKEEPING_INTERVAL = 0.2
"""Seconds between two runs of the housekeeping loop (isolation, spill, checkpoints)."""
ANCHOR_WAIT = HOUSEKEEPING_INTERVAL + 0.05
"""The least retry delay of a task of a spilling tenant that still holds its source
message: long enough for a housekeeping run to anchor it (``Tenancy.spill``)."""

RECEIVE_STOP_WAIT = 5.0
"""Seconds the shutdown waits for the receive loop to end by itself before cancelling
it."""

CHECKPOINT_AGE = 2.0
"""Seconds a task must be live before its intermediate states are written to the store.
At 0.5 s, a batch-mode drain (tasks live 0.3-1 s while 12,800 are in flight) wrote most
records twice: the SQLite thread took 2.5x the samples and the bridge 0.86 against
0.69 CPU s per 10k messages; at 2 s, 0.78-0.81 (and 0.71-0.73 with 1,000 in flight)."""


class Task:
    """A task in memory, from receipt until its source message is settled."""

    __slots__ = (
        "cancelled",
        "deliveries",
        "dirty",
        "event",
        "gate",
        "lane",
        "not_before",
        "record",
        "result",
        "retry_handle",
        "seq",
        "span",
        "traceparent",
        "wait_span",
    )

    def __init__(
        self, record: TaskRecord, event: CloudEvent, delivery: Delivery, gate: str | None, seq: int
    ) -> None:
        self.record = record
        self.event = event
        self.deliveries: list[Delivery] = [delivery]
        """The message, plus redelivered copies that arrived while it was live."""
        self.gate = gate
        """The ordering key this task holds while it runs (``None``: unordered)."""
        self.seq = seq
        """Arrival order within the pipeline (parking keeps it)."""
        self.traceparent = ""
        self.result: CloudEvent | None = None
        self.retry_handle: asyncio.TimerHandle | None = None
        self.cancelled = False
        self.lane: Lane[Task] | None = None
        """The lane of the invocation in flight, while one is."""
        self.not_before = 0.0
        """Wall-clock time the next attempt is due (retry backoff), 0 when due now."""
        self.span: Span | None = None
        """The task's CONSUMER span, when tracing is on."""
        self.dirty = True
        """Changed since its record was last handed to the store (see ``_checkpoint``)."""
        self.wait_span: Span | None = None


class Pipeline:
    """Runs one configured pipeline until ``stop`` (see the module docstring)."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        source: Source,
        target: Target,
        on_success: Sequence[Sink],
        on_failure: Sequence[Sink],
        resources: Resources,
        shutdown_timeout: float = 30.0,
        dedup_window: float = DEDUP_WINDOW,
        instance: str = "local",
    ) -> None:
        self.config = config
        self.name = config.name
        self.source = source
        self.target = target
        self.res = resources
        self.store = resources.store
        self.tracing = resources.tracing
        self.shutdown_timeout = shutdown_timeout
        self.dedup_window = dedup_window
        c = config.concurrency
        self.shared: Lane[Task] = Lane(
            SHARED, AimdWindow(initial=c.initial, minimum=c.min, maximum=c.max)
        )
        self.lanes: dict[str, Lane[Task]] = {}
        """Dedicated lanes, by tenant."""
        self.isolation = config.isolation.enabled
        self.thresholds = Thresholds.from_options(config.isolation.options)
        self.detector = Detector(self.thresholds)
        r = config.retry
        self.retry = RetryPolicy(
            max_attempts=r.max_attempts,
            initial_backoff=r.initial_backoff,
            max_backoff=r.max_backoff,
            max_age=r.max_age,
        )
        self.per_request = (
            config.target.batch_max_events if config.target.mode is TargetMode.BATCH else 1
        )
        self.checks = PayloadChecks(config)
        self.rng = random.Random()
        self.gates: KeyedQueues[Task] = KeyedQueues()
        self.live: dict[str, Task] = {}
        self._lookups: list[set[str]] = []
        """One set per dedup lookup in flight: the ids settled meanwhile (see
        ``_finished_ids``)."""
        self.tenant_live: Counter[str] = Counter()
        self.tenant_inflight: Counter[str] = Counter()
        """Per tenant, tasks in an invocation in flight (any lane)."""
        self.paused = False
        self.paused_tenants: set[str] = set()
        self.stopping = False
        self.healthy = True
        self.error: str | None = None
        self._arrivals = itertools.count(1)
        self._batch_open: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._receiving: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._calls: set[asyncio.Task[None]] = set()
        self._running: dict[int, tuple[float, list[Task]]] = {}
        """Calls in flight, by ``id`` of their batch: when (monotonic) each began."""
        self.results = ResultDelivery(self, on_success=on_success, on_failure=on_failure)
        self.parking = Parking(self, owner=f"{instance}/{self.name}")
        self.tenancy = Tenancy(self)
        m = resources.metrics
        self._ctx = {"pipeline": self.name}
        """Context for structured log lines (``extra``)."""
        self.m_received = m.messages_received.labels(self.name)
        self.m_invoke = m.invoke_duration.labels(self.name)
        self.m_retries = m.retries.labels(self.name)
        self.m_dedup = m.deduplicated.labels(self.name)
        self.m_isolated = m.isolated_tenants.labels(self.name)
        self._finished_counters = {
            outcome: m.tasks_finished.labels(self.name, outcome)
            for outcome in ("succeeded", "failed", "cancelled")
        }
        self._lane_gauges: dict[str, tuple[Any, Any]] = {}
        self._show_lane(self.shared)

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect, then run the loops until ``stop`` drained the pipeline."""
        await self._connect()
        self._tell_source_window()
        await self.results.connect()
        start = getattr(self.target, "start", None)
        if start is not None:
            await start()
        await self.parking.start()
        if self.parking.rereads is not None:
            self.parking.rereads.spill_by_reference(
                self.parking.spilling,
                self.checks.raw_tenant,
                self.tenancy.flood_guard,
                reads_headers=self.checks.raw_tenant_reads_headers,
            )
        log.info("pipeline %s started", self.name, extra=self._ctx)
        async with asyncio.TaskGroup() as group:
            self._receiving = group.create_task(self._receive_loop(), name=f"{self.name}:receive")
            group.create_task(self._dispatch_loop(), name=f"{self.name}:dispatch")
            group.create_task(self.results.run(), name=f"{self.name}:deliver")
            group.create_task(self._housekeeping_loop(), name=f"{self.name}:housekeeping")
            group.create_task(self._refill_loop(), name=f"{self.name}:refill")
            group.create_task(self._drain_on_stop(), name=f"{self.name}:shutdown")

    async def _connect(self) -> None:
        delay = 0.1
        while True:
            try:
                await self.source.connect()
                return
            except FatalClientError as exc:
                self.healthy, self.error = False, str(exc)
                log.error("pipeline %s: source cannot connect: %s", self.name, exc, extra=self._ctx)
                raise
            except NotConnected as exc:
                log.warning(
                    "pipeline %s: source not connected (%s); retrying",
                    self.name,
                    exc,
                    extra=self._ctx,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def stop(self) -> None:
        """Begin the shutdown sequence (idempotent)."""
        self.stopping = True
        stop_receiving = getattr(self.source, "stop_receiving", None)
        if stop_receiving is not None:
            stop_receiving()
        self._stop_requested.set()
        self._resumed.set()
        self._room.set()
        self._wake.set()

    async def _drain_on_stop(self) -> None:
        """Stop receiving -> drain within shutdown_timeout -> nack the rest -> close."""
        await self._stop_requested.wait()
        deadline = time.monotonic() + self.shutdown_timeout
        while self._draining() and (remaining := deadline - time.monotonic()) > 0:
            self._room.clear()
            await self._wait(self._room, remaining)
        await self._receive_stopped()
        if self.live:
            log.warning(
                "pipeline %s: %d tasks unfinished at shutdown; handing them back",
                self.name,
                len(self.live),
            )
        for call in list(self._calls):
            call.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
        await self.parking.drain(deadline - time.monotonic())
        self.results.stop()
        for task in list(self.live.values()):
            if task.retry_handle is not None:
                task.retry_handle.cancel()
            for delivery in task.deliveries:
                await delivery.nack()
        self.live.clear()
        await self.store.flush()
        await self.target.close()
        await self.results.close()
        await self.source.close()
        log.info("pipeline %s stopped", self.name, extra=self._ctx)
        raise _Stopped

    async def _receive_stopped(self) -> None:
        """Let the receive loop see ``stopping`` and end (it waits at most about a
        receive timeout); only then may the source close, or a receive still running
        would read from a closed source. What it admitted last is handed back with the
        rest of ``live``."""
        receiving = self._receiving
        if receiving is None or receiving.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(receiving), RECEIVE_STOP_WAIT)
        except TimeoutError:
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)

    def _draining(self) -> bool:
        """Whether in-flight work is left: invocations running, or results not yet
        delivered and settled. Nothing new starts once stopping; queued, retrying and
        key-blocked tasks are handed back rather than waited for."""
        return any(
            t.record.state is TaskState.RUNNING or t.result is not None for t in self.live.values()
        )

    # ----------------------------------------------------------------- pause/resume

    async def pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        self._resumed.clear()
        if isinstance(self.source, Pausable):
            await self.source.pause()
        self._mark_queued(lambda tenant: True, TaskState.PAUSED)
        log.info("pipeline %s paused", self.name, extra=self._ctx)

    async def resume(self) -> None:
        if not self.paused:
            return
        if isinstance(self.source, Pausable):
            await self.source.resume()
        self.paused = False
        self._mark_queued(lambda tenant: tenant not in self.paused_tenants, TaskState.PENDING)
        self._resumed.set()
        self._wake.set()
        log.info("pipeline %s resumed", self.name, extra=self._ctx)

    def pause_tenant(self, tenant: str) -> None:
        if tenant in self.paused_tenants:
            return
        self.paused_tenants.add(tenant)
        self._mark_queued(lambda t: t == tenant, TaskState.PAUSED)
        log.info("pipeline %s: tenant %s paused", self.name, tenant, extra=self._ctx)

    def resume_tenant(self, tenant: str) -> None:
        if tenant not in self.paused_tenants:
            return
        self.paused_tenants.discard(tenant)
        if not self.paused:
            self._mark_queued(lambda t: t == tenant, TaskState.PENDING)
        self._wake.set()
        log.info("pipeline %s: tenant %s resumed", self.name, tenant, extra=self._ctx)

    def _mark_queued(self, which: Any, state: TaskState) -> None:
        for lane in self.all_lanes():
            for task in lane.queue:
                if which(task.record.tenant) and task.record.state is not state:
                    self._move(task, state)

    def held(self, tenant: str) -> bool:
        return self.paused or tenant in self.paused_tenants

    # ----------------------------------------------------------------- receive

    def capacity(self) -> int:
        """How many tasks may be held in memory at once (received, not yet settled): a
        window in flight and one more waiting. (4 windows held batch mode's drain at the
        same rate with ~285 MB peak RSS against ~220 MB.)"""
        limit = self.shared.window.limit + sum(lane.window.limit for lane in self.lanes.values())
        return max(1000, min(20000, 2 * limit * self.per_request))

    async def _receive_loop(self) -> None:
        while not self.stopping:
            if self.paused:
                await self._resumed.wait()
                continue
            room = self.capacity() - len(self.live)
            if room <= 0 and self.isolation:
                await self._parking_step(self.tenancy.buffer_full)
                room = self.capacity() - len(self.live)
            if room <= 0:
                self._room.clear()
                await self._wait(self._room, 1.0)
                continue
            try:
                deliveries = await self.source.receive(self._receive_size(room), 0.25)
            except NotConnected as exc:
                log.warning(
                    "pipeline %s: source lost its connection (%s)", self.name, exc, extra=self._ctx
                )
                await asyncio.sleep(0.5)
                await self._connect()
                continue
            except FatalClientError as exc:
                self.healthy, self.error = False, str(exc)
                log.error(
                    "pipeline %s: source failed for good: %s", self.name, exc, extra=self._ctx
                )
                self.stop()
                return
            if self.isolation:
                await self._parking_step(self.tenancy.park_flooded)
            if deliveries:
                await self._admit_all(deliveries)

    async def _parking_step(self, step: Callable[[], Awaitable[None]]) -> None:
        """Run a parking step of the receive loop; a store failure is logged and the loop
        goes on (parking writes themselves retry until the store is back)."""
        try:
            await step()
        except StoreError as exc:
            self._parking_failed(exc)

    def _parking_failed(self, exc: StoreError) -> None:
        log.warning(
            "pipeline %s: parking needs the task store, which failed: %s",
            self.name,
            exc,
            extra=self._ctx,
        )

    def _receive_size(self, room: int) -> int:
        """How many messages to ask the source for: what fits, up to 1000; more while a
        tenant spills by reference (its messages take no room, and the tenants queued
        behind its flood wait until the source has read past it)."""
        size = min(room, 1000)
        if self.parking.rereads is not None and self.parking.spilling:
            size = max(size, 4000)
        return size

    async def _admit_all(self, deliveries: Sequence[Delivery]) -> None:
        self.m_received.inc(sum(len(d.positions) or 1 for d in deliveries))
        # A delivery with a reference was not decoded: its tenant spills by reference.
        ids = [task_id(self.name, d.event_id) if d.reference is None else "" for d in deliveries]
        finished = await self._finished_ids([i for i in ids if i])
        if finished is None:  # stopping while the store is down: hand them back
            for delivery in deliveries:
                await delivery.nack()
            return
        to_park: list[Task | Delivery] = []
        for delivery, tid in zip(deliveries, ids, strict=True):
            if not tid:
                to_park.append(delivery)
                continue
            live = self.live.get(tid)
            if live is not None:
                live.deliveries.append(delivery)  # settled together with the live task
            elif tid in finished:
                self.m_dedup.inc()
                await delivery.ack()
            else:
                task = self._admit(delivery, tid)
                if task is not None and task.record.tenant in self.parking.spilling:
                    to_park.append(task)
                elif task is not None and self.gates.admit(task.gate, task):
                    self._enqueue(task)
        await self.parking.park_arrivals(to_park, wait=False)
        self._wake.set()

    async def _finished_ids(self, ids: list[str]) -> set[str] | None:
        """Dedup lookup, waiting out a store outage (the deliveries stay in hand)."""
        delay = 0.1
        while ids:
            # A task may be settled while the lookup runs: its record committed after the
            # store read its snapshot, and it left ``live`` before the answer came back.
            # Such ids are caught here, whatever the store (otherwise a copy arriving as
            # its original completes would run a second time).
            try:
                with self.settling() as settled:
                    found = await self.store.finished(ids, since=time.time() - self.dedup_window)
                    return found | settled
            except StoreError as exc:
                if self.stopping:
                    return None
                log.warning(
                    "pipeline %s: task store unavailable (%s); retrying in %.1fs",
                    self.name,
                    exc,
                    delay,
                    extra=self._ctx,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        return set()

    @contextlib.contextmanager
    def settling(self) -> Iterator[set[str]]:
        """A set that collects the id of every task settled while it is open (see
        ``_finished_ids``). Lookups overlap (the receive loop's, the refill's), so each
        set is dropped by identity: two sets with the same ids are equal."""
        settled: set[str] = set()
        self._lookups.append(settled)
        try:
            yield settled
        finally:
            self._lookups = [s for s in self._lookups if s is not settled]

    def _gate_for(self, delivery: Delivery) -> str | None:
        ordering = self.config.ordering
        if ordering is Ordering.KEY:
            return delivery.key
        if ordering is Ordering.PARTITION:
            return delivery.partition or ""
        return None

    def _admit(self, delivery: Delivery, tid: str) -> Task | None:
        """Make a task of a delivery; ``None`` if it failed its checks at once."""
        event = delivery.event
        if event is None:
            event = wrap(delivery.raw, event_id=delivery.event_id, source=f"/bridge/{self.name}")
        record = TaskRecord(
            id=tid,
            pipeline=self.name,
            event_id=delivery.event_id,
            state=TaskState.PENDING,
            key=delivery.key,
            received=delivery.received_at,
        )
        if delivery.decode_error is None:
            record.tenant = self.checks.tenant(delivery, event)
        task = self._track(record, event, delivery)
        if delivery.decode_error is not None:
            self._fail(task, ErrorKind.MALFORMED_MESSAGE, delivery.decode_error, None)
            return None
        problem = self.checks.schema_problem(event)
        if problem is not None:
            self._fail(task, ErrorKind.SCHEMA_VIOLATION, problem, None)
            return None
        return task

    def _track(self, record: TaskRecord, event: CloudEvent, delivery: Delivery) -> Task:
        task = Task(record, event, delivery, self._gate_for(delivery), next(self._arrivals))
        parent = incoming_traceparent(delivery.headers, event.get_attributes().get("traceparent"))
        if self.tracing.enabled:
            task.span = self.tracing.consume(
                pipeline=self.name,
                source_type=self.config.source.type,
                message_id=delivery.event_id,
                parent=parent,
                facts=delivery.attributes,
            )
        task.traceparent = Tracing.traceparent(task.span) or child_traceparent(parent)
        self.live[record.id] = task
        self.tenant_live[record.tenant] += 1
        return task

    def admit_parked(
        self, record: TaskRecord, event: CloudEvent, delivery: Delivery, not_before: float
    ) -> None:
        """Take a task loaded back from the store (see ``consumer_core.parking``)."""
        task = self._track(record, event, delivery)
        if not self.gates.admit(task.gate, task):
            return
        delay = not_before - time.time()
        if delay > 0 and record.state is TaskState.RETRYING:
            task.not_before = not_before
            task.retry_handle = asyncio.get_running_loop().call_later(delay, self._retry_due, task)
        else:
            self._enqueue(task)

    def forget(self, task: Task) -> None:
        """Drop a task from memory (settled, parked, or revoked)."""
        if task.wait_span is not None:
            Tracing.end(task.wait_span)
            task.wait_span = None
        if task.span is not None:
            error = None
            if task.record.state in (TaskState.FAILED, TaskState.CANCELLED):
                error = (task.record.error or {}).get("kind", "failed")
            Tracing.end(task.span, error=error, state=task.record.state.value)
            task.span = None
        if self.live.pop(task.record.id, None) is not None:
            self.tenant_live[task.record.tenant] -= 1
            if self.tenant_live[task.record.tenant] <= 0:
                del self.tenant_live[task.record.tenant]
        self._room.set()

    def lane_for(self, tenant: str) -> Lane[Task]:
        return self.lanes.get(tenant, self.shared)

    def all_lanes(self) -> list[Lane[Task]]:
        return [self.shared, *self.lanes.values()]

    def _enqueue(self, task: Task, *, front: bool = False) -> None:
        tenant = task.record.tenant
        if self.held(tenant) and task.record.state is not TaskState.PAUSED:
            self._move(task, TaskState.PAUSED)
        elif not self.held(tenant) and task.record.state is TaskState.PAUSED:
            self._move(task, TaskState.PENDING)
        self.lane_for(tenant).queue.push(tenant, task, front=front)
        self._wake.set()

    # ----------------------------------------------------------------- dispatch

    async def _dispatch_loop(self) -> None:
        while not self.stopping:
            now = time.monotonic()
            started = False
            if not self.paused:
                for lane in self.all_lanes():
                    started |= self._dispatch_lane(lane, now)
            if not started:
                self._wake.clear()
                await self._wait(self._wake, self._next_wake(now))

    def _next_wake(self, now: float) -> float:
        wait = 1.0
        for lane in self.all_lanes():
            if len(lane.queue) and lane.window.blocked_until > now:
                wait = min(wait, lane.window.blocked_until - now)
            opened = self._batch_open.get(lane.name)
            if opened is not None:
                wait = min(wait, opened + self.config.target.batch_max_wait - now)
        return max(wait, 0.001)

    def _dispatch_lane(self, lane: Lane[Task], now: float) -> bool:
        started = False
        free = lane.free(now)
        skip = self.paused_tenants.__contains__ if self.paused_tenants else None
        while free > 0 and len(lane.queue):
            if self.per_request > 1 and len(lane.queue) < self.per_request:
                opened = self._batch_open.setdefault(lane.name, now)
                if now - opened < self.config.target.batch_max_wait:
                    break
            batch: list[Task] = []
            while len(batch) < self.per_request:
                task = lane.queue.pop(skip)
                if task is None:
                    break
                if not self._dropped_if_revoked(task):
                    batch.append(task)
            self._batch_open.pop(lane.name, None)
            if not batch:
                break
            self._start(lane, batch)
            free -= 1
            started = True
        return started

    def _dropped_if_revoked(self, task: Task) -> bool:
        """Forget a task whose message the source took back (rebalance): the next owner
        of the partition processes it. True if it was dropped."""
        if not task.deliveries[0].revoked:
            return False
        current = [d for d in task.deliveries if not d.revoked]
        if current:
            # The message came back (the partition returned to us): keep the task, with
            # the copy that is ours now.
            task.deliveries = current
            return False
        self.forget(task)
        following = self.gates.release(task.gate)
        if following is not None:
            self._enqueue(following)
        return True

    def _start(self, lane: Lane[Task], batch: list[Task]) -> None:
        wall = time.time()
        for task in batch:
            record = task.record
            if record.dispatched is None:
                record.dispatched = wall
            task.lane = lane
            self.tenant_inflight[record.tenant] += 1
            self._move(task, TaskState.RUNNING)
        lane.inflight += 1
        call = asyncio.create_task(self._invoke(lane, batch), name=f"{self.name}:invoke")
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _invoke(self, lane: Lane[Task], batch: list[Task]) -> None:
        attempt = max(t.record.attempts for t in batch) + 1
        started = time.time()
        for task in batch:
            task.record.attempts += 1
            if task.record.started is None:
                task.record.started = started
        if attempt > 1:
            self.m_retries.inc(sum(1 for t in batch if t.record.attempts > 1))
        t0 = time.monotonic()
        # Registered here, not in ``_start``: a call cancelled before it began never
        # reaches the ``finally`` that drops it.
        self._running[id(batch)] = (t0, batch)
        try:
            with Tracing.active(batch[0].span):
                outcomes = await self.target.invoke(
                    [t.event for t in batch], attempt=attempt, traceparent=batch[0].traceparent
                )
        finally:
            lane.inflight -= 1
            self._running.pop(id(batch), None)
            for task in batch:
                task.lane = None
                self.tenant_inflight[task.record.tenant] -= 1
        now = time.monotonic()
        elapsed = now - t0
        self.m_invoke.observe(elapsed)
        finished = time.time()
        throttled = False
        for task, outcome in zip(batch, outcomes, strict=True):
            task.record.history.append(
                AttemptRecord(
                    number=task.record.attempts,
                    started=started,
                    finished=finished,
                    outcome=outcome.kind.value,
                    status=outcome.status,
                    error=outcome.message or None,
                )
            )
            is_throttle = outcome.kind is OutcomeKind.THROTTLED
            throttled |= is_throttle
            if self.isolation:  # nothing reads the detector otherwise
                self.detector.record(
                    task.record.tenant,
                    ok=outcome.ok,
                    throttled=is_throttle,
                    latency=elapsed,
                    now=now,
                )
            self._settle_attempt(task, outcome)
        self._adjust_window(lane, outcomes, throttled)
        self._wake.set()

    def in_flight(self) -> Iterator[tuple[float, Task]]:
        """Every task in a call now, with when (monotonic) that call began."""
        for began, batch in self._running.values():
            for task in batch:
                yield began, task

    def _adjust_window(
        self, lane: Lane[Task], outcomes: Sequence[Outcome], throttled: bool
    ) -> None:
        window = lane.window
        before = window.limit
        if throttled:
            retry_after = max((o.retry_after or 0.0) for o in outcomes)
            window.on_throttle(now=time.monotonic(), retry_after=retry_after or None)
        elif outcomes and outcomes[0].ok:
            window.on_success(inflight=lane.inflight + 1)
        if window.limit != before:
            direction = "up" if window.limit > before else "down"
            self.res.metrics.window_changes.labels(self.name, lane.name, direction).inc()
            if lane is self.shared:
                self._tell_source_window()

    def _show_lane(self, lane: Lane[Task]) -> None:
        """Export a lane's gauges; they read the lane when scraped, so the hot path never
        touches them."""
        if lane.name in self._lane_gauges:
            return
        m = self.res.metrics
        inflight = m.inflight.labels(self.name, lane.name)
        limit = m.concurrency_limit.labels(self.name, lane.name)
        inflight.set_function(lambda: lane.inflight)
        limit.set_function(lambda: lane.window.limit)
        self._lane_gauges[lane.name] = (inflight, limit)

    def _tell_source_window(self) -> None:
        if isinstance(self.source, FollowsWindow):
            # What may be in flight, never more than the pipeline holds in memory.
            messages = self.shared.window.limit * self.per_request
            self.source.window_changed(min(messages, self.capacity()))

    def _settle_attempt(self, task: Task, outcome: Outcome) -> None:
        if task.cancelled:
            self._finish_cancelled(task)
            return
        if outcome.ok:
            self._succeed(task, outcome)
            return
        kind = outcome.error_kind or ErrorKind.SERVER_ERROR
        if outcome.kind is OutcomeKind.PERMANENT:
            self._fail(task, kind, outcome.message, outcome.status)
            return
        record = task.record
        attempts = record.attempts - record.attempt_base
        delay = self.retry.next_delay(attempts, self.rng)
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        age = time.time() - (record.received or time.time())
        if not self.retry.should_retry(attempt=attempts, age=age, delay=delay):
            if attempts >= self.retry.max_attempts:
                why = f"gave up after {attempts} attempts"
            else:
                kind = ErrorKind.EXPIRED
                why = f"gave up: a retry would pass max_age ({self.retry.max_age:g}s)"
            self._fail(task, kind, f"{outcome.message} ({why})", outcome.status)
            return
        if (
            self.isolation
            and record.tenant in self.parking.spilling
            and self.tenancy.holds_source(task)
        ):
            # Anchored at the next housekeeping tick, which must find it waiting: with a
            # backoff of a few ms it would be running again, holding back the commits.
            delay = max(delay, ANCHOR_WAIT)
        record.error = {"kind": kind.value, "message": outcome.message, "status": outcome.status}
        self._move(task, TaskState.RETRYING)
        task.not_before = time.time() + delay
        task.wait_span = self.tracing.retry_wait(task.span, attempt=attempts, delay=delay)
        task.retry_handle = asyncio.get_running_loop().call_later(delay, self._retry_due, task)

    def _retry_due(self, task: Task) -> None:
        task.retry_handle = None
        task.not_before = 0.0
        Tracing.end(task.wait_span)
        task.wait_span = None
        if task.cancelled or self.stopping or self._dropped_if_revoked(task):
            return
        if task.record.id not in self.live:
            return  # parked meanwhile
        self._enqueue(task, front=True)

    # ----------------------------------------------------------------- outcomes

    def _succeed(self, task: Task, outcome: Outcome) -> None:
        record = task.record
        record.finished = time.time()
        self._move(task, TaskState.SUCCEEDED)
        record.error = None
        task.result = succeeded_event(
            pipeline=self.name,
            original=task.event,
            tenant=record.tenant,
            attempts=record.attempts,
            traceparent=task.traceparent,
            data=outcome.data,
            content_type=outcome.content_type,
        )
        self._finished(task, "succeeded")

    def _fail(self, task: Task, kind: ErrorKind, message: str, status: int | None) -> None:
        record = task.record
        record.finished = time.time()
        self._move(task, TaskState.CANCELLED if kind is ErrorKind.CANCELLED else TaskState.FAILED)
        record.error = {"kind": kind.value, "message": message, "status": status}
        task.result = failed_event(
            pipeline=self.name,
            original=task.event,
            tenant=record.tenant,
            attempts=record.attempts,
            traceparent=task.traceparent,
            kind=kind,
            message=message,
            status=status,
        )
        log.warning(
            "task %s failed (%s): %s",
            record.id,
            kind.value,
            message,
            extra={
                **self._ctx,
                "task_id": record.id,
                "tenant": record.tenant,
                "trace_id": task.traceparent[3:35],
                "attempts": record.attempts,
            },
        )
        self._finished(task, "cancelled" if kind is ErrorKind.CANCELLED else "failed")

    def _finish_cancelled(self, task: Task) -> None:
        self._fail(task, ErrorKind.CANCELLED, "cancelled by an operator", None)

    def _finished(self, task: Task, outcome: str) -> None:
        # Written once delivered (consumer_core.delivery), before its message is settled.
        self._finished_counters[outcome].inc()
        following = self.gates.release(task.gate)
        if following is not None:
            self._enqueue(following)
        self.results.put(task)

    def settled(self, task: Task) -> None:
        """Called by the deliver loop once the task's messages were settled (its record is
        durable, terminal and delivered: what the dedup lookup finds)."""
        for settled in self._lookups:
            settled.add(task.record.id)
        self.forget(task)

    def _move(self, task: Task, to: TaskState) -> None:
        try:
            task.record.move(to)
        except IllegalTransition as exc:
            self.res.metrics.illegal_transitions.labels(self.name).inc()
            log.error("%s (a bug: please report it)", exc)
            return
        task.dirty = True

    # ----------------------------------------------------------------- housekeeping

    async def _housekeeping_loop(self) -> None:
        last_lease = time.monotonic()
        while not self.stopping:
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)
            now = time.monotonic()
            self._checkpoint(time.time())
            try:
                if self.isolation:
                    self.tenancy.isolate(now)
                    await self.tenancy.spill()
                    self.tenancy.reclaim(now)
                if now - last_lease > 5.0:
                    last_lease = now
                    await self.parking.keep_leases()
            except StoreError as exc:
                self._parking_failed(exc)

    async def _refill_loop(self) -> None:
        """Load parked tasks back as their lanes make room: every 20 ms while any are
        parked, every 200 ms otherwise."""
        while not self.stopping:
            await asyncio.sleep(0.02 if self.parking.counts else 0.2)
            try:
                await self.parking.refill()
            except StoreError as exc:
                log.warning(
                    "pipeline %s: loading parked tasks failed: %s", self.name, exc, extra=self._ctx
                )
                await asyncio.sleep(1.0)

    def _checkpoint(self, wall: float) -> None:
        """Hand the store the records of tasks live for more than ``CHECKPOINT_AGE``.

        Most tasks finish within milliseconds and are written once, when delivered;
        only those that linger (slow, retrying, paused, waiting on a key) have their
        intermediate states written, so other instances and the task list see them.
        """
        horizon = wall - CHECKPOINT_AGE
        for task in self.live.values():
            record = task.record
            if task.dirty and record.delivered is None and (record.received or wall) <= horizon:
                task.dirty = False
                self.store.save(record)

    # ----------------------------------------------------------------- operator actions

    def cancel(self, tid: str) -> str | None:
        """Cancel a live task; return the state it was in, or ``None`` if not live here."""
        task = self.live.get(tid)
        if task is None or task.result is not None or task.cancelled:
            return None
        state = task.record.state
        task.cancelled = True
        if state is TaskState.RUNNING:
            return state.value  # its result is discarded when the call returns
        if task.retry_handle is not None:
            task.retry_handle.cancel()
            task.retry_handle = None
        elif self.lane_for(task.record.tenant).queue.remove(task.record.tenant, task):
            pass
        elif self.gates.remove(task.gate, task):
            gate, task.gate = task.gate, None  # it never held its key: do not release it
            self._finish_cancelled(task)
            task.gate = gate
            return state.value
        else:
            return state.value
        self._finish_cancelled(task)
        return state.value

    def matching(self, query: TaskQuery, states: Sequence[TaskState]) -> list[Task]:
        """Live tasks matching a task filter (pipeline, tenant, received range) in ``states``."""
        if query.pipeline is not None and query.pipeline != self.name:
            return []
        found = []
        for task in self.live.values():
            record = task.record
            received = record.received or 0.0
            if (
                record.state in states
                and (query.tenant is None or record.tenant == query.tenant)
                and (query.received_from is None or received >= query.received_from)
                and (query.received_to is None or received < query.received_to)
            ):
                found.append(task)
        return found

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        lag = self.source.lag() if isinstance(self.source, ReportsLag) else {}
        for partition, value in lag.items():
            self.res.metrics.consumer_lag.labels(self.name, partition).set(value)
        state = "running"
        if not self.healthy:
            state = "failed"
        elif self.stopping:
            state = "stopping"
        elif self.paused:
            state = "paused"
        inflight = sum(lane.inflight for lane in self.all_lanes())
        return {
            "name": self.name,
            "state": state,
            "error": self.error,
            "source": self.config.source.type,
            "ordering": self.config.ordering.value,
            "lanes": [
                {
                    "name": lane.name,
                    "tenant": lane.tenant,
                    "window": lane.window.limit,
                    "min": lane.window.minimum,
                    "max": lane.window.maximum,
                    "inflight": lane.inflight,
                    "queued": len(lane.queue),
                    "parked": self.parking.counts.get(lane.tenant, 0) if lane.tenant else 0,
                }
                for lane in self.all_lanes()
            ],
            "isolated_tenants": sorted(self.lanes),
            "paused_tenants": sorted(self.paused_tenants),
            "inflight": inflight,
            "tasks": len(self.live),
            "waiting_on_key": self.gates.waiting_count,
            "parked": sum(self.parking.counts.values()),
            "lag": dict(lag),
        }

    # ----------------------------------------------------------------- helpers

    @staticmethod
    async def _wait(event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)


class _Stopped(Exception):
    """Raised by the shutdown task to end the pipeline's TaskGroup."""


async def run_pipeline(pipeline: Pipeline) -> None:
    """Run a pipeline until it stopped (the normal end of ``Pipeline.run``)."""
    try:
        await pipeline.run()
    except* _Stopped:
        pass
    except* FatalClientError as group:
        # This pipeline is done for; the others go on and /readyz reports it.
        pipeline.healthy = False
        pipeline.error = str(group.exceptions[0])
