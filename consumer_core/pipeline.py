"""One pipeline: source -> ordering gates -> AIMD window -> target -> sinks -> settle.

Three named loops share the pipeline's state, all on one event loop (no locks):

* **receive** takes deliveries from the source only while the buffer has room, drops
  those whose task already finished (dedup) and admits the rest through the ordering
  gates into ``ready``;
* **dispatch** starts invocations from ``ready`` while the AIMD window has room (one
  event per request, or up to ``batch.max_events`` in batch mode);
* **deliver** takes finished tasks in the order they finished, emits their result
  events to every sink (retrying sinks until they take them), makes the task records
  durable, and only then acks the source messages.

A task keeps its ordering key from admission until its invocation reached a final
outcome, retries included, so same-key tasks never overlap and finish in order; the
deliver loop is FIFO, so their results are emitted in that order too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

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
from consumer_core.errors import FatalClientError, IllegalTransition, NotConnected
from consumer_core.events import CloudEvent, failed_event, succeeded_event, wrap
from consumer_core.flow import AimdWindow
from consumer_core.ordering import KeyedQueues
from consumer_core.outcome import ErrorKind, Outcome, OutcomeKind
from consumer_core.payload import PayloadChecks
from consumer_core.retry import RetryPolicy
from consumer_core.tasks import AttemptRecord, TaskRecord, TaskState, task_id
from consumer_core.tracing import child_traceparent, incoming_traceparent

__all__ = ["Pipeline", "Task"]

log = logging.getLogger(__name__)

DEDUP_WINDOW = 24 * 3600.0
"""How long a finished task's id suppresses a redelivered copy of its message."""


