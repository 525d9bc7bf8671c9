"""Parking: keeping a tenant's tasks in the durable store instead of in memory.

An isolated tenant whose backlog passes ``isolation.spill_after`` is *spilled*: every
task of it that is not running is written to the store (``TaskStore.park``), and only
then are their source messages acked, so a stuck tenant neither fills memory nor holds
back a partition's commits. While a tenant is spilling, its new arrivals go straight to
the store too, so its tasks stay in arrival order. Re-driven tasks are parked the same
way. ``refill`` loads parked tasks back, a bounded number per tenant at a time, in
``seq`` order; a parked task's row is deleted once its result was delivered.

Spilling by reference: where the source can read a message again (``Rereads``: Kafka),
a spilling tenant's new arrivals are not even decoded. The source hands them over as
references; consecutive ones of a tenant and partition share one row (``task_id``
``ref:<first reference>``, the offsets in ``record``), so a flood of a million messages
costs a few thousand small rows, not a million copies.
When such a row's turn comes, the source reads the message again; one it no longer has
(retention removed it) fails as ``expired``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Sequence, Set
from typing import TYPE_CHECKING, Any

from consumer_core.codec import dumps, dumps_text, loads
from consumer_core.contracts import Delivery, Rereads
from consumer_core.errors import ConnectorError, StoreError
from consumer_core.events import attributes_json, from_stored, wrap
from consumer_core.outcome import ErrorKind
from consumer_core.store.base import Parked
from consumer_core.tasks import TaskRecord, TaskState, task_id

if TYPE_CHECKING:
    from consumer_core.pipeline import Pipeline, Task

__all__ = ["LEASE", "REFERENCE", "Parking"]

log = logging.getLogger(__name__)

LEASE = 30.0
"""Seconds an instance's parked rows stay its own without a renewal."""
REFERENCE = "ref:"
"""How the ``task_id`` of a row that holds source references, not a message, starts."""
RUN = 256
"""Most references one row holds (consecutive arrivals of one tenant and partition)."""
WARN_EVERY = 10.0
"""Seconds between two warnings that parked references cannot be read back."""
MAX_WRITES = 2
"""Parking writes the receive loop may leave pending before it waits for one."""
READING_PAST = 0.1
"""Seconds after the source last handed over references of a tenant during which that
tenant's parked rows are not loaded back, unless it has nothing left in memory and the
source has caught up (no full read within as long)."""


