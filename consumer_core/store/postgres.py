"""PostgreSQL: task state shared by every bridge instance pointed at one database.

URL: ``postgresql://[user[:password]@]host[:port]/database[?schema=bridge]``
(``postgres://`` works too). ``schema`` (default ``public``) holds the tables and is
created if missing; any other query parameter is passed to asyncpg, which sends the
ones it does not know as server settings (``?application_name=bridge``).

Tables, created if missing (under an advisory lock, so instances starting together do
not race on ``CREATE TABLE``)::

    tasks            id (text, "C" collation: ordered by bytes, like the other stores),
                     pipeline, state, tenant, received, finished, doc (jsonb)
    paused_scopes    scope
    cancel_requests  task_id, requested
    parked           seq, pipeline, tenant, task_id, ..., owner, lease_until (see ``Parked``)

A flush is one ``executemany`` upsert (``INSERT ... ON CONFLICT (id) DO UPDATE``) of the
whole batch in one transaction, rows sorted by id so that two instances writing the
same tasks lock them in the same order and cannot deadlock. *Durable* means committed:
with the server's default ``synchronous_commit = on`` the batch is in the WAL on disk
(and on synchronous standbys, if any) before ``flush`` returns.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg  # type: ignore[import-untyped]

from consumer_core.errors import StoreError
from consumer_core.store.base import Parked, TaskQuery
from consumer_core.store.writebehind import WriteBehind
from consumer_core.tasks import TaskRecord

__all__ = ["PostgresTaskStore", "parse_postgres_url"]

log = logging.getLogger(__name__)

DEFAULT_SCHEMA = "public"
POOL_SIZE = 4
"""Connections at most: one for the writer, the rest for reads and operator calls."""

Row = tuple[str, str, str, str, float | None, float | None, str]
"""id, pipeline, state, tenant, received, finished, doc (JSON text)."""

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
"""Seconds before a statement fails (a flush is then retried); bounds a hung server."""

_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.tasks (
    id TEXT COLLATE "C" PRIMARY KEY,
    pipeline TEXT NOT NULL,
    state TEXT NOT NULL,
    tenant TEXT NOT NULL,
    received DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    doc JSONB NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_pipeline ON {s}.tasks (pipeline, id);
CREATE INDEX IF NOT EXISTS tasks_pipeline_state ON {s}.tasks (pipeline, state, id);
CREATE INDEX IF NOT EXISTS tasks_tenant ON {s}.tasks (tenant, id);
CREATE INDEX IF NOT EXISTS tasks_received ON {s}.tasks (received);
CREATE INDEX IF NOT EXISTS tasks_finished ON {s}.tasks (finished) WHERE finished IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.paused_scopes (scope TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {s}.cancel_requests (
    task_id TEXT PRIMARY KEY,
    requested DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS cancel_requests_requested ON {s}.cancel_requests (requested);
CREATE TABLE IF NOT EXISTS {s}.parked (
    seq BIGSERIAL PRIMARY KEY,
    pipeline TEXT NOT NULL,
    tenant TEXT NOT NULL,
    task_id TEXT NOT NULL,
    key TEXT,
    partition TEXT,
    attributes TEXT NOT NULL,
    data BYTEA,
    headers TEXT NOT NULL,
    record TEXT NOT NULL,
    not_before DOUBLE PRECISION NOT NULL,
    owner TEXT NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_owner ON {s}.parked (pipeline, owner, tenant, seq);
CREATE INDEX IF NOT EXISTS parked_lease ON {s}.parked (pipeline, lease_until);
"""

_PARKED_COLUMNS = (
    "seq, pipeline, tenant, task_id, key, partition, attributes, data, headers, record, not_before"
)

_TABLES = ("tasks", "paused_scopes", "cancel_requests", "parked")

_UPSERT = """
INSERT INTO {s}.tasks (id, pipeline, state, tenant, received, finished, doc)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)
ON CONFLICT (id) DO UPDATE SET
    pipeline = EXCLUDED.pipeline, state = EXCLUDED.state, tenant = EXCLUDED.tenant,
    received = EXCLUDED.received, finished = EXCLUDED.finished, doc = EXCLUDED.doc
"""


