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
