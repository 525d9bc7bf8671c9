"""The store contract against SQLite: a fresh database file per test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from consumer_core.store.base import TaskStore
from consumer_core.store.sqlite import SqliteDatabase, SqliteTaskStore
from tests.contract.store_contract import StoreContract, StoreFactory


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