def parse_postgres_url(url: str) -> tuple[str, str]:
    """Split a store URL into asyncpg's DSN and the schema name."""
    parts = urlsplit(url)
    schema = DEFAULT_SCHEMA
    rest: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "schema":
            schema = value
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), schema


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|d[89a-f])")
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _json_text(task_id: str, doc: dict[str, Any]) -> str:
    """``doc`` as JSON that jsonb accepts.

    jsonb refuses NUL characters and lone UTF-16 surrogates in strings, which JSON (and
    so an event's data) may contain. They are replaced with U+FFFD rather than let one
    event fail every batch it is in, forever.
    """
    text = json.dumps(doc, separators=(",", ":"))
    if _UNSTORABLE_ESCAPE.search(text) is None:
        return text
    scrubbed = json.dumps(_scrub(doc), separators=(",", ":"))
    if scrubbed != text:
        log.warning("task %s: NUL or lone surrogate characters stored as U+FFFD", task_id)
    return scrubbed


def _row(record: TaskRecord) -> Row:
    doc, finished = record.stored()
    return (
        record.id,
        record.pipeline,
        record.state.value,
        record.tenant,
        record.received,
        finished,
        _json_text(record.id, doc),
    )


def _record(doc: str) -> TaskRecord:
    return TaskRecord.from_json(json.loads(doc))


