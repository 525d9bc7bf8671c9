"""The store contract against the in-memory store, and what it does not promise.

A memory store lives in one process and is never shared, so the contract's premise
(two instances from one factory stand for two processes sharing a store) cannot hold.
Here the factory returns the one store of the process on every call, which keeps every
contract test meaningful for one process; the test about instances seeing each other's
writes is replaced by one asserting the documented opposite: another instance (another
process, or this one after a restart) starts empty.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumer_core.store.base import TaskQuery, TaskStore, open_store
from consumer_core.store.memory import MemoryTaskStore
from consumer_core.store.sqlite import SqliteDatabases
from consumer_core.tasks import TaskState
from tests.contract.store_contract import (
    T0,
    StoreContract,
    StoreFactory,
    finished,
    parked_item,
    record,
)


class TestMemoryStore(StoreContract):
    @pytest.fixture
    async def make_store(self) -> AsyncIterator[StoreFactory]:
        store = MemoryTaskStore()
        await store.open()

        async def make() -> TaskStore:
            return store

        yield make
        await store.close()

    async def test_instances_see_each_others_flushed_writes(self, make_store: StoreFactory) -> None:
        """Overrides the contract: nothing is shared and nothing survives a restart."""
        store = await make_store()
        task = record("a", tenant="acme")
        store.save(task)
        store.save(finished("b", T0))
        await store.set_paused("orders", True)
        await store.request_cancel(["orders:c"], at=T0)
        await store.park([parked_item("p")], owner="a", lease_until=T0)
        await store.flush()
        assert await store.get(task.id) == task
        assert await store.finished(["orders:b"], since=T0) == {"orders:b"}

        await store.close()
        restarted = MemoryTaskStore()
        await restarted.open()
        assert await restarted.get(task.id) is None
        assert await restarted.query(TaskQuery()) == []
        assert await restarted.finished(["orders:a", "orders:b"], since=0.0) == set()
        assert await restarted.paused_scopes() == set()
        assert await restarted.cancel_requests(since=0.0) == []
        assert await restarted.parked_counts("orders", owner="a") == {}
        assert await restarted.claim_parked("orders", owner="b", now=T0 + 1, until=T0) == 0
        await restarted.close()

    async def test_saved_snapshot_ignores_later_changes(self, store: TaskStore) -> None:
        task = record("a", state=TaskState.RUNNING)
        store.save(task)
        task.state = TaskState.RETRYING
        stored = await store.get(task.id)
        assert stored is not None
        assert stored.state is TaskState.RUNNING
        stored.state = TaskState.FAILED
        assert [r.state for r in await store.query(TaskQuery())] == [TaskState.RUNNING]

    async def test_purged_task_saved_again_is_listed_once(self, store: TaskStore) -> None:
        store.save(finished("a", T0))
        assert await store.purge(finished_before=T0 + 1) == 1
        store.save(record("a"))
        store.save(record("b"))
        assert [r.id for r in await store.query(TaskQuery())] == ["orders:a", "orders:b"]
        assert await store.purge(finished_before=T0 + 1) == 0

    async def test_unparking_many_rows_keeps_order(self, store: TaskStore) -> None:
        await store.park([parked_item(f"p{i:03d}") for i in range(300)], owner="a", lease_until=T0)
        rows = await store.parked("orders", "acme", owner="a", after=0, limit=1000)
        await store.unpark([r.seq for r in rows[:250]])
        left = await store.parked("orders", "acme", owner="a", after=0, limit=1000)
        assert [r.task_id for r in left] == [f"orders:p{i:03d}" for i in range(250, 300)]
        assert await store.parked_counts("orders", owner="a") == {"acme": 50}
        await store.park([parked_item("late")], owner="b", lease_until=T0 + 100)
        assert await store.claim_parked("orders", owner="b", now=T0 + 1, until=T0 + 60) == 50
        taken = await store.parked("orders", "acme", owner="b", after=0, limit=1000)
        assert [r.task_id for r in taken] == [r.task_id for r in left] + ["orders:late"]
        assert await store.parked_counts("orders", owner="a") == {}


def test_open_store_memory_url(tmp_path: Path) -> None:
    databases = SqliteDatabases()
    one = open_store("memory://", tmp_path, databases)
    two = open_store("memory://", tmp_path, databases)
    assert isinstance(one, MemoryTaskStore)
    assert isinstance(two, MemoryTaskStore)
    assert one is not two
    assert list(tmp_path.iterdir()) == []
