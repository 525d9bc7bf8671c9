"""The store contract against PostgreSQL on 127.0.0.1:5432, plus what is PostgreSQL's
own: URL forms, schemas, instances starting together, text jsonb refuses.

The module creates a fresh database (dropped at the end) and every test its own schema
in it. PostgreSQL must be running (``scripts/services.sh`` starts it): a test that
cannot reach it fails.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from consumer_core.errors import ConfigError, StoreError
from consumer_core.store.base import TaskStore, open_store
from consumer_core.store.postgres import PostgresTaskStore, parse_postgres_url
from consumer_core.store.sqlite import SqliteDatabases
from consumer_core.tasks import TaskState
from tests.contract.store_contract import StoreContract, StoreFactory, full_record, record
from tests.support.net import free_port

pytestmark = pytest.mark.postgres

SERVER = "postgresql://postgres@127.0.0.1:5432"


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(f"{SERVER}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"bridge_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    yield f"{SERVER}/{name}"
    asyncio.run(_admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


@pytest.fixture
async def schema_url(database: str) -> AsyncIterator[str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield f"{database}?schema={schema}"
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


class TestPostgresStore(StoreContract):
    @pytest.fixture
    async def make_store(self, schema_url: str) -> AsyncIterator[StoreFactory]:
        stores: list[PostgresTaskStore] = []

        async def make() -> TaskStore:
            store = PostgresTaskStore(schema_url)
            await store.open()
            stores.append(store)
            return store

        yield make
        for store in stores:
            await store.close()


def test_url_gives_dsn_and_schema() -> None:
    assert parse_postgres_url("postgresql://u:pw@h:1/db?schema=s&application_name=b") == (
        "postgresql://u:pw@h:1/db?application_name=b",
        "s",
    )
    assert parse_postgres_url("postgres://h/db") == ("postgres://h/db", "public")


def test_open_store_picks_postgres_for_both_schemes(tmp_path: Path) -> None:
    for url in ("postgresql://127.0.0.1/db", "postgres://127.0.0.1/db?schema=x"):
        assert isinstance(open_store(url, tmp_path, SqliteDatabases()), PostgresTaskStore)


def test_missing_client_library_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, "consumer_core.store.postgres")
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ConfigError, match=r"pip install 'bridge\[postgres\]'"):
        open_store("postgresql://127.0.0.1/db", tmp_path, SqliteDatabases())


async def test_instances_opening_together_create_the_tables_once(schema_url: str) -> None:
    stores = [PostgresTaskStore(schema_url) for _ in range(4)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        stores[0].save(full_record())
        await stores[0].flush()
        assert await stores[3].get(full_record().id) == full_record()
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_role_without_ddl_rights_uses_existing_tables(
    database: str, schema_url: str
) -> None:
    admin = PostgresTaskStore(schema_url)
    await admin.open()
    await admin.close()
    role, schema = f"bridge_rw_{uuid.uuid4().hex[:8]}", parse_postgres_url(schema_url)[1]
    await _admin(f'CREATE ROLE "{role}" LOGIN')
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}";'
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{schema}" TO "{role}";'
            f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{schema}" TO "{role}";'
        )
        store = PostgresTaskStore(schema_url.replace("postgres@", f"{role}@"))
        await store.open()
        try:
            store.save(full_record())
            await store.flush()
            assert await store.get(full_record().id) == full_record()
        finally:
            await store.close()
    finally:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await conn.close()
        await _admin(f'DROP ROLE "{role}"')


async def test_text_jsonb_refuses_is_replaced_not_fatal(schema_url: str) -> None:
    store = PostgresTaskStore(schema_url)
    await store.open()
    try:
        poisoned = record("nul", state=TaskState.FAILED)
        poisoned.event = {"data": "a\x00b\ud800c", "escaped": "\\u0000"}
        store.save(poisoned)
        store.save(record("fine"))
        await store.flush()
        stored = await store.get(poisoned.id)
        assert stored is not None
        assert stored.event == {"data": "a\ufffdb\ufffdc", "escaped": "\\u0000"}
        assert await store.get("orders:fine") == record("fine")
    finally:
        await store.close()


async def test_unreachable_server_fails_open() -> None:
    store = PostgresTaskStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    with pytest.raises(StoreError, match="connecting to PostgresTaskStore"):
        await store.open()
