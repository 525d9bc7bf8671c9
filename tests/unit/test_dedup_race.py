"""The dedup lookup and a task settled while it runs.

A store answers from what was committed when its read began (SQLite's reader, the
PostgreSQL pool, Redis). A task whose record commits after that, and which is settled
(and leaves ``live``) before the answer comes back, is in neither place the admit step
looks: ``_finished_ids`` must still report it, or a copy of its message that arrived as
it completed would run a second time.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

from consumer_core.pipeline import Pipeline
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
    return SimpleNamespace(
        name="orders",
        store=store,
        dedup_window=3600.0,
        stopping=False,
        _ctx={},
        _lookups=[],
        forgotten=forgotten,
        forget=lambda task: forgotten.append(task.record.id),
    )


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
