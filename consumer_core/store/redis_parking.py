"""Parked tasks in Redis (see ``consumer_core.store.base.Parked``), mixed into
``RedisTaskStore``.

Keys, with ``P`` the prefix; names that hold several free-form parts length-prefix all
but the last (``5:orders``), so no two (pipeline, owner, tenant) share a key::

    P parked:seq                             counter: the last seq handed out
    P parked:row:{seq}                       hash: pipeline, tenant, owner, doc (JSON)
    P parked:q:{pipeline}:{owner}:{tenant}   sorted set of seqs (score = seq)
    P parked:tenants:{pipeline}:{owner}      set of tenants with rows
    P parked:owners:{pipeline}               set of owners with rows
    P parked:leases                          hash: owner -> lease end (Unix seconds)

A lease belongs to an owner, not to each row: renewing is one write however many rows
an owner has parked, and a claim takes every row of an owner whose lease ran out. Every
change is a Lua script, so two instances claiming at once cannot both take a row.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, cast

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from consumer_core.errors import StoreError
from consumer_core.store.base import Parked

__all__ = ["RedisParking"]

_KEYS = """
local p = ARGV[1]
local function queue(pipeline, owner, tenant)
  return p .. 'parked:q:' .. #pipeline .. ':' .. pipeline .. ':' .. #owner .. ':' .. owner
    .. ':' .. tenant
end
local function tenants(pipeline, owner)
  return p .. 'parked:tenants:' .. #pipeline .. ':' .. pipeline .. ':' .. owner
end
local function owners(pipeline)
  return p .. 'parked:owners:' .. pipeline
