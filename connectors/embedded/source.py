"""``type: embedded``: events posted to the bridge itself, queued durably in SQLite.

``POST /v1/pipelines/{name}/events`` calls ``submit``, which returns (and the route
answers 202) only after the event is committed. The queue lives in the state database
when ``state.url`` is SQLite, else in ``.bridge/embedded.db``.

What the settle verbs mean here:

========  ==============================================================
ack       delete the row (batched); after a crash an undeleted row is
          delivered again and dedup drops it (its task is already final)
nack      deliver the row again, after ``delay`` seconds
========  ==============================================================

The ordering key is the event's ``partitionkey`` extension attribute.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any, Self

from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Delivery, Resources
from consumer_core.events import CloudEvent, attributes_json, from_stored, partition_key
from consumer_core.store.base import sqlite_path
from consumer_core.store.sqlite import SqliteDatabase

__all__ = ["EmbeddedSource"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS embedded_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    attributes TEXT NOT NULL,
    data BLOB,
    headers TEXT NOT NULL,
    enqueued REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS embedded_queue_pipeline ON embedded_queue (pipeline, seq);
"""

_INSERT = (
    "INSERT INTO embedded_queue (pipeline, attributes, data, headers, enqueued) "
    "VALUES (?, ?, ?, ?, ?)"
)

Row = tuple[int, str, bytes | None, str]


class EmbeddedDelivery(Delivery):
    __slots__ = ("row", "source")

    def __init__(self, source: EmbeddedSource, row: Row, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.row = row

    async def _ack(self) -> None:
        self.source.delete(self.row[0])

    async def _nack(self, delay: float | None) -> None:
        self.source.redeliver(self.row, delay or 0.0)


class EmbeddedSource:
    """A durable FIFO per pipeline, fed over HTTP (see the module docstring)."""

    type_name = "embedded"

    def __init__(self, *, pipeline: str, db: SqliteDatabase, max_body_bytes: int) -> None:
        self.pipeline = pipeline
        self.db = db
        self.max_body_bytes = max_body_bytes
        self.source_uri = f"/bridge/pipelines/{pipeline}/events"
        self._cursor = 0
        self._arrived = asyncio.Event()
        self._again: list[tuple[float, Row]] = []
        self._deletes: list[int] = []
        self._backlog = 0

    @classmethod
    def from_config(cls, pipeline: str, spec: ComponentSpec, res: Resources) -> Self:
        url = res.state_url
        path = (
            sqlite_path(url, res.base_dir)
            if url.startswith("sqlite://")
            else res.base_dir / ".bridge" / "embedded.db"
        )
        source = cls(
            pipeline=pipeline,
            db=res.databases.get(path),
            max_body_bytes=int(spec.options.get("max_body_bytes", 1 << 20)),
        )
        res.intake[pipeline] = source
        return source

    async def connect(self) -> None:
        await self.db.open()
        await self.db.run(lambda conn: conn.executescript(_SCHEMA))
        self._backlog = await self.db.run(
            lambda conn: conn.execute(
                "SELECT count(*) FROM embedded_queue WHERE pipeline = ?", (self.pipeline,)
            ).fetchone()[0]
        )

    async def close(self) -> None:
        self._flush_deletes()
        await self.db.close()

    async def submit(self, event: CloudEvent, headers: Mapping[str, str]) -> None:
        """Store ``event`` durably; returns once committed."""
        data = event.get_data()
        row = (
            self.pipeline,
            attributes_json(event),
            data if isinstance(data, bytes) or data is None else str(data).encode(),
            json.dumps(dict(headers)),
            time.time(),
        )
        await self.db.write(
            lambda conn: conn.execute(
                _INSERT,
                row,
            )
        )
        self._backlog += 1
        self._arrived.set()

    def lag(self) -> Mapping[str, int]:
        return {"queue": max(0, self._backlog)}

    async def receive(self, max_messages: int, timeout: float) -> Sequence[Delivery]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self._due_again(max_messages)
            if len(rows) < max_messages:
                self._arrived.clear()
                rows += await self._read(max_messages - len(rows))
            if rows:
                return [self._delivery(row) for row in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            wait = min(remaining, self._next_again() - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), max(wait, 0.001))

    async def _read(self, limit: int) -> list[Row]:
        cursor, pipeline = self._cursor, self.pipeline

        def select(conn: sqlite3.Connection) -> list[Row]:
            return conn.execute(
                "SELECT seq, attributes, data, headers FROM embedded_queue "
                "WHERE pipeline = ? AND seq > ? ORDER BY seq LIMIT ?",
                (pipeline, cursor, limit),
            ).fetchall()

        rows = await self.db.run(select)
        if rows:
            self._cursor = max(self._cursor, rows[-1][0])
        return rows

    def _due_again(self, limit: int) -> list[Row]:
        if not self._again:
            return []
        now = time.monotonic()
        due = [item for item in self._again if item[0] <= now][:limit]
        if due:
            taken = {id(item) for item in due}
            self._again = [item for item in self._again if id(item) not in taken]
        return [row for _, row in due]

    def _next_again(self) -> float:
        return min((at for at, _ in self._again), default=float("inf"))

    def _delivery(self, row: Row) -> Delivery:
        seq, attributes, data, headers = row
        try:
            event: CloudEvent | None = from_stored(attributes, data)
            error = None
        except ValueError as exc:  # only a hand-edited database gets here
            event, error = None, str(exc)
        event_id = str(event.get_id()) if event is not None else f"embedded-{seq}"
        return EmbeddedDelivery(
            self,
            row,
            event=event,
            event_id=event_id,
            raw=data or b"",
            key=partition_key(event) if event is not None else None,
            partition="queue",
            headers=json.loads(headers),
            attributes={"messaging.system": "bridge", "messaging.message.id": event_id},
            decode_error=error,
        )

    def delete(self, seq: int) -> None:
        self._backlog -= 1
        if not self._deletes:
            asyncio.get_running_loop().call_soon(self._flush_deletes)
        self._deletes.append(seq)

    def _flush_deletes(self) -> None:
        seqs, self._deletes = [(s,) for s in self._deletes], []
        if seqs:
            future = self.db.write(
                lambda conn: conn.executemany("DELETE FROM embedded_queue WHERE seq = ?", seqs)
            )
            # A lost delete only means a redelivery, which dedup absorbs; the writer logs it.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def redeliver(self, row: Row, delay: float) -> None:
        self._again.append((time.monotonic() + delay, row))
        self._arrived.set()
