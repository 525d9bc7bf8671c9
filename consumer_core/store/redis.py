"""Redis: task state shared by every bridge instance pointed at one Redis server.

URL: ``redis://[user:password@]host[:port][/db][?prefix=bridge:]`` (``rediss://`` for
TLS). ``db`` is the database number (default 0); ``prefix`` starts every key (default
``bridge:``), so several deployments can share one database.

Keys, with ``P`` the prefix::

    P task:{id}               hash: pipeline, state, tenant, received, finished, doc (JSON)
    P idx:all                 every task id                      (sorted set, all scores 0,
    P idx:p:{pipeline}        ids of a pipeline                   so ordered by id: read
    P idx:ps:{pipeline}:{st}  ids of a pipeline in a state        with ZRANGE BYLEX)
    P idx:s:{state}           ids in a state
    P idx:t:{tenant}          ids of a tenant
    P finished                id -> time it finished and was delivered (dedup, purge)
    P paused                  set of paused scopes
    P cancels                 task id -> time its cancel was requested
    P parked:...              parked tasks (see ``consumer_core.store.redis_parking``)

Each record is written by a Lua script that reads the stored state and moves the id
between index sets, so a task's document and its index entries change together,
atomically, even when several instances write. A flush sends one script call per
chunk of records in a *non-transactional* pipeline: every call is atomic on its own,
records are independent snapshots and writing one twice is harmless, so MULTI/EXEC
would buy nothing but a longer stall of the server for everybody else.

*Durable* here means acknowledged by the server. Whether an acknowledged write survives
a Redis restart is the server's configuration (``appendonly yes`` with
``appendfsync everysec`` loses at most a second; without persistence a restart loses
everything). Keys are built inside the scripts, so Redis Cluster is not supported.
Needs Redis 6.2 or newer (``ZMSCORE``, ``ZRANGE ... BYLEX``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from consumer_core.errors import ConfigError, ConfigProblem, StoreError
from consumer_core.store.base import TaskQuery
from consumer_core.store.redis_parking import RedisParking
from consumer_core.store.writebehind import WriteBehind
from consumer_core.tasks import TaskRecord

__all__ = ["RedisTaskStore", "parse_redis_url"]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "bridge:"
SCRIPT_CHUNK = 200
"""Records per script call: long enough to amortise a call, short enough not to stall."""
READ_CHUNK = 1000
SOCKET_TIMEOUT = 30.0
"""Seconds before a call to an unresponsive server fails (and a flush is retried)."""
SCAN_BUDGET = 1000
"""Index entries a query script looks at per call, bounding how long it holds the server."""

Row = tuple[str, str, str, str, str, str, str]
"""id, pipeline, state, tenant, received, finished, doc ('' for a missing time)."""

_UPSERT = """
local p = ARGV[1]
for i = 2, #ARGV, 7 do
  local id, pipeline, state, tenant = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local finished = ARGV[i + 5]
  local key = p .. 'task:' .. id
  local old = redis.call('HMGET', key, 'pipeline', 'state', 'tenant')
  if old[1] then
    if old[1] ~= pipeline then redis.call('ZREM', p .. 'idx:p:' .. old[1], id) end
    if old[1] ~= pipeline or old[2] ~= state then
      redis.call('ZREM', p .. 'idx:ps:' .. old[1] .. ':' .. old[2], id)
    end
    if old[2] ~= state then redis.call('ZREM', p .. 'idx:s:' .. old[2], id) end
    if old[3] ~= tenant then redis.call('ZREM', p .. 'idx:t:' .. old[3], id) end
  end
  redis.call('HSET', key, 'pipeline', pipeline, 'state', state, 'tenant', tenant,
             'received', ARGV[i + 4], 'finished', finished, 'doc', ARGV[i + 6])
  redis.call('ZADD', p .. 'idx:all', 0, id)
  redis.call('ZADD', p .. 'idx:p:' .. pipeline, 0, id)
  redis.call('ZADD', p .. 'idx:ps:' .. pipeline .. ':' .. state, 0, id)
  redis.call('ZADD', p .. 'idx:s:' .. state, 0, id)
  redis.call('ZADD', p .. 'idx:t:' .. tenant, 0, id)
  if finished == '' then
    redis.call('ZREM', p .. 'finished', id)
  else
    redis.call('ZADD', p .. 'finished', finished, id)
  end
