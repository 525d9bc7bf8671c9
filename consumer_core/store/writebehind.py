"""The write-behind buffer shared by the server-backed stores (Redis, PostgreSQL).

``save`` only remembers a record as dirty; one writer task writes every dirty record's
latest state in one batch, every ``interval`` seconds or as soon as ``max_dirty``
records are waiting, whichever comes first. Batches are written one at a time, in
order, so an older snapshot of a task can never overwrite a newer one written by this
instance. A batch that fails is put back (records saved again meanwhile keep their
newer state) and retried with backoff, so a store outage loses nothing that is still
in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from consumer_core.errors import StoreError
from consumer_core.tasks import TaskRecord

__all__ = ["WriteBehind"]

log = logging.getLogger(__name__)
Row = TypeVar("Row")

MAX_BACKOFF = 2.0


class WriteBehind(Generic[Row]):
    """Dirty records and the one task that writes them.

    ``encode`` turns a record into the backend's row *when its batch is taken*, so
    later changes to the record object go into a later batch (after a new ``save``).
    ``write`` stores a batch of rows and raises ``StoreError`` when it could not; it
    is never called twice at once.
    """

    def __init__(
        self,
        name: str,
        encode: Callable[[TaskRecord], Row],
        write: Callable[[Sequence[Row]], Awaitable[None]],
        *,
        interval: float = 0.02,
        max_dirty: int = 2000,
    ) -> None:
        self.name = name
        self.interval = interval
        self.max_dirty = max_dirty
        self._encode = encode
        self._write = write
        self._dirty: dict[str, TaskRecord] = {}
        """Saved since the current batch was taken; the latest snapshot per id."""
        self._writing: dict[str, TaskRecord] = {}
        """The batch being written now (still visible to ``pending``)."""
        self._next: asyncio.Future[None] | None = None
        """Resolves when the batch that takes the current ``_dirty`` is written."""
        self._inflight: asyncio.Future[None] | None = None
        """Resolves when ``_writing`` is written; ``None`` when nothing is."""
        self._kick = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._failures = 0

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name=f"task-store-flush:{self.name}")

    async def stop(self) -> None:
        """Write what is dirty, then stop the writer (even if that write failed)."""
        try:
            await self.flush()
        finally:
            if self._writer is not None:
                self._writer.cancel()
                await asyncio.gather(self._writer, return_exceptions=True)
                self._writer = None
            if self._next is not None and not self._next.done():
                self._next.set_exception(StoreError(f"task store {self.name} closed"))
                self._next.exception()

    def save(self, record: TaskRecord) -> None:
        self._dirty[record.id] = record
        if len(self._dirty) >= self.max_dirty:
            self._kick.set()

    def pending(self, task_id: str) -> TaskRecord | None:
        """The latest saved snapshot of a task not yet acknowledged by the store."""
        record = self._dirty.get(task_id)
        return record if record is not None else self._writing.get(task_id)

    async def flush(self) -> None:
        """Return once everything saved before the call is written; raise ``StoreError`` if
        the batch holding it failed (it stays queued and is retried in the background)."""
        if self._writer is None or self._writer.done():
            if self._dirty:
                raise StoreError(f"task store {self.name} is not open")
            return
        if self._dirty:
            if self._next is None:
                self._next = asyncio.get_running_loop().create_future()
            waiting = self._next
            self._kick.set()
        elif self._inflight is not None:
            waiting = self._inflight
        else:
            return
        # Shielded: a cancelled caller must not cancel the batch others wait for.
        await asyncio.shield(waiting)

    async def _write_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.interval)
            self._kick.clear()
            if self._dirty:
                await self._write_batch()
            if self._failures:
                await asyncio.sleep(min(self.interval * 2**self._failures, MAX_BACKOFF))

    async def _write_batch(self) -> None:
        batch, self._dirty = self._dirty, {}
        done = self._next or asyncio.get_running_loop().create_future()
        self._next = None
        self._writing, self._inflight = batch, done
        try:
            await self._write([self._encode(record) for record in batch.values()])
        except asyncio.CancelledError:
            self._requeue(batch, None)
            done.set_exception(StoreError(f"task store {self.name} closed while writing"))
            done.exception()
            raise
        except Exception as exc:  # recorded: the batch is requeued and its waiters get it
            error = exc if isinstance(exc, StoreError) else StoreError(f"{self.name}: {exc!r}")
            self._requeue(batch, error)
            done.set_exception(error)
            done.exception()  # retrieved here: nobody may be waiting for this batch
        else:
            if self._failures:
                log.info(
                    "task store %s: writing again after %d failures", self.name, self._failures
                )
            self._failures = 0
            done.set_result(None)
        finally:
            self._writing, self._inflight = {}, None

    def _requeue(self, batch: dict[str, TaskRecord], error: Exception | None) -> None:
        for task_id, record in batch.items():
            self._dirty.setdefault(task_id, record)
        if error is None:
            return
        if self._failures == 0:
            log.error(
                "task store %s: writing %d tasks failed, retrying: %s", self.name, len(batch), error
            )
        self._failures += 1