class ParkedDelivery(Delivery):
    """A task loaded back from the store: ack deletes its row (a row of references once
    every message it names was acked: ``left`` counts them down)."""

    __slots__ = ("left", "parking", "seq")

    def __init__(
        self, parking: Parking, seq: int, left: list[int] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.parking = parking
        self.seq = seq
        self.left = left

    async def _ack(self) -> None:
        if self.left is not None:
            self.left[0] -= 1
            if self.left[0] > 0:
                return
        await self.parking.unpark(self.seq, self.attributes.get("tenant", ""))

    async def _nack(self, delay: float | None) -> None:
        """The row stays; it is loaded again after a restart."""


class AnchoredDelivery(Delivery):
    """Stands in for a source message that was settled once its task was anchored in
    the store (``Parking.anchor``): settling it does nothing (the row is deleted when it
    is loaded back and joins the task, or finds it finished)."""

    __slots__ = ()

    def __init__(self, original: Delivery) -> None:
        super().__init__(
            event=original.event,
            event_id=original.event_id,
            raw=original.raw,
            key=original.key,
            partition=original.partition,
            headers=original.headers,
            attributes=original.attributes,
        )
        self.received_at = original.received_at

    async def _ack(self) -> None:
        return None

    async def _nack(self, delay: float | None) -> None:
        return None


class Parking:
    def __init__(self, pipeline: Pipeline, owner: str) -> None:
        self.pipeline = pipeline
        self.store = pipeline.store
        self.owner = owner
        self.spilling: set[str] = set()
        """Tenants whose new arrivals go straight to the store."""
        self.counts: Counter[str] = Counter()
        """Parked rows per tenant (loaded or not) that are not yet deleted."""
        self._cursor: dict[str, int] = {}
        """Per tenant, the highest ``seq`` loaded into memory."""
        self.parking_ids: set[str] = set()
        """Tasks being written to the store right now (still live until written)."""
        self._parked_total = pipeline.res.metrics.parked.labels(pipeline.name)
        self._reread_total = pipeline.res.metrics.reread.labels(pipeline.name)
        source = pipeline.source
        self.rereads: Rereads | None = (
            source
            if isinstance(source, Rereads)
            and pipeline.isolation
            and pipeline.thresholds.spill_by_reference
            else None
        )
        """The source, when spilling tenants' arrivals are parked as references."""
        self.by_reference: set[str] = set()
        """Spilling tenants whose arrivals were parked as references."""
        self._reread_warned = -WARN_EVERY
        self._writes: deque[asyncio.Task[None]] = deque()
        """Pending parking writes, oldest first."""
        self._arriving: dict[str, float] = {}
        """Per tenant, when the source last handed over references of it."""

    async def start(self) -> None:
        now = time.time()
        claimed = await self.store.claim_parked(
            self.pipeline.name, owner=self.owner, now=now, until=now + LEASE
        )
        if claimed:
            log.info("pipeline %s: took over %d parked tasks", self.pipeline.name, claimed)
        self.counts = Counter(await self.store.parked_counts(self.pipeline.name, owner=self.owner))
        self._cursor.clear()
        self._spill_parked()

    def _spill_parked(self) -> None:
        """Tenants with parked rows (from before a restart, or taken over) spill: their
        new arrivals queue behind those rows, so that none overtakes an older message of
        its key. They stop spilling once the rows are worked off (``refill``)."""
        for tenant in self.counts:
            if tenant not in self.spilling:
                self.spilling.add(tenant)
                log.info(
                    "pipeline %s: tenant %s has %d parked rows: its new messages queue behind",
                    self.pipeline.name,
                    tenant,
                    self.counts[tenant],
                )

    async def keep_leases(self) -> None:
        now = time.time()
        await self.store.renew_leases(self.owner, until=now + LEASE)
        claimed = await self.store.claim_parked(
            self.pipeline.name, owner=self.owner, now=now, until=now + LEASE
        )
        if claimed:
            log.info("pipeline %s: took over %d parked tasks", self.pipeline.name, claimed)
            self.counts = Counter(
                await self.store.parked_counts(self.pipeline.name, owner=self.owner)
            )
            self._spill_parked()

    def _row(self, task: Task) -> Parked:
        delivery = task.deliveries[0]
        record = task.record
        stored = record.to_json()
        if record.state is TaskState.RUNNING:
            # An anchored task in flight: a copy loaded back (after a restart) is pending,
            # since the call it was in is gone with the instance that made it.
            stored["state"] = TaskState.PENDING.value
        return Parked(
            pipeline=self.pipeline.name,
            tenant=record.tenant,
            task_id=record.id,
            key=delivery.key,
            partition=delivery.partition,
            attributes=attributes_json(task.event),
            data=_data(task),
            headers=dumps_text({**delivery.headers, "traceparent": task.traceparent}),
            record=dumps_text(stored),
            not_before=task.not_before,
        )

    async def park(self, tasks: Sequence[Task]) -> None:
        """Move ``tasks`` (none of them running) to the store, then settle their messages.
        A task never attempted whose message its source can read again is parked as a
        reference too (a flood's first thousand tasks are spilled in milliseconds)."""
        # Arrival order: a task loaded back from the store keeps its original receipt
        # time, so parking it again keeps it ahead of later arrivals of its key.
        items: list[Task | Delivery | _Reread] = []
        for task in sorted(tasks, key=_arrival):
            where = self._rereadable(task)
            items.append(task if where is None else _Reread(task, *where))
        await self.park_arrivals(items)

    def _rereadable(self, task: Task) -> tuple[str, int] | None:
        if self.rereads is None or task.record.attempts or task.cancelled:
            return None
        if task.retry_handle is not None or len(task.deliveries) != 1:
            return None
        return self.rereads.position(task.deliveries[0])

    @staticmethod
    def is_parked(delivery: Delivery) -> bool:
        """Whether ``delivery`` is a row of the store rather than a source message."""
        return isinstance(delivery, ParkedDelivery | AnchoredDelivery)

    async def anchor(self, tasks: Sequence[Task]) -> None:
        """Write copies of ``tasks``, which stay in memory (retrying, or in a call), then
        settle their source messages, so they hold back no commit. The copy is loaded
        back like any parked row: while the task is still live it joins it (and is
        deleted with it); once the task finished it is deleted unrun."""
        if not tasks:
            return
        rows = [self._row(task) for task in tasks]
        for row in rows:
            self.counts[row.tenant] += 1
        previous = self._writes[-1] if self._writes else None
        if previous is not None:
            await asyncio.wait([previous])
        try:
            await self.store.park(rows, owner=self.owner, lease_until=time.time() + LEASE)
        except BaseException:
            for row in rows:
                self.counts[row.tenant] -= 1
            raise
        for task in tasks:
            kept: list[Delivery] = []
            for delivery in task.deliveries:
                if self.is_parked(delivery):
                    kept.append(delivery)
                else:
                    await delivery.ack()
                    kept.append(AnchoredDelivery(delivery))
            task.deliveries = kept
        log.info(
            "pipeline %s: %d tasks of tenant %s (retrying, or in a long call) anchored in "
            "the store",
            self.pipeline.name,
            len(tasks),
            tasks[0].record.tenant,
        )

    async def park_arrivals(
        self, items: Sequence[Task | Delivery | _Reread], *, wait: bool = True
    ) -> None:
        """Park ``items`` in this order: tasks, and deliveries the source handed over as
        references (``Delivery.reference``), then settle their messages. Writes happen
        one after another in the order asked; with ``wait=False`` this returns before
        the write is done (at most ``MAX_WRITES`` pending), so the receive loop reads on
        while the store writes."""
        if not items:
            return
        self._note_references(items)
        entries = _runs(items)
        rows: list[Parked] = []
        settle: list[tuple[list[Task], list[Delivery]]] = []
        for entry in entries:
            if isinstance(entry, _Run):
                rows.append(self._reference_row(entry))
                settle.append((entry.tasks, entry.deliveries))
            else:
                rows.append(self._row(entry))
                settle.append(([entry], list(entry.deliveries)))
        # What to settle is fixed now: while the rows are written, ``refill`` may read
        # them back and must not hand them to these (still live) tasks.
        for row in rows:
            self.parking_ids.add(row.task_id)
            self.counts[row.tenant] += 1  # counted before the write: see refill
        count = sum(len(e.offsets) if isinstance(e, _Run) else 1 for e in entries)
        previous = self._writes[-1] if self._writes else None
        write = asyncio.create_task(self._write(rows, settle, count, previous))
        self._writes.append(write)
        write.add_done_callback(self._writes.remove)
        if wait:
            await write
            return
        while len(self._writes) > MAX_WRITES:
            await asyncio.wait([self._writes[0]])

    def _note_references(self, items: Sequence[Task | Delivery | _Reread]) -> None:
        now = time.monotonic()
        for item in items:
            if not isinstance(item, Delivery) or item.tenant is None:
                continue
            self._arriving[item.tenant] = now
            self.spilling.add(item.tenant)  # it may have stopped since the source looked
            if item.tenant not in self.by_reference:
                self.by_reference.add(item.tenant)
                log.info(
                    "pipeline %s: tenant %s spills by reference: its new messages stay in "
                    "the source until its lane has room",
                    self.pipeline.name,
                    item.tenant,
                )

    async def _write(
        self,
        rows: list[Parked],
        settle: list[tuple[list[Task], list[Delivery]]],
        count: int,
        previous: asyncio.Task[None] | None,
    ) -> None:
        """Write ``rows`` (after ``previous``), retrying through a store outage, then
        settle their messages and forget their tasks."""
        if previous is not None:
            await asyncio.wait([previous])
        delay = 0.1
        while True:
            try:
                await self.store.park(rows, owner=self.owner, lease_until=time.time() + LEASE)
                break
            except StoreError as exc:
                log.warning(
                    "pipeline %s: parking %d rows failed (%s); retrying in %.1fs",
                    self.pipeline.name,
                    len(rows),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        for row, (tasks, deliveries) in zip(rows, settle, strict=True):
            for delivery in deliveries:
                await delivery.ack()
            for task in tasks:
                self.pipeline.forget(task)
            self.parking_ids.discard(row.task_id)
        self._parked_total.inc(count)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for pending writes; cancel the rest (their messages
        stay unsettled and come again)."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=max(timeout, 0.0))
        for write in list(self._writes):
            write.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)

    def _reference_row(self, run: _Run) -> Parked:
        received = run.received
        return Parked(
            pipeline=self.pipeline.name,
            tenant=run.tenant,
            task_id=f"{REFERENCE}{run.prefix}/{run.offsets[0]}",
            attributes="",
            record=dumps({"received": received, "offsets": run.offsets}).decode(),
        )

    async def redrive(self, records: Sequence[TaskRecord]) -> int:
        """Park failed tasks to run again with a fresh attempt budget."""
        rows = []
        now = time.time()
        for record in records:
            if record.event is None or record.state not in (TaskState.FAILED, TaskState.CANCELLED):
                continue
            from consumer_core.events import from_structured_bytes

            event = from_structured_bytes(dumps(record.event))
            record.move(TaskState.PENDING)
            record.attempt_base = record.attempts
            record.error = None
            record.event = None
            record.received = now
            record.dispatched = record.started = record.finished = record.delivered = None
            self.store.save(record)
            data = event.get_data()
            rows.append(
                Parked(
                    pipeline=self.pipeline.name,
                    tenant=record.tenant,
                    task_id=record.id,
                    key=record.key,
                    partition=None,
                    attributes=attributes_json(event),
                    data=data if isinstance(data, bytes) else None,
                    record=dumps_text(record.to_json()),
                )
            )
        await self.store.flush()
        await self.store.park(rows, owner=self.owner, lease_until=now + LEASE)
        for row in rows:
            self.counts[row.tenant] += 1
        return len(rows)

    async def unpark(self, seq: int, tenant: str) -> None:
        self.counts[tenant] -= 1
        if self.counts[tenant] <= 0:
            del self.counts[tenant]
        await self.store.unpark([seq])

    async def refill(self) -> None:
        """Load parked tasks back, up to a bounded number in memory per tenant."""
        pipeline = self.pipeline
        now = time.monotonic()
        for tenant in list(self.counts):
            if tenant in pipeline.paused_tenants:
                continue
            if now - self._arriving.get(tenant, 0.0) < READING_PAST and (
                pipeline.tenant_live[tenant] or self._source_behind(now)
            ):
                # The source is still reading past this tenant's flood: reading its
                # messages back now would compete with that (and with everyone queued
                # behind the flood). It is served from what it has in memory meanwhile;
                # with nothing left there, as soon as the source has caught up.
                continue
            lane = pipeline.lane_for(tenant)
            target = max(64, 4 * lane.window.limit * pipeline.per_request)
            in_memory = pipeline.tenant_live[tenant]
            if in_memory >= target // 2:
                continue
            rows = await self.store.parked(
                pipeline.name,
                tenant,
                owner=self.owner,
                after=self._cursor.get(tenant, 0),
                limit=target - in_memory,
            )
            if not rows:
                continue
            # A row of references holds up to RUN tasks: load (and parse) no more rows
            # than needed.
            held: dict[int, tuple[float, list[str]]] = {}
            wanted, size = target - in_memory, 0
            for count, row in enumerate(rows, 1):
                held[row.seq] = _references(row)
                size += len(held[row.seq][1]) or 1
                if size >= wanted:
                    rows = rows[:count]
                    break
            loaded = await self._load(rows, held)
            if loaded:
                self._cursor[tenant] = loaded
        for tenant in list(self.spilling):
            if self.counts.get(tenant, 0) == 0 and (
                pipeline.tenant_live[tenant] < pipeline.thresholds.spill_after // 2
            ):
                self.spilling.discard(tenant)
                self.by_reference.discard(tenant)
                log.info("pipeline %s: tenant %s no longer spills", pipeline.name, tenant)

    def _source_behind(self, now: float) -> bool:
        """Whether the source read as much as it could take within ``READING_PAST``."""
        rereads = self.rereads
        return rereads is not None and now - rereads.full_read_at < READING_PAST

    async def _load(self, rows: Sequence[Parked], held: dict[int, tuple[float, list[str]]]) -> int:
        """Take rows back into the pipeline, in order; return the last ``seq`` taken (0 if
        none). ``held`` is each row's ``_references``, by ``seq``. Stops at a row whose
        task is still being parked (it is read again later) and at a reference the source
        cannot read back now."""
        pipeline = self.pipeline
        # A row whose task is still being written stops the load: it and the rows after
        # it are read again later (their messages too, so none is read back for nothing).
        stop = next((i for i, r in enumerate(rows) if r.task_id in self.parking_ids), len(rows))
        rows = rows[:stop]
        if not rows:
            return 0
        # An anchored task may finish while this looks: its record is committed after the
        # store read began, and it leaves ``live`` before the rows are gone through. The
        # pipeline adds every task settled meanwhile to ``settled`` (as for its own dedup
        # lookups); else such a row would run its task a second time.
        with pipeline.settling() as settled:
            return await self._load_rows(rows, held, settled)

    async def _load_rows(
        self,
        rows: Sequence[Parked],
        held: dict[int, tuple[float, list[str]]],
        settled: set[str],
    ) -> int:
        pipeline = self.pipeline
        last = 0
        finished = await self.store.finished([r.task_id for r in rows], since=0.0)
        rows, reread = await self._reread(rows, held)
        for row in rows:
            if row.task_id in self.parking_ids:
                break  # it began to be written again meanwhile
            last = row.seq
            if row.task_id in finished or row.task_id in settled:
                await self.unpark(row.seq, row.tenant)
                continue
            if row.task_id.startswith(REFERENCE):
                await self._load_references(row, *held[row.seq], reread, settled)
                continue
            record = TaskRecord.from_json(loads(row.record))
            event = from_stored(row.attributes, row.data)
            delivery = ParkedDelivery(
                self,
                row.seq,
                event=event,
                event_id=record.event_id,
                raw=row.data or b"",
                key=row.key,
                partition=row.partition,
                headers=loads(row.headers),
                attributes={"tenant": row.tenant, "bridge.parked.seq": row.seq},
            )
            live = pipeline.live.get(row.task_id)
            if live is not None:
                # The same task is already in memory (its message was delivered again):
                # this row is settled together with it.
                live.deliveries.append(delivery)
                continue
            pipeline.admit_parked(record, event, delivery, row.not_before)
        return last

    async def _reread(
        self, rows: Sequence[Parked], held: dict[int, tuple[float, list[str]]]
    ) -> tuple[Sequence[Parked], dict[str, tuple[Delivery, bool]]]:
        """Read the messages of reference rows (``held``: by row ``seq``) back from the
        source: the rows that can be loaded now and, by reference, each message found and
        whether it already ran."""
        references = [ref for row in rows for ref in held[row.seq][1]]
        if not references:
            return rows, {}
        source = self.pipeline.source
        try:
            if not isinstance(source, Rereads):
                raise ConnectorError(
                    f"parked rows hold references, but a {self.pipeline.config.source.type} "
                    "source cannot read messages again"
                )
            messages = await source.reread(references)
            self._reread_total.inc(len(messages))
        except ConnectorError as exc:
            now = time.monotonic()
            if now - self._reread_warned > WARN_EVERY:  # refill tries again every 20 ms
                self._reread_warned = now
                log.warning(
                    "pipeline %s: reading spilled messages back from the source: %s "
                    "(retrying; this is logged at most every %.0fs)",
                    self.pipeline.name,
                    exc,
                    WARN_EVERY,
                )
            first = next(i for i, r in enumerate(rows) if r.task_id.startswith(REFERENCE))
            return rows[:first], {}
        name = self.pipeline.name
        ids = {ref: task_id(name, m.event_id) for ref, m in messages.items()}
        done = await self.store.finished(list(ids.values()), since=0.0)
        return rows, {ref: (m, ids[ref] in done) for ref, m in messages.items()}

    async def _load_references(
        self,
        row: Parked,
        received: float,
        references: list[str],
        reread: dict[str, tuple[Delivery, bool]],
        settled: Set[str],
    ) -> None:
        left = [len(references)]
        for reference in references:
            delivery = ParkedDelivery(
                self,
                row.seq,
                left,
                event_id=reference,
                event=None,
                attributes={"tenant": row.tenant, "bridge.parked.seq": row.seq},
            )
            delivery.received_at = received
            found = reread.get(reference)
            if found is None:
                self._gone(row, reference, delivery)
            else:
                await self._admit_reread(delivery, *found, settled)

    def _gone(self, row: Parked, reference: str, delivery: ParkedDelivery) -> None:
        """Fail the task of a spilled message its source no longer has."""
        pipeline = self.pipeline
        log.error(
            "pipeline %s: spilled message %s of tenant %s is no longer in the source "
            "(its retention or compaction removed it before its turn came)",
            pipeline.name,
            reference,
            row.tenant,
        )
        event = wrap(b"", event_id=reference, source=f"/bridge/{pipeline.name}")
        record = TaskRecord(
            id=task_id(pipeline.name, reference),
            pipeline=pipeline.name,
            event_id=reference,
            state=TaskState.PENDING,
            tenant=row.tenant,
            received=delivery.received_at,
        )
        task = pipeline._track(record, event, delivery)
        reason = f"spilled message {reference} was removed from the source before it ran"
        pipeline._fail(task, ErrorKind.EXPIRED, reason, None)

    async def _admit_reread(
        self, delivery: ParkedDelivery, message: Delivery, already_ran: bool, settled: Set[str]
    ) -> None:
        pipeline = self.pipeline
        delivery.event, delivery.event_id = message.event, message.event_id
        delivery.raw, delivery.key, delivery.partition = message.raw, message.key, message.partition
        delivery.headers = message.headers
        delivery.attributes = {**message.attributes, **delivery.attributes}
        delivery.decode_error = message.decode_error
        tid = task_id(pipeline.name, message.event_id)
        live = pipeline.live.get(tid)
        if live is not None:
            live.deliveries.append(delivery)
        elif already_ran or tid in settled:
            await delivery.ack()
        else:
            admitted = pipeline._admit(delivery, tid)
            if admitted is not None and pipeline.gates.admit(admitted.gate, admitted):
                pipeline._enqueue(admitted)


def _references(row: Parked) -> tuple[float, list[str]]:
    """When a row of references was parked and the references it holds (none for a row
    that holds its message)."""
    if not row.task_id.startswith(REFERENCE):
        return 0.0, []
    contents = loads(row.record)
    prefix = row.task_id[len(REFERENCE) :].rpartition("/")[0]
    received = float(contents.get("received") or time.time())
    return received, [f"{prefix}/{offset}" for offset in contents["offsets"]]


class _Reread:
    """A task parked as a reference to its message (``Parking.park``)."""

    __slots__ = ("place", "position", "task")

    def __init__(self, task: Task, place: str, position: int) -> None:
        self.task = task
        self.place = place
        self.position = position


class _Run:
    """Consecutive references of one tenant and place, parked as one row: the
    deliveries to ack and the tasks to forget once it is written."""

    __slots__ = ("deliveries", "offsets", "prefix", "received", "tasks", "tenant")

    def __init__(self, tenant: str, prefix: str, received: float) -> None:
        self.tenant = tenant
        self.prefix = prefix
        self.received = received
        self.offsets: list[int] = []
        self.deliveries: list[Delivery] = []
        self.tasks: list[Task] = []

    def extends(self, tenant: str, prefix: str) -> bool:
        return tenant == self.tenant and prefix == self.prefix and len(self.offsets) < RUN


def _runs(items: Sequence[Task | Delivery | _Reread]) -> list[Task | _Run]:
    """``items`` in order, consecutive references of one tenant and place grouped (at
    most ``RUN`` positions to a group, a delivery's never split)."""
    entries: list[Task | _Run] = []
    for item in items:
        if isinstance(item, _Reread):
            tenant, place, received = item.task.record.tenant, item.place, item.task.record.received
        elif isinstance(item, Delivery):
            assert item.reference is not None
            assert item.tenant is not None
            tenant, place, received = item.tenant, item.reference, item.received_at
        else:
            entries.append(item)
            continue
        last = entries[-1] if entries else None
        if not isinstance(last, _Run) or not last.extends(tenant, place):
            last = _Run(tenant, place, received or time.time())
            entries.append(last)
        if isinstance(item, _Reread):
            last.offsets.append(item.position)
            last.deliveries.extend(item.task.deliveries)
            last.tasks.append(item.task)
        else:
            last.offsets.extend(item.positions)
            last.deliveries.append(item)
    return entries


def _arrival(task: Task) -> tuple[float, int]:
    return (task.record.received or 0.0, task.seq)


def _data(task: Task) -> bytes | None:
    data = task.event.get_data()
    return data if isinstance(data, bytes) or data is None else str(data).encode()
