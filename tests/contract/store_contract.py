"""What every task store promises, written once and run against each backend.

A backend's test module subclasses ``StoreContract`` and overrides the ``make_store``
fixture: it yields a factory returning a new, *opened* store instance on one shared,
empty backend namespace (a fresh database file, key prefix or schema), and closes the
instances and removes the namespace at teardown. Two instances from one factory stand
for two bridge processes sharing a store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from consumer_core.store.base import Parked, TaskQuery, TaskStore
from consumer_core.tasks import TERMINAL, AttemptRecord, TaskRecord, TaskState

StoreFactory = Callable[[], Awaitable[TaskStore]]

T0 = 1_700_000_000.123456
"""A timestamp with all the precision a float of this size holds."""


def record(
    event_id: str,
    *,
    pipeline: str = "orders",
    state: TaskState = TaskState.PENDING,
    tenant: str = "default",
    received: float | None = T0,
    delivered: float | None = None,
) -> TaskRecord:
    return TaskRecord(
        id=f"{pipeline}:{event_id}",
        pipeline=pipeline,
        event_id=event_id,
        state=state,
        tenant=tenant,
        received=received,
        delivered=delivered,
    )


def finished(event_id: str, at: float, state: TaskState = TaskState.SUCCEEDED) -> TaskRecord:
    """A task that reached ``state`` and whose result was delivered at ``at``."""
    done = record(event_id, state=state, delivered=at)
    done.finished = at - 0.5
    return done


def full_record() -> TaskRecord:
    """A record whose every field differs from its default."""
    return TaskRecord(
        id="orders:e-1",
        pipeline="orders",
        event_id="e-1",
        state=TaskState.FAILED,
        tenant="acme",
        key="customer-7",
        attempts=3,
        attempt_base=1,
        received=T0,
        dispatched=T0 + 0.001,
        started=T0 + 0.25,
        finished=T0 + 1.5,
        delivered=T0 + 1.75,
        error={"kind": "http_status", "status": 503, "message": "unavailable: ünïcode"},
        history=[
            AttemptRecord(number=1, started=T0 + 0.25, finished=T0 + 0.5, outcome="retryable"),
            AttemptRecord(
                number=2,
                started=T0 + 1.0,
                finished=T0 + 1.5,
                outcome="permanent",
                status=400,
                error="bad request",
            ),
        ],
        event={
            "specversion": "1.0",
            "id": "e-1",
            "source": "/shop",
            "type": "order.created",
            "data": {"items": [1, 2.5, None, True], "note": "ﬁne \u2603"},
        },
        result={
            "specversion": "1.0",
            "id": "r-1",
            "source": "/bridge/pipelines/orders",
            "type": "bridge.task.succeeded",
            "subject": "e-1",
            "data": {"blob": "y" * 1000},
        },
    )


async def all_pages(store: TaskStore, query: TaskQuery) -> list[str]:
    """Every id the query matches, read page by page with the cursor."""
    ids: list[str] = []
    after: str | None = None
    while True:
        page = await store.query(dataclasses.replace(query, after=after))
        ids.extend(r.id for r in page)
        if len(page) < query.limit:
            return ids
        after = page[-1].id


def parked_item(task: str, *, tenant: str = "acme", data: bytes | None = b"\x00\xff") -> Parked:
    return Parked(
        pipeline="orders",
        tenant=tenant,
        task_id=f"orders:{task}",
        key="k",
        partition="3",
        attributes='{"id":"' + task + '"}',
        data=data,
        headers='{"h":"v"}',
        record='{"id":"orders:' + task + '"}',
        not_before=T0,
    )


class StoreContract:
    """The store contract; subclasses provide ``make_store``."""

    @pytest.fixture
    async def make_store(self) -> StoreFactory:
        raise NotImplementedError("a backend's test class provides make_store")

    @pytest.fixture
    async def store(self, make_store: StoreFactory) -> TaskStore:
        return await make_store()

    # Records: write-behind, snapshots, reads.

    async def test_round_trip_keeps_every_field(self, make_store: StoreFactory) -> None:
        original = full_record()
        defaults = TaskRecord(id="x", pipeline="x", event_id="x", state=TaskState.PENDING)
        unset = [
            f.name
            for f in dataclasses.fields(TaskRecord)
            if getattr(original, f.name) == getattr(defaults, f.name)
        ]
        assert unset == [], "full_record() must set every field; extend it"
        writer, reader = await make_store(), await make_store()
        writer.save(original)
        await writer.flush()
        read = await reader.get(original.id)
        assert read == original
        assert await writer.get(original.id) == original
        # Stage durations are not stored; the API's document derives them again.
        assert read is not None
        assert read.to_json() == original.to_json()
        assert read.to_json()["durations"]["total"] is not None

    async def test_latest_snapshot_wins(self, make_store: StoreFactory) -> None:
        writer, reader = await make_store(), await make_store()
        task = record("a")
        writer.save(task)
        writer.save(dataclasses.replace(task, state=TaskState.RUNNING, attempts=1))
        await writer.flush()
        stored = await reader.get(task.id)
        assert stored is not None
        assert stored.state is TaskState.RUNNING
        task.state, task.attempts = TaskState.RETRYING, 2
        writer.save(task)
        await writer.flush()
        stored = await reader.get(task.id)
        assert stored is not None
        assert (stored.state, stored.attempts) == (TaskState.RETRYING, 2)

    async def test_get_sees_unflushed_saves(self, store: TaskStore) -> None:
        task = record("a", state=TaskState.RUNNING)
        store.save(task)
        assert await store.get(task.id) == task
        assert await store.get("orders:missing") is None

    async def test_flush_with_nothing_saved_returns(self, store: TaskStore) -> None:
        await store.flush()
        await store.flush()

    # Dedup.

    async def test_finished_only_for_terminal_and_delivered(self, store: TaskStore) -> None:
        for state in TERMINAL:
            store.save(finished(f"done-{state}", T0, state))
        store.save(record("undelivered", state=TaskState.SUCCEEDED))
        store.save(record("running-but-stamped", state=TaskState.RUNNING, delivered=T0))
        store.save(record("pending"))
        await store.flush()
        ids = [
            *(f"orders:done-{state}" for state in TERMINAL),
            "orders:undelivered",
            "orders:running-but-stamped",
            "orders:pending",
            "orders:never-seen",
        ]
        assert await store.finished(ids, since=0.0) == {f"orders:done-{s}" for s in TERMINAL}
        assert await store.finished([], since=0.0) == set()

    async def test_finished_respects_since(self, store: TaskStore) -> None:
        store.save(finished("old", T0))
        store.save(finished("new", T0 + 100))
        await store.flush()
        ids = ["orders:old", "orders:new"]
        assert await store.finished(ids, since=T0 + 50) == {"orders:new"}
        assert await store.finished(ids, since=T0 + 100) == {"orders:new"}  # inclusive
        assert await store.finished(ids, since=T0 + 100.001) == set()

    async def test_finished_answers_large_batches(self, store: TaskStore) -> None:
        for i in range(0, 2500, 2):
            store.save(finished(f"e{i}", T0))
        await store.flush()
        ids = [f"orders:e{i}" for i in range(2500)]
        assert await store.finished(ids, since=T0) == set(ids[::2])

    async def test_redriven_task_is_no_longer_finished(self, store: TaskStore) -> None:
        task = finished("a", T0, TaskState.FAILED)
        store.save(task)
        await store.flush()
        task.state, task.delivered = TaskState.PENDING, None
        store.save(task)
        await store.flush()
        assert await store.finished([task.id], since=0.0) == set()

    # Queries.

    async def test_query_filters(self, store: TaskStore) -> None:
        store.save(record("1", state=TaskState.RUNNING, tenant="acme"))
        store.save(record("2", state=TaskState.FAILED, tenant="acme"))
        store.save(record("3", state=TaskState.RUNNING, tenant="globex"))
        store.save(record("4", pipeline="billing", state=TaskState.RUNNING, tenant="acme"))
        await store.flush()

        async def ids(**filters: Any) -> list[str]:
            return [r.id for r in await store.query(TaskQuery(**filters))]

        assert await ids() == ["billing:4", "orders:1", "orders:2", "orders:3"]
        assert await ids(pipeline="orders") == ["orders:1", "orders:2", "orders:3"]
        assert await ids(state=TaskState.RUNNING) == ["billing:4", "orders:1", "orders:3"]
        assert await ids(tenant="acme") == ["billing:4", "orders:1", "orders:2"]
        assert await ids(pipeline="orders", state=TaskState.RUNNING, tenant="acme") == ["orders:1"]
        assert await ids(pipeline="orders", tenant="globex") == ["orders:3"]
        assert await ids(pipeline="nope") == []
        assert await ids(state=TaskState.PAUSED) == []

    async def test_query_time_range_is_half_open(self, store: TaskStore) -> None:
        for i in range(5):
            store.save(record(str(i), received=T0 + i))
        store.save(record("no-time", received=None))
        await store.flush()
        page = await store.query(TaskQuery(received_from=T0 + 1, received_to=T0 + 3))
        assert [r.id for r in page] == ["orders:1", "orders:2"]
        page = await store.query(TaskQuery(received_from=T0 + 3))
        assert [r.id for r in page] == ["orders:3", "orders:4"]
        page = await store.query(TaskQuery(received_to=T0 + 1))
        assert [r.id for r in page] == ["orders:0"]

    async def test_query_sees_its_own_unflushed_saves(self, store: TaskStore) -> None:
        store.save(record("a"))
        assert [r.id for r in await store.query(TaskQuery())] == ["orders:a"]

    async def test_query_follows_state_changes(self, store: TaskStore) -> None:
        task = record("a", tenant="acme")
        store.save(task)
        await store.flush()
        task.state, task.tenant = TaskState.RUNNING, "globex"
        store.save(task)
        await store.flush()
        for query, expected in [
            (TaskQuery(state=TaskState.PENDING), []),
            (TaskQuery(pipeline="orders", state=TaskState.PENDING), []),
            (TaskQuery(tenant="acme"), []),
            (TaskQuery(state=TaskState.RUNNING), ["orders:a"]),
            (TaskQuery(pipeline="orders", state=TaskState.RUNNING), ["orders:a"]),
            (TaskQuery(tenant="globex"), ["orders:a"]),
        ]:
            assert [r.id for r in await store.query(query)] == expected, query

    async def test_pages_have_no_gaps_and_no_duplicates(self, store: TaskStore) -> None:
        rng = random.Random(20240607)
        model: list[TaskRecord] = []
        # "or" is a prefix of "orders"; odd event ids test ordering by bytes and cursors.
        odd = ["(paren", "[bracket", "-", "+", "Zeta", "zeta", "é", "ü-1", "a:b", "\U0001f600"]
        for i in range(300):
            event_id = odd[i] if i < len(odd) else f"{rng.randrange(10**6):06d}-{i}"
            task = record(
                event_id,
                pipeline=rng.choice(["orders", "or", "billing"]),
                state=rng.choice(list(TaskState)),
                tenant=rng.choice(["acme", "globex", "default"]),
                received=T0 + rng.uniform(0, 100) if rng.random() < 0.9 else None,
            )
            model.append(task)
            store.save(task)
        await store.flush()

        windows = [(None, None), (T0 + 20, T0 + 60)]
        for pipeline, state, tenant, (start, end) in itertools.product(
            [None, "orders", "or"], [None, TaskState.RUNNING], [None, "acme"], windows
        ):
            query = TaskQuery(
                pipeline=pipeline,
                state=state,
                tenant=tenant,
                received_from=start,
                received_to=end,
                limit=7,
            )
            expected = sorted(
                r.id
                for r in model
                if pipeline in (None, r.pipeline)
                and state in (None, r.state)
                and tenant in (None, r.tenant)
                and (start is None or (r.received is not None and start <= r.received < end))
            )
            assert await all_pages(store, query) == expected, query

    # Retention.

    async def test_purge_drops_old_finished_tasks_only(self, make_store: StoreFactory) -> None:
        store, other = await make_store(), await make_store()
        store.save(finished("old", T0, TaskState.SUCCEEDED))
        store.save(finished("old-failed", T0 + 1, TaskState.FAILED))
        store.save(finished("new", T0 + 100))
        store.save(record("old-but-running", state=TaskState.RUNNING, received=T0 - 1000))
        store.save(record("undelivered", state=TaskState.FAILED, received=T0 - 1000))
        await store.flush()
        await store.request_cancel(["orders:x"], at=T0)
        await store.request_cancel(["orders:y"], at=T0 + 100)

        assert await other.purge(finished_before=T0 + 50) == 2
        assert await store.get("orders:old") is None
        assert await store.finished(["orders:old", "orders:new"], since=0.0) == {"orders:new"}
        remaining = [r.id for r in await store.query(TaskQuery())]
        assert remaining == ["orders:new", "orders:old-but-running", "orders:undelivered"]
        assert [r.id for r in await store.query(TaskQuery(state=TaskState.SUCCEEDED))] == [
            "orders:new"
        ]
        assert await store.query(TaskQuery(state=TaskState.FAILED, pipeline="orders")) == [
            record("undelivered", state=TaskState.FAILED, received=T0 - 1000)
        ]
        assert await store.cancel_requests(since=0.0) == [("orders:y", T0 + 100)]
        assert await store.purge(finished_before=T0 + 50) == 0

    # Operator state shared by instances.

    async def test_paused_scopes_are_shared(self, make_store: StoreFactory) -> None:
        one, two = await make_store(), await make_store()
        assert await one.paused_scopes() == set()
        await one.set_paused("orders", True)
        await one.set_paused("orders", True)
        await two.set_paused("billing/acme", True)
        assert await one.paused_scopes() == {"orders", "billing/acme"}
        await two.set_paused("orders", False)
        await two.set_paused("never-paused", False)
        assert await one.paused_scopes() == {"billing/acme"}

    async def test_cancel_requests_are_shared(self, make_store: StoreFactory) -> None:
        one, two = await make_store(), await make_store()
        await one.request_cancel(["orders:a", "orders:b"], at=T0)
        await two.request_cancel(["orders:b", "orders:c"], at=T0 + 10)
        await two.request_cancel([], at=T0 + 20)
        assert sorted(await two.cancel_requests(since=0.0)) == [
            ("orders:a", T0),
            ("orders:b", T0 + 10),
            ("orders:c", T0 + 10),
        ]
        assert sorted(await one.cancel_requests(since=T0 + 10)) == [
            ("orders:b", T0 + 10),
            ("orders:c", T0 + 10),
        ]

    async def test_instances_see_each_others_flushed_writes(self, make_store: StoreFactory) -> None:
        one, two = await make_store(), await make_store()
        task = record("a", tenant="acme")
        one.save(task)
        await one.flush()
        assert await two.get(task.id) == task
        assert [r.id for r in await two.query(TaskQuery(tenant="acme"))] == [task.id]

        later = finished("a", T0 + 5)
        two.save(later)
        await two.flush()
        assert await one.get(task.id) == later
        assert await one.finished([task.id], since=T0) == {task.id}

    # Concurrency.

    async def test_interleaved_saves_and_flushes_lose_nothing(
        self, make_store: StoreFactory
    ) -> None:
        store, reader = await make_store(), await make_store()
        stop = asyncio.Event()

        async def work(worker: int) -> None:
            for i in range(100):
                task = record(f"w{worker}-{i:03d}", tenant=f"t{worker % 3}")
                store.save(task)
                await asyncio.sleep(0)
                task.state = TaskState.RUNNING
                store.save(task)
                if i % 9 == worker % 9:
                    await store.flush()
                task.state, task.delivered = TaskState.SUCCEEDED, T0 + i
                store.save(task)
                await asyncio.sleep(0)

        async def keep_flushing() -> None:
            while not stop.is_set():
                await store.flush()
                await asyncio.sleep(0.001)

        flusher = asyncio.create_task(keep_flushing())
        await asyncio.gather(*(work(w) for w in range(10)))
        await store.flush()
        stop.set()
        await flusher

        ids = [f"orders:w{w}-{i:03d}" for w in range(10) for i in range(100)]
        assert await reader.finished(ids, since=T0) == set(ids)
        assert await all_pages(reader, TaskQuery(state=TaskState.SUCCEEDED, limit=333)) == sorted(
            ids
        )
        assert await reader.query(TaskQuery(state=TaskState.RUNNING)) == []
        assert await reader.query(TaskQuery(state=TaskState.PENDING)) == []

    # Parked tasks.

    async def test_parked_rows_come_back_in_order(self, store: TaskStore) -> None:
        items = [parked_item(f"p{i}") for i in range(5)]
        items.append(parked_item("no-data", data=None))
        await store.park(items, owner="a", lease_until=T0 + 60)
        await store.park([parked_item("other-tenant", tenant="globex")], owner="a", lease_until=T0)
        rows = await store.parked("orders", "acme", owner="a", after=0, limit=100)
        assert [r.task_id for r in rows] == [i.task_id for i in items]
        seqs = [r.seq for r in rows]
        assert seqs == sorted(set(seqs))
        assert rows[0] == dataclasses.replace(items[0], seq=rows[0].seq)
        assert rows[-1].data is None
        page = await store.parked("orders", "acme", owner="a", after=seqs[1], limit=2)
        assert [r.seq for r in page] == seqs[2:4]
        assert await store.parked("orders", "acme", owner="b", after=0, limit=100) == []
        assert await store.parked_counts("orders", owner="a") == {"acme": 6, "globex": 1}
        assert await store.parked_counts("orders", owner="b") == {}

        await store.unpark(seqs[:5])
        await store.unpark([])
        assert [
            r.task_id for r in await store.parked("orders", "acme", owner="a", after=0, limit=9)
        ] == ["orders:no-data"]
        assert await store.parked_counts("orders", owner="a") == {"acme": 1, "globex": 1}

    async def test_expired_leases_are_claimed_once(self, make_store: StoreFactory) -> None:
        one, two = await make_store(), await make_store()
        await one.park(
            [parked_item("x"), parked_item("y", tenant="globex")], owner="a", lease_until=T0
        )
        await one.park([parked_item("z")], owner="c", lease_until=T0 + 1000)
        assert await two.claim_parked("orders", owner="b", now=T0 - 1, until=T0 + 60) == 0
        await one.renew_leases("a", until=T0 + 10)
        assert await two.claim_parked("orders", owner="b", now=T0 + 5, until=T0 + 60) == 0
        assert await two.claim_parked("orders", owner="b", now=T0 + 11, until=T0 + 60) == 2
        assert await one.claim_parked("orders", owner="d", now=T0 + 11, until=T0 + 60) == 0
        assert await one.parked_counts("orders", owner="a") == {}
        assert await one.parked_counts("orders", owner="b") == {"acme": 1, "globex": 1}
        assert await one.parked_counts("orders", owner="c") == {"acme": 1}
        rows = await two.parked("orders", "acme", owner="b", after=0, limit=10)
        assert [r.task_id for r in rows] == ["orders:x"]
        assert await one.claim_parked("billing", owner="d", now=T0 + 10**6, until=T0) == 0
