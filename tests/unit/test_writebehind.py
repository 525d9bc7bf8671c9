"""The write-behind buffer behind the Redis and PostgreSQL stores, with a fake backend."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from consumer_core.errors import StoreError
from consumer_core.store.writebehind import WriteBehind
from consumer_core.tasks import TaskRecord, TaskState


def task(n: int, state: TaskState = TaskState.PENDING) -> TaskRecord:
    return TaskRecord(id=f"p:{n}", pipeline="p", event_id=str(n), state=state)


class Backend:
    """Records every batch; can be told to fail or to hold a write until released."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, str]]] = []
        self.failures = 0
        self.release: asyncio.Event | None = None
        self.active = 0
        self.most_active = 0
        self.writing = asyncio.Event()

    async def write(self, rows: Sequence[tuple[str, str]]) -> None:
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self.writing.set()
        try:
            if self.release is not None:
                await self.release.wait()
            if self.failures:
                self.failures -= 1
                raise StoreError("backend down")
            self.batches.append(list(rows))
        finally:
            self.active -= 1

    @property
    def stored(self) -> dict[str, str]:
        return {tid: state for batch in self.batches for tid, state in batch}


def encode(record: TaskRecord) -> tuple[str, str]:
    return (record.id, record.state.value)


@pytest.fixture
async def backend() -> Backend:
    return Backend()


@pytest.fixture
async def buffer(backend: Backend) -> AsyncIterator[WriteBehind[tuple[str, str]]]:
    wb = WriteBehind("test", encode, backend.write, interval=10.0, max_dirty=1000)
    wb.start()
    yield wb
    backend.failures, backend.release = 0, None
    await wb.stop()


async def test_flush_writes_the_latest_snapshot_in_one_batch(
    buffer: WriteBehind[tuple[str, str]], backend: Backend
) -> None:
    record = task(1)
    buffer.save(record)
    buffer.save(task(2))
    record.state = TaskState.RUNNING
    buffer.save(record)
    await buffer.flush()
    assert backend.batches == [[("p:1", "running"), ("p:2", "pending")]]


async def test_full_buffer_is_written_without_waiting_for_the_interval(
    backend: Backend,
) -> None:
    wb = WriteBehind("test", encode, backend.write, interval=10.0, max_dirty=3)
    wb.start()
    try:
        for n in range(3):
            wb.save(task(n))
        for _ in range(100):
            if backend.batches:
                break
            await asyncio.sleep(0.001)
        assert len(backend.stored) == 3
    finally:
        await wb.stop()


async def test_failed_batch_is_requeued_and_newer_saves_win(backend: Backend) -> None:
    wb = WriteBehind("test", encode, backend.write, interval=0.01)
    wb.start()
    try:
        backend.failures = 1
        wb.save(task(1))
        wb.save(task(2))
        with pytest.raises(StoreError, match="backend down"):
            await wb.flush()
        wb.save(task(2, TaskState.RUNNING))
        assert wb.pending("p:1") == task(1)
        await wb.flush()
        assert backend.stored == {"p:1": "pending", "p:2": "running"}
    finally:
        await wb.stop()


async def test_requeued_batch_is_retried_in_the_background(backend: Backend) -> None:
    wb = WriteBehind("test", encode, backend.write, interval=0.01)
    wb.start()
    try:
        backend.failures = 3
        wb.save(task(1))
        for _ in range(500):
            if backend.stored:
                break
            await asyncio.sleep(0.005)
        assert backend.stored == {"p:1": "pending"}
    finally:
        await wb.stop()


async def test_records_being_written_stay_visible(
    buffer: WriteBehind[tuple[str, str]], backend: Backend
) -> None:
    backend.release = asyncio.Event()
    buffer.save(task(1))
    flushing = asyncio.create_task(buffer.flush())
    await backend.writing.wait()
    assert buffer.pending("p:1") == task(1)
    backend.release.set()
    await flushing
    assert buffer.pending("p:1") is None


async def test_flush_waits_for_the_batch_in_flight(
    buffer: WriteBehind[tuple[str, str]], backend: Backend
) -> None:
    backend.release = asyncio.Event()
    buffer.save(task(1))
    first = asyncio.create_task(buffer.flush())
    await backend.writing.wait()
    second = asyncio.create_task(buffer.flush())  # nothing dirty, but p:1 is not written yet
    await asyncio.sleep(0.01)
    assert not second.done()
    backend.release.set()
    await asyncio.gather(first, second)


async def test_batches_are_written_one_at_a_time(
    buffer: WriteBehind[tuple[str, str]], backend: Backend
) -> None:
    async def work(n: int) -> None:
        for i in range(20):
            buffer.save(task(n * 100 + i))
            await buffer.flush()

    await asyncio.gather(*(work(n) for n in range(10)))
    assert backend.most_active == 1
    assert len(backend.stored) == 200


async def test_cancelled_flush_does_not_cancel_the_batch(
    buffer: WriteBehind[tuple[str, str]], backend: Backend
) -> None:
    backend.release = asyncio.Event()
    buffer.save(task(1))
    impatient = asyncio.create_task(buffer.flush())
    patient = asyncio.create_task(buffer.flush())
    await asyncio.sleep(0.01)
    impatient.cancel()
    backend.release.set()
    await patient
    assert backend.stored == {"p:1": "pending"}


async def test_flush_before_start_fails_instead_of_hanging(backend: Backend) -> None:
    wb = WriteBehind("test", encode, backend.write)
    await wb.flush()  # nothing saved: nothing to wait for
    wb.save(task(1))
    with pytest.raises(StoreError, match="not open"):
        await wb.flush()


async def test_stop_writes_what_is_dirty(backend: Backend) -> None:
    wb = WriteBehind("test", encode, backend.write, interval=10.0)
    wb.start()
    wb.save(task(1))
    await wb.stop()
    assert backend.stored == {"p:1": "pending"}
