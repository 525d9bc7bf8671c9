"""The dedup lookups (of arrivals, and of parked rows loaded back) and a task settled
while they run.

A store answers from what was committed when its read began (SQLite's reader, the
PostgreSQL pool, Redis). A task whose record commits after that, and which is settled
(and leaves ``live``) before the answer comes back, is in neither place the admit step
looks: ``_finished_ids`` must still report it, or a copy of its message that arrived as
it completed would run a second time.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import SimpleNamespace

from consumer_core.codec import dumps_text
from consumer_core.events import attributes_json, wrap
from consumer_core.parking import Parking
from consumer_core.pipeline import Pipeline
from consumer_core.store.base import Parked
from consumer_core.store.memory import MemoryTaskStore
from consumer_core.tasks import TaskRecord, TaskState


class SnapshotStore(MemoryTaskStore):
    """Answers ``finished`` from the records as they were when the call began, after
    ``release`` is set (the read is still running until then)."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def finished(self, ids, *, since):
        snapshot = await super().finished(ids, since=since)
        self.reading.set()
        await self.release.wait()
        return snapshot


def _pipeline(store: MemoryTaskStore) -> SimpleNamespace:
    forgotten: list[str] = []
    p = SimpleNamespace(
        name="orders",
        store=store,
        dedup_window=3600.0,
        stopping=False,
        _ctx={},
        _lookups=[],
        forgotten=forgotten,
        forget=lambda task: forgotten.append(task.record.id),
    )
    p.settling = lambda: Pipeline.settling(p)  # type: ignore[arg-type]
    return p


def _settled_task(store: MemoryTaskStore, event_id: str) -> SimpleNamespace:
    """A task whose record is now durable, terminal and delivered."""
    record = TaskRecord(
        id=f"orders:{event_id}",
        pipeline="orders",
        event_id=event_id,
        state=TaskState.SUCCEEDED,
        tenant="default",
    )
    record.received = record.finished = record.delivered = time.time()
    store.save(record)
    return SimpleNamespace(record=record)


async def test_a_task_settled_during_the_lookup_counts_as_finished():
    store = SnapshotStore()
    await store.open()
    p = _pipeline(store)
    ids = ["orders:a", "orders:b"]
    lookup = asyncio.create_task(Pipeline._finished_ids(p, ids))  # type: ignore[arg-type]
    await store.reading.wait()  # the store has read: "a" was not committed yet
    Pipeline.settled(p, _settled_task(store, "a"))  # type: ignore[arg-type]
    assert p.forgotten == ["orders:a"]  # gone from live before the answer comes back
    store.release.set()
    assert await lookup == {"orders:a"}
    assert p._lookups == []  # the lookup's set is dropped with it


async def test_a_task_settled_between_lookups_is_not_carried_over():
    store = SnapshotStore()
    store.release.set()
    await store.open()
    p = _pipeline(store)
    assert await Pipeline._finished_ids(p, ["orders:a"]) == set()  # type: ignore[arg-type]
    Pipeline.settled(p, _settled_task(store, "a"))  # type: ignore[arg-type]
    assert p._lookups == []  # nothing collects while no lookup runs...
    assert await Pipeline._finished_ids(p, ["orders:a"]) == {"orders:a"}  # type: ignore[arg-type]


async def test_an_anchored_copy_whose_task_settles_while_it_loads_is_not_run_again():
    """A task in a long call is anchored: a copy of it is parked while it runs on. The
    copy is loaded back as the task finishes: the store read misses the task's record
    (committed just after), and the task has left ``live`` by the time the row is gone
    through. The row is deleted unrun, not admitted as a second run of the task."""
    store = SnapshotStore()
    await store.open()
    admitted: list[str] = []
    p = _pipeline(store)
    p.live = {}
    p.admit_parked = lambda record, event, delivery, not_before: admitted.append(record.id)
    parking = object.__new__(Parking)  # only what loading needs
    parking.pipeline, parking.store, parking.owner = p, store, "me"
    parking.parking_ids, parking.counts, parking.rereads = set(), Counter({"default": 1}), None
    record = TaskRecord(id="orders:a", pipeline="orders", event_id="a", state=TaskState.PENDING)
    row = Parked(
        pipeline="orders",
        tenant="default",
        task_id="orders:a",
        attributes=attributes_json(wrap(b"{}", event_id="a", source="/test")),
        data=b"{}",
        record=dumps_text(record.to_json()),
    )
    await store.park([row], owner="me", lease_until=time.time() + 30)
    rows = await store.parked("orders", "default", owner="me", after=0, limit=10)
    load = asyncio.create_task(parking._load(rows, {r.seq: (0.0, []) for r in rows}))
    await store.reading.wait()  # the store has read: "a" was not finished yet
    Pipeline.settled(p, _settled_task(store, "a"))  # type: ignore[arg-type]
    store.release.set()
    assert await load == rows[0].seq
    assert admitted == []
    assert await store.parked("orders", "default", owner="me", after=0, limit=10) == []
    assert parking.counts["default"] == 0
    assert p._lookups == []


async def test_overlapping_lookups_each_keep_their_own_set():
    """The receive loop's lookup and a refill's overlap, and end in either order. Two
    open sets with the same ids are equal: each must be dropped by identity, or the
    first to end drops the other's and the second fails (or stops collecting)."""
    store = MemoryTaskStore()
    await store.open()
    p = _pipeline(store)
    with p.settling() as first:
        with p.settling() as second:
            assert first == second
            assert first is not second
        # ``second`` ended first: ``first`` still collects
        Pipeline.settled(p, _settled_task(store, "a"))  # type: ignore[arg-type]
        assert first == {"orders:a"}
        assert second == set()
    assert p._lookups == []
