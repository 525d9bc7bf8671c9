"""SQLite: the embedded default for task state and the embedded queue.

One connection per database file, owned by one dedicated thread (sqlite3 objects must
stay on the thread that made them), and a second one on a thread of its own for the
dedup lookup of every arriving batch, which WAL lets read while a write commits (behind
the writer, a 1,000-id lookup waited ~35 ms for the group commit ahead of it; beside
it, ~9 ms). Writes are group-committed: everything queued while the previous
transaction ran goes into the next one, so throughput grows with load instead of paying
one fsync per message. The journal is WAL with
``synchronous=NORMAL``: a committed write survives the process being killed
(``kill -9``); a power cut may lose the last few transactions (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from consumer_core import codec
from consumer_core.errors import StoreError
from consumer_core.store.base import Parked, TaskQuery
from consumer_core.store.writebehind import WriteBehind
from consumer_core.tasks import TaskRecord

__all__ = ["SqliteDatabase", "SqliteDatabases", "SqliteTaskStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")
Write = Callable[[sqlite3.Connection], object]


class SqliteDatabase:
    """A SQLite file behind one thread, with group-committed writes.

    ``run(fn)`` runs ``fn(connection)`` on the database thread and returns its result.
    ``write(fn)`` queues ``fn`` for the next transaction; the returned future resolves
    once that transaction committed (or carries the error that rolled it back).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        self._conn: sqlite3.Connection | None = None
        self._reader_executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"sqlite-read-{path.name}"
        )
        self._reader: sqlite3.Connection | None = None
        self._opening = asyncio.Lock()
        self._pending: list[tuple[Write, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._users = 0

    async def open(self) -> None:
        async with self._opening:  # a second user waits for the first one's open
            if self._conn is None:
                await self._connect()
            self._users += 1

    async def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=5000")
            return conn

        conn = await self._call(connect)
        try:
            reader = await self._call(connect, self._reader_executor)
        except BaseException:
            await self._call(conn.close)
            raise
        self._conn, self._reader = conn, reader
        self._writer = asyncio.create_task(self._write_loop(), name=f"sqlite-writer:{self.path}")

    async def close(self) -> None:
        self._users -= 1
        if self._users > 0 or self._conn is None:
            return
        while self._pending:
            await asyncio.sleep(0.001)
            self._wake.set()
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        conn, self._conn = self._conn, None
        await self._call(conn.close)
        self._executor.shutdown(wait=True)
        reader, self._reader = self._reader, None
        if reader is not None:
            await self._call(reader.close, self._reader_executor)
        self._reader_executor.shutdown(wait=True)

    async def _call(self, fn: Callable[[], T], executor: ThreadPoolExecutor | None = None) -> T:
        """Run ``fn`` on the writer's thread, or on ``executor``'s."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor or self._executor, fn)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._on(self._conn, self._executor, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``fn`` on the reader connection: it sees every committed write
        and does not wait for the writer's transaction to end."""
        return await self._on(self._reader, self._reader_executor, fn)

    async def _on(
        self,
        conn: sqlite3.Connection | None,
        executor: ThreadPoolExecutor,
        fn: Callable[[sqlite3.Connection], T],
    ) -> T:
        if conn is None:
            raise StoreError(f"database {self.path} is not open")
        try:
            return await self._call(lambda: fn(conn), executor)
        except sqlite3.Error as exc:
            raise StoreError(f"reading {self.path}: {exc}") from exc

    def write(self, fn: Write) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, future))
        self._wake.set()
        return future

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            writes = [fn for fn, _ in batch]

            def apply(conn: sqlite3.Connection, writes: list[Write] = writes) -> None:
                _apply(conn, writes)

            try:
                await self.run(apply)
            except StoreError as exc:
                log.error("sqlite write to %s failed: %s", self.path, exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, future in batch:
                if not future.done():
                    future.set_result(None)


def _apply(conn: sqlite3.Connection, writes: Sequence[Write]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        for write in writes:
            write(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    state TEXT NOT NULL,
    tenant TEXT NOT NULL,
    received REAL,
    finished REAL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_pipeline_state ON tasks (pipeline, state, id);
CREATE INDEX IF NOT EXISTS tasks_finished ON tasks (finished);
CREATE TABLE IF NOT EXISTS paused_scopes (scope TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS cancel_requests (task_id TEXT PRIMARY KEY, requested REAL NOT NULL);
CREATE INDEX IF NOT EXISTS cancel_requests_requested ON cancel_requests (requested);
CREATE TABLE IF NOT EXISTS parked (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    tenant TEXT NOT NULL,
    task_id TEXT NOT NULL,
    key TEXT,
    partition TEXT,
    attributes TEXT NOT NULL,
    data BLOB,
    headers TEXT NOT NULL,
    record TEXT NOT NULL,
    not_before REAL NOT NULL,
    owner TEXT NOT NULL,
    lease_until REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS parked_owner ON parked (pipeline, owner, tenant, seq);
"""

_PARKED_COLUMNS = (
    "seq, pipeline, tenant, task_id, key, partition, attributes, data, headers, record, not_before"
)

_UPSERT = (
    "INSERT INTO tasks (id, pipeline, state, tenant, received, finished, doc) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
    "state=excluded.state, tenant=excluded.tenant, received=excluded.received, "
    "finished=excluded.finished, doc=excluded.doc"
)


_UPSERT_JSON = (
    "INSERT INTO tasks (id, pipeline, state, tenant, received, finished, doc) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
    "json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]'), "
    "json_extract(value, '$[5]'), json_extract(value, '$[6]') "
    "FROM json_each(?) WHERE true ON CONFLICT(id) DO UPDATE SET "
    "state=excluded.state, tenant=excluded.tenant, received=excluded.received, "
    "finished=excluded.finished, doc=excluded.doc"
)
"""``_UPSERT`` for a whole batch in one statement, the rows passed as one JSON array.

Why: ``executemany`` binds each row holding the GIL and steps it without, so a batch of
n rows takes the GIL back 2n times from the event loop's thread. With the loop busy,
each take waits for the loop to let go (up to the 5 ms switch interval): measured in
batch mode's drain, a 530-row transaction took 40 ms, and the settle stage waited for
it. One statement takes the GIL back once. ``WHERE true`` is SQLite's documented way
to write an upsert after a ``SELECT``."""


def _has_json(conn: sqlite3.Connection) -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38, an option before)."""
    try:
        conn.execute("SELECT json_extract('[1]', '$[0]')").fetchone()
    except sqlite3.OperationalError:
        return False
    return True


def _row(record: TaskRecord) -> tuple[Any, ...]:
    doc, finished = record.stored()
    return (
        record.id,
        record.pipeline,
        record.state.value,
        record.tenant,
        record.received,
        finished,
        codec.dumps_text(doc),
    )


class SqliteTaskStore:
    """Task records in SQLite, write-behind with group commit (see ``TaskStore``)."""

    def __init__(self, db: SqliteDatabase, *, flush_interval: float = 0.02) -> None:
        self.db = db
        self._json = False
        """Whether batches are written as one JSON statement (``_UPSERT_JSON``)."""
        self._buffer: WriteBehind[tuple[Any, ...]] = WriteBehind(
            f"sqlite:{db.path.name}", _row, self._write_rows, interval=flush_interval
        )

    async def open(self) -> None:
        await self.db.open()
        await self.db.run(lambda conn: conn.executescript(_SCHEMA))
        self._json = await self.db.run(_has_json)
        self._buffer.start()

    async def close(self) -> None:
        try:
            await self._buffer.stop()
        finally:
            await self.db.close()

    async def _write_rows(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if self._json:
            await self.db.write(lambda conn: conn.execute(_UPSERT_JSON, (codec.dumps_text(rows),)))
        else:
            await self.db.write(lambda conn: conn.executemany(_UPSERT, rows))

    def save(self, record: TaskRecord) -> None:
        self._buffer.save(record)

    async def flush(self) -> None:
        await self._buffer.flush()

    async def finished(self, ids: Sequence[str], *, since: float) -> set[str]:
        if not ids:
            return set()
        wanted = list(ids)

        def select(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id FROM tasks WHERE id IN ({marks}) AND finished >= ?"
                found.update(row[0] for row in conn.execute(sql, [*chunk, since]))
            return found

        return await self.db.read(select)

    async def get(self, task_id: str) -> TaskRecord | None:
        live = self._buffer.pending(task_id)
        if live is not None:
            return live
        rows = await self.db.run(
            lambda conn: conn.execute("SELECT doc FROM tasks WHERE id = ?", (task_id,)).fetchall()
        )
        return TaskRecord.from_json(codec.loads(rows[0][0])) if rows else None

    async def query(self, query: TaskQuery) -> list[TaskRecord]:
        await self.flush()
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("pipeline", query.pipeline),
            ("state", query.state.value if query.state else None),
            ("tenant", query.tenant),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.received_from is not None:
            clauses.append("received >= ?")
            params.append(query.received_from)
        if query.received_to is not None:
            clauses.append("received < ?")
            params.append(query.received_to)
        if query.after is not None:
            clauses.append("id > ?")
            params.append(query.after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT doc FROM tasks {where} ORDER BY id LIMIT ?"
        params.append(query.limit)
        rows = await self.db.run(lambda conn: conn.execute(sql, params).fetchall())
        return [TaskRecord.from_json(codec.loads(row[0])) for row in rows]

    async def purge(self, *, finished_before: float) -> int:
        count: list[int] = []

        def delete(conn: sqlite3.Connection) -> None:
            cursor = conn.execute("DELETE FROM tasks WHERE finished < ?", (finished_before,))
            count.append(cursor.rowcount)
            conn.execute("DELETE FROM cancel_requests WHERE requested < ?", (finished_before,))

        await self.db.write(delete)
        return count[0] if count else 0

    async def set_paused(self, scope: str, paused: bool) -> None:
        sql = (
            "INSERT OR IGNORE INTO paused_scopes (scope) VALUES (?)"
            if paused
            else "DELETE FROM paused_scopes WHERE scope = ?"
        )
        await self.db.write(lambda conn: conn.execute(sql, (scope,)))

    async def paused_scopes(self) -> set[str]:
        rows = await self.db.run(
            lambda conn: conn.execute("SELECT scope FROM paused_scopes").fetchall()
        )
        return {row[0] for row in rows}

    async def request_cancel(self, task_ids: Sequence[str], *, at: float) -> None:
        rows = [(tid, at) for tid in task_ids]
        await self.db.write(
            lambda conn: conn.executemany(
                "INSERT OR REPLACE INTO cancel_requests (task_id, requested) VALUES (?, ?)", rows
            )
        )

    async def cancel_requests(self, *, since: float) -> list[tuple[str, float]]:
        rows = await self.db.run(
            lambda conn: conn.execute(
                "SELECT task_id, requested FROM cancel_requests WHERE requested >= ?", (since,)
            ).fetchall()
        )
        return [(row[0], row[1]) for row in rows]

    async def park(self, items: Sequence[Parked], *, owner: str, lease_until: float) -> None:
        rows = [
            (
                p.pipeline, p.tenant, p.task_id, p.key, p.partition, p.attributes, p.data,
                p.headers, p.record, p.not_before, owner, lease_until,
            )
            for p in items
        ]  # fmt: skip
        await self.db.write(
            lambda conn: conn.executemany(
                "INSERT INTO parked (pipeline, tenant, task_id, key, partition, attributes, data,"
                " headers, record, not_before, owner, lease_until)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        )

    async def parked(
        self, pipeline: str, tenant: str, *, owner: str, after: int, limit: int
    ) -> list[Parked]:
        rows = await self.db.run(
            lambda conn: conn.execute(
                f"SELECT {_PARKED_COLUMNS} FROM parked WHERE pipeline = ? AND owner = ?"
                " AND tenant = ? AND seq > ? ORDER BY seq LIMIT ?",
                (pipeline, owner, tenant, after, limit),
            ).fetchall()
        )
        return [_parked(row) for row in rows]

    async def parked_counts(self, pipeline: str, *, owner: str) -> dict[str, int]:
        rows = await self.db.run(
            lambda conn: conn.execute(
                "SELECT tenant, count(*) FROM parked WHERE pipeline = ? AND owner = ?"
                " GROUP BY tenant",
                (pipeline, owner),
            ).fetchall()
        )
        return {row[0]: row[1] for row in rows}

    async def unpark(self, seqs: Sequence[int]) -> None:
        rows = [(seq,) for seq in seqs]
        await self.db.write(lambda conn: conn.executemany("DELETE FROM parked WHERE seq = ?", rows))

    async def renew_leases(self, owner: str, *, until: float) -> None:
        await self.db.write(
            lambda conn: conn.execute(
                "UPDATE parked SET lease_until = ? WHERE owner = ?", (until, owner)
            )
        )

    async def claim_parked(self, pipeline: str, *, owner: str, now: float, until: float) -> int:
        count: list[int] = []

        def claim(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "UPDATE parked SET owner = ?, lease_until = ?"
                " WHERE pipeline = ? AND owner != ? AND lease_until < ?",
                (owner, until, pipeline, owner, now),
            )
            count.append(cursor.rowcount)

        await self.db.write(claim)
        return count[0] if count else 0


def _parked(row: tuple[Any, ...]) -> Parked:
    return Parked(
        seq=row[0],
        pipeline=row[1],
        tenant=row[2],
        task_id=row[3],
        key=row[4],
        partition=row[5],
        attributes=row[6],
        data=row[7],
        headers=row[8],
        record=row[9],
        not_before=row[10],
    )


class SqliteDatabases:
    """One ``SqliteDatabase`` per file, shared by the task store and embedded queues."""

    def __init__(self) -> None:
        self._by_path: dict[Path, SqliteDatabase] = {}

    def get(self, path: Path) -> SqliteDatabase:
        key = path.resolve()
        if key not in self._by_path:
            self._by_path[key] = SqliteDatabase(key)
        return self._by_path[key]
