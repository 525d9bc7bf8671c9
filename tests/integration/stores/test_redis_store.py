"""The store contract against Redis on 127.0.0.1:6379, plus what is Redis's own: URL
forms, key layout and clean-up.

Every test gets its own key prefix and deletes every key under it afterwards. Redis must
be running (``scripts/services.sh`` starts it): a test that cannot reach it fails.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from consumer_core.errors import ConfigError, StoreError
from consumer_core.store.base import TaskQuery, TaskStore, open_store
from consumer_core.store.redis import RedisTaskStore, parse_redis_url
from consumer_core.store.sqlite import SqliteDatabases
from tests.contract.store_contract import StoreContract, StoreFactory, finished, record
from tests.support.net import free_port

pytestmark = pytest.mark.redis

SERVER = "redis://127.0.0.1:6379"


async def keys_under(prefix: str, db: int = 0) -> list[str]:
    async with Redis.from_url(f"{SERVER}/{db}", decode_responses=True) as client:
        return sorted([key async for key in client.scan_iter(match=f"{prefix}*", count=1000)])


async def delete_under(prefix: str, db: int = 0) -> None:
    async with Redis.from_url(f"{SERVER}/{db}", decode_responses=True) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"bridge-test-{uuid.uuid4().hex[:12]}:"
    yield name
    await delete_under(name)


class TestRedisStore(StoreContract):
    @pytest.fixture
    async def make_store(self, prefix: str) -> AsyncIterator[StoreFactory]:
        stores: list[RedisTaskStore] = []

        async def make() -> TaskStore:
            store = RedisTaskStore(f"{SERVER}/0?prefix={prefix}")
            await store.open()
            stores.append(store)
            return store

        yield make
        for store in stores:
            await store.close()


def test_url_gives_client_url_and_prefix() -> None:
    assert parse_redis_url("redis://h:1/2?prefix=a:b:&socket_timeout=3") == (
        "redis://h:1/2?socket_timeout=3",
        "a:b:",
    )
    assert parse_redis_url("rediss://user:pw@h") == ("rediss://user:pw@h", "bridge:")


def test_url_with_a_bad_database_number_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="'zero' is not a database number"):
        RedisTaskStore("redis://127.0.0.1:6379/zero")


def test_open_store_picks_redis_for_both_schemes(tmp_path: Path) -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6379/0?prefix=x:"):
        assert isinstance(open_store(url, tmp_path, SqliteDatabases()), RedisTaskStore)


def test_missing_client_library_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("consumer_core.store.redis", "consumer_core.store.redis_parking"):
        monkeypatch.delitem(sys.modules, name)
    for name in [n for n in sys.modules if n == "redis" or n.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"pip install 'bridge\[redis\]'"):
        open_store("redis://127.0.0.1:6379/0", tmp_path, SqliteDatabases())


async def test_database_number_and_prefix_come_from_the_url() -> None:
    prefix = f"bridge-test-{uuid.uuid4().hex[:12]}:"
    store = RedisTaskStore(f"{SERVER}/5?prefix={prefix}")
    await store.open()
    try:
        store.save(record("a"))
        await store.flush()
        assert f"{prefix}task:orders:a" in await keys_under(prefix, db=5)
        assert await keys_under(prefix, db=0) == []
    finally:
        await store.close()
        await delete_under(prefix, db=5)


async def test_purge_leaves_no_index_entries_behind(prefix: str) -> None:
    store = RedisTaskStore(f"{SERVER}/0?prefix={prefix}")
    await store.open()
    try:
        task = record("a", tenant="acme")
        store.save(task)
        await store.flush()
        done = finished("a", 1000.0)
        done.tenant = "globex"
        store.save(done)
        await store.flush()
        await store.request_cancel([task.id], at=500.0)
        assert await store.purge(finished_before=2000.0) == 1
        assert await keys_under(prefix) == []
        assert await store.query(TaskQuery()) == []
    finally:
        await store.close()


async def test_unreachable_server_fails_open() -> None:
    store = RedisTaskStore(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StoreError, match="connecting to RedisTaskStore"):
        await store.open()