class PostgresTaskStore:
    """Task records in PostgreSQL, write-behind (see ``TaskStore`` and the module docstring)."""

    def __init__(self, url: str, *, flush_interval: float = 0.02) -> None:
        self.url = url
        self._dsn, self.schema = parse_postgres_url(url)
        self._s = _identifier(self.schema)
        self._pool: Any = None
        self._buffer: WriteBehind[Row] = WriteBehind(
            f"postgres:{self.schema}", _row, self._write, interval=flush_interval
        )
        self._upsert = _UPSERT.format(s=self._s)

    def __repr__(self) -> str:
        parts = urlsplit(self._dsn)
        where = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
        return f"PostgresTaskStore({where} schema={self.schema!r})"

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise StoreError(f"{self!r} is not open")
        return self._pool

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=POOL_SIZE,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except _ERRORS as exc:
            raise StoreError(f"connecting to {self!r}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await self._create_tables(conn)
        except _ERRORS as exc:
            await pool.close()
            raise StoreError(f"creating tables in {self!r}: {exc}") from exc
        self._pool = pool
        self._buffer.start()

    async def _create_tables(self, conn: Any) -> None:
        """Create what is missing. When every table exists, no DDL runs at all, so a role
        that may only read and write rows can use tables an administrator created."""
        present = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = ANY($2)",
            self.schema,
            list(_TABLES),
        )
        if present == len(_TABLES):
            return
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"bridge-schema:{self.schema}"
            )
            await conn.execute(_SCHEMA.format(s=self._s))

    async def close(self) -> None:
        try:
            await self._buffer.stop()
        finally:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    def save(self, record: TaskRecord) -> None:
        self._buffer.save(record)

    async def flush(self) -> None:
        await self._buffer.flush()

    async def _write(self, rows: Sequence[Row]) -> None:
        ordered = sorted(rows)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(self._upsert, ordered)
        except _ERRORS as exc:
            raise StoreError(f"writing {len(rows)} tasks to {self!r}: {exc}") from exc

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        try:
            rows: list[Any] = await self.pool.fetch(sql, *args)
        except _ERRORS as exc:
            raise StoreError(f"reading {self!r}: {exc}") from exc
        return rows

    async def _execute(self, sql: str, *args: object) -> str:
        try:
            status: str = await self.pool.execute(sql, *args)
        except _ERRORS as exc:
            raise StoreError(f"writing {self!r}: {exc}") from exc
        return status

    async def finished(self, ids: Sequence[str], *, since: float) -> set[str]:
        if not ids:
            return set()
        rows = await self._fetch(
            f"SELECT id FROM {self._s}.tasks WHERE id = ANY($1::text[]) AND finished >= $2",
            list(ids),
            since,
        )
        return {row["id"] for row in rows}

    async def get(self, task_id: str) -> TaskRecord | None:
        live = self._buffer.pending(task_id)
        if live is not None:
            return live
        rows = await self._fetch(f"SELECT doc FROM {self._s}.tasks WHERE id = $1", task_id)
        return _record(rows[0]["doc"]) if rows else None

    async def query(self, query: TaskQuery) -> list[TaskRecord]:
        await self.flush()
        clauses: list[str] = []
        params: list[object] = []

        def where(clause: str, value: object) -> None:
            params.append(value)
            clauses.append(clause.format(f"${len(params)}"))

        if query.pipeline is not None:
            where("pipeline = {}", query.pipeline)
        if query.state is not None:
            where("state = {}", query.state.value)
        if query.tenant is not None:
            where("tenant = {}", query.tenant)
        if query.received_from is not None:
            where("received >= {}", query.received_from)
        if query.received_to is not None:
            where("received < {}", query.received_to)
        if query.after is not None:
            where("id > {}", query.after)
        filters = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        params.append(query.limit)
        sql = f"SELECT doc FROM {self._s}.tasks {filters} ORDER BY id LIMIT ${len(params)}"
        return [_record(row["doc"]) for row in await self._fetch(sql, *params)]

    async def purge(self, *, finished_before: float) -> int:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                status: str = await conn.execute(
                    f"DELETE FROM {self._s}.tasks WHERE finished < $1", finished_before
                )
                await conn.execute(
                    f"DELETE FROM {self._s}.cancel_requests WHERE requested < $1", finished_before
                )
        except _ERRORS as exc:
            raise StoreError(f"purging {self!r}: {exc}") from exc
        return int(status.rsplit(" ", 1)[-1])

    async def set_paused(self, scope: str, paused: bool) -> None:
        if paused:
            sql = f"INSERT INTO {self._s}.paused_scopes (scope) VALUES ($1) ON CONFLICT DO NOTHING"
        else:
            sql = f"DELETE FROM {self._s}.paused_scopes WHERE scope = $1"
        await self._execute(sql, scope)

    async def paused_scopes(self) -> set[str]:
        rows = await self._fetch(f"SELECT scope FROM {self._s}.paused_scopes")
        return {row["scope"] for row in rows}

    async def request_cancel(self, task_ids: Sequence[str], *, at: float) -> None:
        if not task_ids:
            return
        await self._execute(
            f"INSERT INTO {self._s}.cancel_requests (task_id, requested) "
            "SELECT unnest($1::text[]), $2 "
            "ON CONFLICT (task_id) DO UPDATE SET requested = EXCLUDED.requested",
            list(dict.fromkeys(task_ids)),
            at,
        )

    async def cancel_requests(self, *, since: float) -> list[tuple[str, float]]:
        rows = await self._fetch(
            f"SELECT task_id, requested FROM {self._s}.cancel_requests WHERE requested >= $1",
            since,
        )
        return [(row["task_id"], row["requested"]) for row in rows]

    async def park(self, items: Sequence[Parked], *, owner: str, lease_until: float) -> None:
        rows = [
            (
                p.pipeline, p.tenant, p.task_id, p.key, p.partition, p.attributes, p.data,
                p.headers, p.record, p.not_before, owner, lease_until,
            )
            for p in items
        ]  # fmt: skip
        if not rows:
            return
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.executemany(
                    f"INSERT INTO {self._s}.parked (pipeline, tenant, task_id, key, partition,"
                    " attributes, data, headers, record, not_before, owner, lease_until)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
                    rows,
                )
        except _ERRORS as exc:
            raise StoreError(f"parking {len(rows)} tasks in {self!r}: {exc}") from exc

    async def parked(
        self, pipeline: str, tenant: str, *, owner: str, after: int, limit: int
    ) -> list[Parked]:
        rows = await self._fetch(
            f"SELECT {_PARKED_COLUMNS} FROM {self._s}.parked WHERE pipeline = $1 AND owner = $2"
            " AND tenant = $3 AND seq > $4 ORDER BY seq LIMIT $5",
            pipeline,
            owner,
            tenant,
            after,
            limit,
        )
        return [Parked(**dict(row)) for row in rows]

    async def parked_counts(self, pipeline: str, *, owner: str) -> dict[str, int]:
        rows = await self._fetch(
            f"SELECT tenant, count(*) AS n FROM {self._s}.parked"
            " WHERE pipeline = $1 AND owner = $2 GROUP BY tenant",
            pipeline,
            owner,
        )
        return {row["tenant"]: row["n"] for row in rows}

    async def unpark(self, seqs: Sequence[int]) -> None:
        if seqs:
            await self._execute(
                f"DELETE FROM {self._s}.parked WHERE seq = ANY($1::bigint[])", list(seqs)
            )

    async def renew_leases(self, owner: str, *, until: float) -> None:
        await self._execute(
            f"UPDATE {self._s}.parked SET lease_until = $1 WHERE owner = $2", until, owner
        )

    async def claim_parked(self, pipeline: str, *, owner: str, now: float, until: float) -> int:
        status = await self._execute(
            f"UPDATE {self._s}.parked SET owner = $1, lease_until = $2"
            " WHERE pipeline = $3 AND owner <> $1 AND lease_until < $4",
            owner,
            until,
            pipeline,
            now,
        )
        return int(status.rsplit(" ", 1)[-1])