class Task:
    """A task in memory, from receipt until its source message is settled."""

    __slots__ = (
        "cancelled",
        "deliveries",
        "event",
        "gate",
        "record",
        "result",
        "retry_handle",
        "t0",
        "traceparent",
    )

    def __init__(
        self, record: TaskRecord, event: CloudEvent, delivery: Delivery, gate: str | None
    ) -> None:
        self.record = record
        self.event = event
        self.deliveries: list[Delivery] = [delivery]
        """The message, plus redelivered copies that arrived while it was live."""
        self.gate = gate
        """The ordering key this task holds while it runs (``None``: unordered)."""
        self.t0 = time.monotonic()
        self.traceparent = ""
        self.result: CloudEvent | None = None
        self.retry_handle: asyncio.TimerHandle | None = None
        self.cancelled = False


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
    ) -> None:
        self.config = config
        self.name = config.name
        self.source = source
        self.target = target
        self.res = resources
        self.store = resources.store
        self.shutdown_timeout = shutdown_timeout
        c = config.concurrency
        self.window = AimdWindow(initial=c.initial, minimum=c.min, maximum=c.max)
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
        self.ready: deque[Task] = deque()
        self.live: dict[str, Task] = {}
        self.inflight = 0
        """Requests in flight (a batch counts once)."""
        self.paused = False
        self.stopping = False
        self.healthy = True
        self.error: str | None = None
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._room = asyncio.Event()
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._calls: set[asyncio.Task[None]] = set()
        self.results = ResultDelivery(self, on_success=on_success, on_failure=on_failure)
        m = resources.metrics
        self.m_received = m.messages_received.labels(self.name)
        self.m_invoke = m.invoke_duration.labels(self.name)
        self.m_inflight = m.inflight.labels(self.name, "shared")
        self.m_limit = m.concurrency_limit.labels(self.name, "shared")
        self.m_retries = m.retries.labels(self.name)
        self.m_dedup = m.deduplicated.labels(self.name)
        self.m_limit.set(self.window.limit)

    # ----------------------------------------------------------------- lifecycle

    async def run(self) -> None:
        """Connect, then run the loops until ``stop`` drained the pipeline."""
        await self._connect()
        self._tell_source_window()
        await self.results.connect()
        start = getattr(self.target, "start", None)
        if start is not None:
            await start()
        log.info("pipeline %s started", self.name)
        async with asyncio.TaskGroup() as group:
            group.create_task(self._receive_loop(), name=f"{self.name}:receive")
            group.create_task(self._dispatch_loop(), name=f"{self.name}:dispatch")
            group.create_task(self.results.run(), name=f"{self.name}:deliver")
            group.create_task(self._drain_on_stop(group), name=f"{self.name}:shutdown")

    async def _connect(self) -> None:
        delay = 0.1
        while True:
            try:
                await self.source.connect()
                return
            except NotConnected as exc:
                log.warning("pipeline %s: source not connected (%s); retrying", self.name, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    def stop(self) -> None:
        """Begin the shutdown sequence (idempotent)."""
        self.stopping = True
        self._stop_requested.set()
        self._resumed.set()
        self._room.set()
        self._wake.set()

    async def _drain_on_stop(self, group: asyncio.TaskGroup) -> None:
        """Stop receiving -> drain within shutdown_timeout -> nack the rest -> close."""
        await self._stop_requested.wait()
        deadline = time.monotonic() + self.shutdown_timeout
        while self.live and (remaining := deadline - time.monotonic()) > 0:
            self._room.clear()
            await self._wait(self._room, remaining)
        if self.live:
            log.warning(
                "pipeline %s: %d tasks unfinished at shutdown; handing them back",
                self.name,
                len(self.live),
            )
        for call in list(self._calls):
            call.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)
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
        log.info("pipeline %s stopped", self.name)
        raise _Stopped

    # ----------------------------------------------------------------- pause/resume

    async def pause(self) -> None:
        self.paused = True
        self._resumed.clear()
        if isinstance(self.source, Pausable):
            await self.source.pause()
        for task in self.ready:
            self._move(task, TaskState.PAUSED)
        log.info("pipeline %s paused", self.name)

    async def resume(self) -> None:
        if isinstance(self.source, Pausable):
            await self.source.resume()
        for task in self.ready:
            if task.record.state is TaskState.PAUSED:
                self._move(task, TaskState.PENDING)
        self.paused = False
        self._resumed.set()
        self._wake.set()
        log.info("pipeline %s resumed", self.name)

    # ----------------------------------------------------------------- receive

    def capacity(self) -> int:
        """How many tasks may be held in memory at once (received, not yet settled)."""
        return max(1000, min(20000, 4 * self.window.limit * self.per_request))

    async def _receive_loop(self) -> None:
        while not self.stopping:
            if self.paused:
                await self._resumed.wait()
                continue
            room = self.capacity() - len(self.live)
            if room <= 0:
                self._room.clear()
                await self._wait(self._room, 1.0)
                continue
            try:
                deliveries = await self.source.receive(min(room, 1000), 0.25)
            except NotConnected as exc:
                log.warning("pipeline %s: source lost its connection (%s)", self.name, exc)
                await asyncio.sleep(0.5)
                await self._connect()
                continue
            except FatalClientError as exc:
                self.healthy, self.error = False, str(exc)
                log.error("pipeline %s: source failed for good: %s", self.name, exc)
                self.stop()
                return
            if deliveries:
                await self._admit_all(deliveries)

    async def _admit_all(self, deliveries: Sequence[Delivery]) -> None:
        self.m_received.inc(len(deliveries))
        ids = [task_id(self.name, d.event_id) for d in deliveries]
        finished = await self.store.finished(ids, since=time.time() - DEDUP_WINDOW)
        for delivery, tid in zip(deliveries, ids, strict=True):
            live = self.live.get(tid)
            if live is not None:
                live.deliveries.append(delivery)  # settled together with the live task
            elif tid in finished:
                self.m_dedup.inc()
                await delivery.ack()
            else:
                self._admit(delivery, tid)
        self._wake.set()

    def _gate_for(self, delivery: Delivery) -> str | None:
        ordering = self.config.ordering
        if ordering is Ordering.KEY:
            return delivery.key
        if ordering is Ordering.PARTITION:
            return delivery.partition or ""
        return None

    def _admit(self, delivery: Delivery, tid: str) -> None:
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
        task = Task(record, event, delivery, self._gate_for(delivery))
        parent = incoming_traceparent(delivery.headers, event.get_attributes().get("traceparent"))
        task.traceparent = child_traceparent(parent)
        self.live[tid] = task
        if delivery.decode_error is not None:
            self.store.save(record)
            self._fail(task, ErrorKind.MALFORMED_MESSAGE, delivery.decode_error, None)
            return
        record.tenant = self.checks.tenant(delivery, event)
        problem = self.checks.schema_problem(event)
        self.store.save(record)
        if problem is not None:
            self._fail(task, ErrorKind.SCHEMA_VIOLATION, problem, None)
            return
        if self.gates.admit(task.gate, task):
            self._enqueue(task)

    def _enqueue(self, task: Task) -> None:
        if self.paused:
            self._move(task, TaskState.PAUSED)
        self.ready.append(task)
        self._wake.set()

    # ----------------------------------------------------------------- dispatch

    async def _dispatch_loop(self) -> None:
        batch_mode = self.per_request > 1
        max_wait = self.config.target.batch_max_wait
        batch_open: float | None = None  # when a partial batch started waiting to fill
        while not self.stopping:
            now = time.monotonic()
            free = 0 if self.paused else self.window.free(self.inflight, now)
            if not self.ready or free <= 0:
                self._wake.clear()
                wait = max(0.001, self.window.blocked_until - now) if free <= 0 else 1.0
                await self._wait(self._wake, min(wait, 1.0))
                continue
            if batch_mode and len(self.ready) < self.per_request:
                if batch_open is None:
                    batch_open = now
                remaining = batch_open + max_wait - now
                if remaining > 0:
                    self._wake.clear()
                    await self._wait(self._wake, remaining)
                    continue
            batch_open = None
            batch = [self.ready.popleft() for _ in range(min(self.per_request, len(self.ready)))]
            batch = [task for task in batch if not self._dropped_if_revoked(task)]
            if batch:
                self._start(batch)

    def _dropped_if_revoked(self, task: Task) -> bool:
        """Forget a task whose message the source took back (rebalance): the next owner
        of the partition processes it. True if it was dropped."""
        if not task.deliveries[0].revoked:
            return False
        self.live.pop(task.record.id, None)
        following = self.gates.release(task.gate)
        if following is not None:
            self._enqueue(following)
        self._room.set()
        return True

    def _start(self, batch: list[Task]) -> None:
        wall = time.time()
        for task in batch:
            record = task.record
            if record.dispatched is None:
                record.dispatched = wall
            self._move(task, TaskState.RUNNING)
        self.inflight += 1
        self.m_inflight.set(self.inflight)
        call = asyncio.create_task(self._invoke(batch), name=f"{self.name}:invoke")
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)

    async def _invoke(self, batch: list[Task]) -> None:
        attempt = max(t.record.attempts for t in batch) + 1
        started = time.time()
        for task in batch:
            task.record.attempts = attempt if self.per_request == 1 else task.record.attempts + 1
            if task.record.started is None:
                task.record.started = started
        if attempt > 1:
            self.m_retries.inc(len(batch))
        t0 = time.monotonic()
        try:
            outcomes = await self.target.invoke(
                [t.event for t in batch], attempt=attempt, traceparent=batch[0].traceparent
            )
        finally:
            self.inflight -= 1
            self.m_inflight.set(self.inflight)
        elapsed = time.monotonic() - t0
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
            throttled |= outcome.kind is OutcomeKind.THROTTLED
            self._settle_attempt(task, outcome)
        self._adjust_window(outcomes, throttled)
        self._wake.set()

    def _adjust_window(self, outcomes: Sequence[Outcome], throttled: bool) -> None:
        before = self.window.limit
        if throttled:
            retry_after = max((o.retry_after or 0.0) for o in outcomes)
            self.window.on_throttle(now=time.monotonic(), retry_after=retry_after or None)
        elif outcomes and outcomes[0].kind is OutcomeKind.SUCCEEDED:
            self.window.on_success(inflight=self.inflight + 1)
        if self.window.limit != before:
            direction = "up" if self.window.limit > before else "down"
            self.res.metrics.window_changes.labels(self.name, "shared", direction).inc()
            self.m_limit.set(self.window.limit)
            self._tell_source_window()

    def _tell_source_window(self) -> None:
        if isinstance(self.source, FollowsWindow):
            self.source.window_changed(self.window.limit * self.per_request)

    def _settle_attempt(self, task: Task, outcome: Outcome) -> None:
        if task.cancelled:
            self._finish_cancelled(task)
            return
        if outcome.kind is OutcomeKind.SUCCEEDED:
            self._succeed(task, outcome)
            return
        kind = outcome.error_kind or ErrorKind.SERVER_ERROR
        if outcome.kind is OutcomeKind.PERMANENT:
            self._fail(task, kind, outcome.message, outcome.status)
            return
        attempts = task.record.attempts
        delay = self.retry.next_delay(attempts, self.rng)
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        age = time.monotonic() - task.t0
        if not self.retry.should_retry(attempt=attempts, age=age, delay=delay):
            why = (
                f"gave up after {attempts} attempts"
                if attempts >= self.retry.max_attempts
                else f"gave up: retry would pass max_age ({self.retry.max_age:g}s)"
            )
            self._fail(task, kind, f"{outcome.message} ({why})", outcome.status)
            return
        task.record.error = {
            "kind": kind.value,
            "message": outcome.message,
            "status": outcome.status,
        }
        self._move(task, TaskState.RETRYING)
        task.retry_handle = asyncio.get_running_loop().call_later(delay, self._retry_due, task)

    def _retry_due(self, task: Task) -> None:
        task.retry_handle = None
        if task.cancelled or self.stopping or self._dropped_if_revoked(task):
            return
        if self.paused:
            self._move(task, TaskState.PAUSED)
        self.ready.appendleft(task)
        self._wake.set()

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
        log.warning("task %s failed (%s): %s", record.id, kind.value, message)
        self._finished(task, "cancelled" if kind is ErrorKind.CANCELLED else "failed")

    def _finish_cancelled(self, task: Task) -> None:
        self._fail(task, ErrorKind.CANCELLED, "cancelled by an operator", None)

    def _finished(self, task: Task, outcome: str) -> None:
        self.store.save(task.record)
        self.res.metrics.tasks_finished.labels(self.name, outcome).inc()
        following = self.gates.release(task.gate)
        if following is not None:
            self._enqueue(following)
        self.results.put(task)

    def settled(self, task: Task) -> None:
        """Called by the deliver loop once the task's messages were acked."""
        self.live.pop(task.record.id, None)
        if not self._room.is_set():
            self._room.set()

    def _move(self, task: Task, to: TaskState) -> None:
        try:
            task.record.move(to)
        except IllegalTransition as exc:
            self.res.metrics.illegal_transitions.labels(self.name).inc()
            log.error("%s (a bug: please report it)", exc)
            return
        self.store.save(task.record)

    # ----------------------------------------------------------------- operator actions

    def cancel(self, tid: str) -> str | None:
        """Cancel a live task; return the state it was in, or ``None`` if not live here."""
        task = self.live.get(tid)
        if task is None or task.result is not None:
            return None
        state = task.record.state
        task.cancelled = True
        if state is TaskState.RUNNING:
            return state.value  # its result is discarded when the call returns
        if task.retry_handle is not None:
            task.retry_handle.cancel()
            task.retry_handle = None
        elif task in self.ready:
            self.ready.remove(task)
        elif self.gates.remove(task.gate, task):
            self._finish_cancelled_waiting(task)
            return state.value
        else:
            return state.value
        self._finish_cancelled(task)
        return state.value

    def _finish_cancelled_waiting(self, task: Task) -> None:
        # It never held its key, so finishing it must not release the key.
        gate, task.gate = task.gate, None
        self._finish_cancelled(task)
        task.gate = gate

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        lag = self.source.lag() if isinstance(self.source, ReportsLag) else {}
        for partition, value in lag.items():
            self.res.metrics.consumer_lag.labels(self.name, partition).set(value)
        return {
            "name": self.name,
            "state": "stopping"
            if self.stopping
            else "paused"
            if self.paused
            else "running"
            if self.healthy
            else "failed",
            "error": self.error,
            "source": self.config.source.type,
            "ordering": self.config.ordering.value,
            "lanes": [
                {
                    "name": "shared",
                    "window": self.window.limit,
                    "min": self.window.minimum,
                    "max": self.window.maximum,
                    "inflight": self.inflight,
                }
            ],
            "inflight": self.inflight,
            "tasks": len(self.live),
            "ready": len(self.ready),
            "waiting_on_key": self.gates.waiting_count,
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