end
"""

_PARK = """
local owner, lease, n = ARGV[2], ARGV[3], (#ARGV - 3) / 3
local seq = redis.call('INCRBY', p .. 'parked:seq', n) - n
for i = 4, #ARGV, 3 do
  seq = seq + 1
  local pipeline, tenant = ARGV[i], ARGV[i + 1]
  redis.call('HSET', p .. 'parked:row:' .. seq,
             'pipeline', pipeline, 'tenant', tenant, 'owner', owner, 'doc', ARGV[i + 2])
  redis.call('ZADD', queue(pipeline, owner, tenant), seq, seq)
  redis.call('SADD', tenants(pipeline, owner), tenant)
  redis.call('SADD', owners(pipeline), owner)
end
redis.call('HSET', p .. 'parked:leases', owner, lease)
return seq
"""

_PARKED = """
local seqs = redis.call('ZRANGE', queue(ARGV[2], ARGV[3], ARGV[4]), '(' .. ARGV[5], '+inf',
                        'BYSCORE', 'LIMIT', 0, tonumber(ARGV[6]))
local out = {}
for _, seq in ipairs(seqs) do
  local doc = redis.call('HGET', p .. 'parked:row:' .. seq, 'doc')
  if doc then
    out[#out + 1] = seq
    out[#out + 1] = doc
  end
end
return out
"""

_COUNTS = """
local out = {}
for _, tenant in ipairs(redis.call('SMEMBERS', tenants(ARGV[2], ARGV[3]))) do
  local n = redis.call('ZCARD', queue(ARGV[2], ARGV[3], tenant))
  if n > 0 then
    out[#out + 1] = tenant
    out[#out + 1] = n
  end
end
return out
"""

_UNPARK = """
for i = 2, #ARGV do
  local row = p .. 'parked:row:' .. ARGV[i]
  local r = redis.call('HMGET', row, 'pipeline', 'owner', 'tenant')
  if r[1] then
    local q = queue(r[1], r[2], r[3])
    redis.call('ZREM', q, ARGV[i])
    if redis.call('ZCARD', q) == 0 then
      local ts = tenants(r[1], r[2])
      redis.call('SREM', ts, r[3])
      if redis.call('SCARD', ts) == 0 then redis.call('SREM', owners(r[1]), r[2]) end
    end
    redis.call('DEL', row)
  end
end
return 0
"""

_CLAIM = """
local pipeline, owner, now, lease_until = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5]
local count = 0
for _, other in ipairs(redis.call('SMEMBERS', owners(pipeline))) do
  local lease = tonumber(redis.call('HGET', p .. 'parked:leases', other))
  if other ~= owner and (not lease or lease < now) then
    local theirs = tenants(pipeline, other)
    for _, tenant in ipairs(redis.call('SMEMBERS', theirs)) do
      local from, to = queue(pipeline, other, tenant), queue(pipeline, owner, tenant)
      for _, seq in ipairs(redis.call('ZRANGE', from, 0, -1)) do
        redis.call('HSET', p .. 'parked:row:' .. seq, 'owner', owner)
        redis.call('ZADD', to, seq, seq)
        count = count + 1
      end
      redis.call('DEL', from)
      redis.call('SADD', tenants(pipeline, owner), tenant)
    end
    redis.call('DEL', theirs)
    redis.call('SREM', owners(pipeline), other)
  end
end
if count > 0 then
  redis.call('SADD', owners(pipeline), owner)
  redis.call('HSET', p .. 'parked:leases', owner, lease_until)
end
return count
"""


def _doc(item: Parked) -> str:
    data = None if item.data is None else base64.b64encode(item.data).decode()
    return json.dumps(
        {
            "task_id": item.task_id,
            "key": item.key,
            "partition": item.partition,
            "attributes": item.attributes,
            "data": data,
            "headers": item.headers,
            "record": item.record,
            "not_before": item.not_before,
        },
        separators=(",", ":"),
    )


def _parked(seq: str, pipeline: str, tenant: str, doc: str) -> Parked:
    fields: dict[str, Any] = json.loads(doc)
    data = fields.pop("data")
    return Parked(
        seq=int(seq),
        pipeline=pipeline,
        tenant=tenant,
        data=None if data is None else base64.b64decode(data),
        **fields,
    )


def _pairs(flat: Sequence[Any]) -> list[tuple[Any, Any]]:
    return list(zip(flat[::2], flat[1::2], strict=True))


class RedisParking:
    """The parked-task half of ``TaskStore`` for ``RedisTaskStore``."""

    prefix: str
    _parking_scripts: dict[str, AsyncScript]

    @property
    def redis(self) -> Redis:
        raise NotImplementedError

    def _register_parking(self, client: Redis) -> None:
        self._parking_scripts = {
            name: client.register_script(_KEYS + source)
            for name, source in (
                ("park", _PARK),
                ("parked", _PARKED),
                ("counts", _COUNTS),
                ("unpark", _UNPARK),
                ("claim", _CLAIM),
            )
        }

    async def _run(self, script: str, *args: str | float) -> Any:
        try:
            return await self._parking_scripts[script](keys=[], args=[self.prefix, *args])
        except RedisError as exc:
            raise StoreError(f"parked tasks in {self!r}: {exc}") from exc

    async def park(self, items: Sequence[Parked], *, owner: str, lease_until: float) -> None:
        if not items:
            return
        args: list[str | float] = [owner, repr(lease_until)]
        for item in items:
            args.extend((item.pipeline, item.tenant, _doc(item)))
        await self._run("park", *args)

    async def parked(
        self, pipeline: str, tenant: str, *, owner: str, after: int, limit: int
    ) -> list[Parked]:
        flat = await self._run("parked", pipeline, owner, tenant, after, limit)
        return [_parked(seq, pipeline, tenant, doc) for seq, doc in _pairs(flat)]

    async def parked_counts(self, pipeline: str, *, owner: str) -> dict[str, int]:
        flat = await self._run("counts", pipeline, owner)
        return {tenant: int(n) for tenant, n in _pairs(flat)}

    async def unpark(self, seqs: Sequence[int]) -> None:
        if seqs:
            await self._run("unpark", *(str(seq) for seq in seqs))

    async def renew_leases(self, owner: str, *, until: float) -> None:
        try:
            await cast(Any, self.redis.hset(f"{self.prefix}parked:leases", owner, repr(until)))
        except RedisError as exc:
            raise StoreError(f"parked tasks in {self!r}: {exc}") from exc

    async def claim_parked(self, pipeline: str, *, owner: str, now: float, until: float) -> int:
        return int(await self._run("claim", pipeline, owner, repr(now), repr(until)))
