"""Parking: keeping a tenant's tasks in the durable store instead of in memory.

An isolated tenant whose backlog passes ``isolation.spill_after`` is *spilled*: every
task of it that is not running is written to the store (``TaskStore.park``), and only
then are their source messages acked, so a stuck tenant neither fills memory nor holds
back a partition's commits. While a tenant is spilling, its new arrivals go straight to
the store too, so its tasks stay in arrival order. Re-driven tasks are parked the same
way. ``refill`` loads parked tasks back, a bounded number per tenant at a time, in
``seq`` order; a parked task's row is deleted once its result was delivered.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from consumer_core.contracts import Delivery
from consumer_core.events import attributes_json, from_stored
from consumer_core.store.base import Parked
from consumer_core.tasks import TaskRecord, TaskState

if TYPE_CHECKING:
    from consumer_core.pipeline import Pipeline, Task

__all__ = ["LEASE", "Parking"]

log = logging.getLogger(__name__)

LEASE = 30.0
"""Seconds an instance's parked rows stay its own without a renewal."""


class ParkedDelivery(Delivery):
    """A task loaded back from the store: ack deletes its row."""

    __slots__ = ("parking", "seq")

    def __init__(self, parking: Parking, seq: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.parking = parking
        self.seq = seq

    async def _ack(self) -> None:
        await self.parking.unpark(self.seq, self.attributes.get("tenant", ""))

    async def _nack(self, delay: float | None) -> None:
        """The row stays; it is loaded again after a restart."""


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

    async def start(self) -> None:
        now = time.time()
        claimed = await self.store.claim_parked(
            self.pipeline.name, owner=self.owner, now=now, until=now + LEASE
        )
        if claimed:
            log.info("pipeline %s: took over %d parked tasks", self.pipeline.name, claimed)
        self.counts = Counter(await self.store.parked_counts(self.pipeline.name, owner=self.owner))
        self._cursor.clear()

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

    def _row(self, task: Task) -> Parked:
        delivery = task.deliveries[0]
        record = task.record
        return Parked(
            pipeline=self.pipeline.name,
            tenant=record.tenant,
            task_id=record.id,
            key=delivery.key,
            partition=delivery.partition,
            attributes=attributes_json(task.event),
            data=_data(task),
            headers=json.dumps({**delivery.headers, "traceparent": task.traceparent}),
            record=json.dumps(record.to_json()),
            not_before=task.not_before,
        )

    async def park(self, tasks: Sequence[Task]) -> None:
        """Move ``tasks`` (none of them running) to the store, then settle their messages."""
        if not tasks:
            return
        # Arrival order: a task loaded back from the store keeps its original receipt
        # time, so parking it again keeps it ahead of later arrivals of its key.
        ordered = sorted(tasks, key=lambda t: (t.record.received or 0.0, t.seq))
        # What to settle is fixed now: while the rows are written, ``refill`` may read
        # them back and must not hand them to these (still live) tasks.
        settle = [(task, list(task.deliveries)) for task in ordered]
        for task in ordered:
            self.parking_ids.add(task.record.id)
            self.counts[task.record.tenant] += 1  # counted before the write: see refill
        try:
            await self.store.park(
                [self._row(t) for t in ordered], owner=self.owner, lease_until=time.time() + LEASE
            )
        except BaseException:
            for task in ordered:
                self.parking_ids.discard(task.record.id)
                self.counts[task.record.tenant] -= 1
            raise
        for task, deliveries in settle:
            for delivery in deliveries:
                await delivery.ack()
            self.pipeline.forget(task)
            self.parking_ids.discard(task.record.id)
        self._parked_total.inc(len(ordered))

    async def redrive(self, records: Sequence[TaskRecord]) -> int:
        """Park failed tasks to run again with a fresh attempt budget."""
        rows = []
        now = time.time()
        for record in records:
            if record.event is None or record.state not in (TaskState.FAILED, TaskState.CANCELLED):
                continue
            from consumer_core.events import from_structured_bytes

            event = from_structured_bytes(json.dumps(record.event).encode())
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
                    record=json.dumps(record.to_json()),
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
        for tenant in list(self.counts):
            if tenant in pipeline.paused_tenants:
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
            loaded = await self._load(rows)
            if loaded:
                self._cursor[tenant] = loaded
        for tenant in list(self.spilling):
            if self.counts.get(tenant, 0) == 0 and (
                pipeline.tenant_live[tenant] < pipeline.thresholds.spill_after // 2
            ):
                self.spilling.discard(tenant)
                log.info("pipeline %s: tenant %s no longer spills", pipeline.name, tenant)

    async def _load(self, rows: Sequence[Parked]) -> int:
        """Take rows back into the pipeline, in order; return the last ``seq`` taken (0 if
        none). Stops at a row whose task is still being parked: it is read again later."""
        pipeline = self.pipeline
        last = 0
        finished = await self.store.finished([r.task_id for r in rows], since=0.0)
        for row in rows:
            if row.task_id in self.parking_ids:
                break
            last = row.seq
            if row.task_id in finished:
                await self.unpark(row.seq, row.tenant)
                continue
            record = TaskRecord.from_json(json.loads(row.record))
            event = from_stored(row.attributes, row.data)
            delivery = ParkedDelivery(
                self,
                row.seq,
                event=event,
                event_id=record.event_id,
                raw=row.data or b"",
                key=row.key,
                partition=row.partition,
                headers=json.loads(row.headers),
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


def _data(task: Task) -> bytes | None:
    data = task.event.get_data()
    return data if isinstance(data, bytes) or data is None else str(data).encode()