end
return (#ARGV - 1) / 7
"""

_SCAN = """
local p, index, start = ARGV[1], ARGV[2], ARGV[3]
local limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local pipeline, state, tenant = ARGV[6], ARGV[7], ARGV[8]
local from, to = tonumber(ARGV[9]), tonumber(ARGV[10])
local out = {''}
local ids = redis.call('ZRANGE', index, start, '+', 'BYLEX', 'LIMIT', 0, budget)
for _, id in ipairs(ids) do
  local t = redis.call('HMGET', p .. 'task:' .. id, 'pipeline', 'state', 'tenant', 'received',
                       'doc')
  local received = tonumber(t[4])
  if t[1]
      and (pipeline == '' or '=' .. t[1] == pipeline)
      and (state == '' or '=' .. t[2] == state)
      and (tenant == '' or '=' .. t[3] == tenant)
      and (not from or (received and received >= from))
      and (not to or (received and received < to)) then
    out[#out + 1] = t[5]
    if #out > limit then return out end
  end
end
if #ids == budget then out[1] = ids[#ids] end
return out
"""

_DELETE_FINISHED = """
local p, cutoff, deleted, dropped = ARGV[1], tonumber(ARGV[2]), 0, 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local key = p .. 'task:' .. id
  local t = redis.call('HMGET', key, 'pipeline', 'state', 'tenant', 'finished')
  local finished = tonumber(t[4])
  if not t[1] or not finished then
    dropped = dropped + redis.call('ZREM', p .. 'finished', id)
  elseif finished < cutoff then
    redis.call('ZREM', p .. 'idx:all', id)
    redis.call('ZREM', p .. 'idx:p:' .. t[1], id)
    redis.call('ZREM', p .. 'idx:ps:' .. t[1] .. ':' .. t[2], id)
    redis.call('ZREM', p .. 'idx:s:' .. t[2], id)
    redis.call('ZREM', p .. 'idx:t:' .. t[3], id)
    redis.call('ZREM', p .. 'finished', id)
    redis.call('DEL', key)
    deleted = deleted + 1
  end
end
return {deleted, dropped}
"""


def parse_redis_url(url: str) -> tuple[str, str]:
    """Split a store URL into the client's URL and the key prefix."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = DEFAULT_PREFIX
    rest: list[tuple[str, str]] = []
    for name, value in query:
        if name == "prefix":
            prefix = value
        else:
            rest.append((name, value))
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ConfigError(
            [ConfigProblem("<state>", None, "state.url", f"{database!r} is not a database number")]
        )
    return urlunsplit(parts._replace(query=urlencode(rest))), prefix


def _time(value: float | None) -> str:
    return "" if value is None else repr(value)


def _wanted(value: str | None) -> str:
    """A filter argument for ``_SCAN``: '' matches anything, '=x' only x."""
    return "" if value is None else "=" + value


def _row(record: TaskRecord) -> Row:
    doc, finished = record.stored()
    return (
        record.id,
        record.pipeline,
        record.state.value,
        record.tenant,
        _time(record.received),
        _time(finished),
        json.dumps(doc, separators=(",", ":")),
    )


class RedisTaskStore(RedisParking):
    """Task records in Redis, write-behind (see ``TaskStore`` and the module docstring)."""

    def __init__(self, url: str, *, flush_interval: float = 0.02) -> None:
        self.url = url
        client_url, self.prefix = parse_redis_url(url)
        self._client_url = client_url
        self._redis: Redis | None = None
        self._buffer: WriteBehind[Row] = WriteBehind(
            f"redis:{self.prefix}", _row, self._write, interval=flush_interval
        )
        self._upsert: AsyncScript | None = None
        self._delete_finished: AsyncScript | None = None
        self._scan: AsyncScript | None = None

    def __repr__(self) -> str:
        parts = urlsplit(self._client_url)
        host = parts.hostname or "localhost"
        return f"RedisTaskStore({host}:{parts.port or 6379}{parts.path} prefix={self.prefix!r})"

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise StoreError(f"{self!r} is not open")
        return self._redis

    def _script(self, script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise StoreError(f"{self!r} is not open")
        return script

    async def open(self) -> None:
        # The URL's own socket_timeout / socket_connect_timeout, if any, win.
        client = Redis.from_url(
            self._client_url,
            decode_responses=True,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
        )
        try:
            await client.ping()
        except RedisError as exc:
            await client.aclose()
            raise StoreError(f"connecting to {self!r}: {exc}") from exc
        self._redis = client
        self._upsert = client.register_script(_UPSERT)
        self._delete_finished = client.register_script(_DELETE_FINISHED)
        self._scan = client.register_script(_SCAN)
        self._register_parking(client)
        self._buffer.start()

    async def close(self) -> None:
        try:
            await self._buffer.stop()
        finally:
            if self._redis is not None:
                await self._redis.aclose()
                self._redis = None

    def save(self, record: TaskRecord) -> None:
        self._buffer.save(record)

    async def flush(self) -> None:
        await self._buffer.flush()

    async def _write(self, rows: Sequence[Row]) -> None:
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(rows), SCRIPT_CHUNK):
                    args = [self.prefix]
                    for row in rows[start : start + SCRIPT_CHUNK]:
                        args.extend(row)
                    await self._script(self._upsert)(keys=[], args=args, client=pipe)
                await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"writing {len(rows)} tasks to {self!r}: {exc}") from exc

    async def finished(self, ids: Sequence[str], *, since: float) -> set[str]:
        if not ids:
            return set()
        wanted = list(ids)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(wanted), READ_CHUNK):
                    pipe.zmscore(self._key("finished"), wanted[start : start + READ_CHUNK])
                replies: list[list[float | None]] = await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"reading {self!r}: {exc}") from exc
        scores = [score for reply in replies for score in reply]
        return {
            tid
            for tid, score in zip(wanted, scores, strict=True)
            if score is not None and score >= since
        }

    async def get(self, task_id: str) -> TaskRecord | None:
        live = self._buffer.pending(task_id)
        if live is not None:
            return live
        try:
            doc = cast(str | None, await self.redis.hget(self._key("task", task_id), "doc"))
        except RedisError as exc:
            raise StoreError(f"reading {self!r}: {exc}") from exc
        return None if doc is None else TaskRecord.from_json(json.loads(doc))

    async def _index_for(self, query: TaskQuery) -> str:
        """The smallest index set that holds every task the query can match."""
        if query.pipeline is not None and query.state is not None:
            return self._key("idx", "ps", query.pipeline, query.state.value)
        candidates = []
        if query.pipeline is not None:
            candidates.append(self._key("idx", "p", query.pipeline))
        if query.state is not None:
            candidates.append(self._key("idx", "s", query.state.value))
        if query.tenant is not None:
            candidates.append(self._key("idx", "t", query.tenant))
        if not candidates:
            return self._key("idx", "all")
        if len(candidates) == 1:
            return candidates[0]
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in candidates:
                pipe.zcard(key)
            sizes: list[int] = await pipe.execute()
        return min(zip(sizes, candidates, strict=True))[1]

    async def query(self, query: TaskQuery) -> list[TaskRecord]:
        await self.flush()
        try:
            return await self._query(query)
        except RedisError as exc:
            raise StoreError(f"querying {self!r}: {exc}") from exc

    async def _query(self, query: TaskQuery) -> list[TaskRecord]:
        index = await self._index_for(query)
        filters = [
            _wanted(query.pipeline),
            _wanted(query.state.value if query.state is not None else None),
            _wanted(query.tenant),
            _time(query.received_from),
            _time(query.received_to),
        ]
        start = "-" if query.after is None else "(" + query.after
        found: list[TaskRecord] = []
        while len(found) < query.limit:
            reply = await self._script(self._scan)(
                keys=[],
                args=[self.prefix, index, start, query.limit - len(found), SCAN_BUDGET, *filters],
            )
            cursor, docs = reply[0], reply[1:]
            found.extend(TaskRecord.from_json(json.loads(doc)) for doc in docs)
            if not cursor:
                break
            start = "(" + cursor
        return found

    async def purge(self, *, finished_before: float) -> int:
        deleted = 0
        try:
            while True:
                ids = cast(
                    list[str],
                    await self.redis.zrange(
                        self._key("finished"),
                        "-inf",
                        f"({finished_before!r}",
                        byscore=True,
                        offset=0,
                        num=READ_CHUNK,
                    ),
                )
                if not ids:
                    break
                done, dropped = await self._script(self._delete_finished)(
                    keys=[], args=[self.prefix, repr(finished_before), *ids]
                )
                deleted += done
                if done + dropped == 0:
                    break  # nothing removed: whatever is left is not ours to delete
            await self.redis.zremrangebyscore(self._key("cancels"), "-inf", f"({finished_before!r}")
        except RedisError as exc:
            raise StoreError(f"purging {self!r}: {exc}") from exc
        return deleted

    async def set_paused(self, scope: str, paused: bool) -> None:
        try:
            if paused:
                await self.redis.sadd(self._key("paused"), scope)
            else:
                await self.redis.srem(self._key("paused"), scope)
        except RedisError as exc:
            raise StoreError(f"writing {self!r}: {exc}") from exc

    async def paused_scopes(self) -> set[str]:
        try:
            scopes = cast(set[str], await self.redis.smembers(self._key("paused")))
        except RedisError as exc:
            raise StoreError(f"reading {self!r}: {exc}") from exc
        return set(scopes)

    async def request_cancel(self, task_ids: Sequence[str], *, at: float) -> None:
        if not task_ids:
            return
        try:
            await self.redis.zadd(self._key("cancels"), dict.fromkeys(task_ids, at))
        except RedisError as exc:
            raise StoreError(f"writing {self!r}: {exc}") from exc

    async def cancel_requests(self, *, since: float) -> list[tuple[str, float]]:
        try:
            rows = cast(
                list[tuple[str, float]],
                await self.redis.zrange(
                    self._key("cancels"), repr(since), "+inf", byscore=True, withscores=True
                ),
            )
        except RedisError as exc:
            raise StoreError(f"reading {self!r}: {exc}") from exc
        return [(tid, float(at)) for tid, at in rows]
