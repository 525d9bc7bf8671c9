"""The store contract against SQLite: a fresh database file per test."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumer_core.store.base import TaskStore
from consumer_core.store.sqlite import SqliteDatabase, SqliteTaskStore
from tests.contract.store_contract import T0, StoreContract, StoreFactory, finished


class TestSqliteStore(StoreContract):
    @pytest.fixture
    async def make_store(self, tmp_path: Path) -> AsyncIterator[StoreFactory]:
        stores: list[SqliteTaskStore] = []

        async def make() -> TaskStore:
            # One SqliteDatabase (connection and writer thread) per instance, as in
            # separate processes sharing the file.
            store = SqliteTaskStore(SqliteDatabase(tmp_path / "tasks.db"))
            await store.open()
            stores.append(store)
            return store

        yield make
        for store in stores:
            await store.close()


async def test_the_dedup_lookup_reads_beside_a_running_write(tmp_path: Path) -> None:
    """``finished`` runs on the reader connection: it answers while the writer holds a
    transaction open, from what was committed before it."""
    store = SqliteTaskStore(SqliteDatabase(tmp_path / "tasks.db"))
    await store.open()
    try:
        store.save(finished("committed", T0))
        await store.flush()
        entered, release = threading.Event(), threading.Event()

        def slow_write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO tasks (id, pipeline, state, tenant, received, finished, doc)"
                " VALUES ('orders:uncommitted', 'orders', 'succeeded', '', 0, ?, '{}')",
                (T0,),
            )
            entered.set()
            release.wait(5)  # the transaction stays open until the lookup answered

        write = store.db.write(slow_write)
        try:
            assert await asyncio.to_thread(entered.wait, 5)
            ids = ["orders:committed", "orders:uncommitted"]
            found = await asyncio.wait_for(store.finished(ids, since=0.0), 2)
        finally:
            release.set()
        await write
        assert found == {"orders:committed"}  # the open transaction is not seen
        assert await store.finished(ids, since=0.0) == set(ids)  # and is once committed
    finally:
        await store.close()


async def test_a_batch_written_as_one_statement_stores_what_executemany_stores(
    tmp_path: Path,
) -> None:
    """The task rows of a flush go to SQLite as one JSON array (``_UPSERT_JSON``), with
    ``executemany`` as the fallback for a SQLite without JSON functions: both must leave
    the same rows, column types included, for new and updated tasks alike."""
    from consumer_core.tasks import TaskRecord, TaskState
    from tests.contract.store_contract import full_record, record

    def records() -> list[TaskRecord]:
        odd = record("q\"uote'\\back\nline", state=TaskState.RUNNING)
        odd.tenant = "ténant \U0001f600"
        odd.received = None  # a NULL column
        whole = record("whole", state=TaskState.PENDING)
        whole.received = 1_700_000_000.0  # an integral float stays REAL
        return [full_record(), finished("done", T0), odd, whole]

    dumped: dict[bool, list[tuple[object, ...]]] = {}
    for use_json in (True, False):
        store = SqliteTaskStore(SqliteDatabase(tmp_path / f"json-{use_json}.db"))
        await store.open()
        try:
            assert store._json, "this SQLite has JSON functions: the one-statement path is used"
            store._json = use_json
            for r in records():
                store.save(r)
            await store.flush()
            updated = finished("done", T0 + 10, TaskState.FAILED)  # an upsert over a row
            store.save(updated)
            await store.flush()
            dumped[use_json] = await store.db.run(
                lambda conn: conn.execute(
                    "SELECT id, pipeline, state, tenant, received, typeof(received), finished,"
                    " typeof(finished), doc FROM tasks ORDER BY id"
                ).fetchall()
            )
            again = await store.get("orders:done")
            assert again is not None
            assert again.state is TaskState.FAILED
        finally:
            await store.close()
    assert len(dumped[True]) == 4
    assert dumped[True] == dumped[False]
    types = {row[0]: (row[5], row[7]) for row in dumped[True]}
    assert types["orders:whole"][0] == "real"
    assert [row[5] for row in dumped[True] if row[0].endswith("line")] == ["null"]
