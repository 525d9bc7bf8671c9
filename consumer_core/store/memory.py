"""In memory: a task store that keeps nothing once the process exits.

Selected by ``state.url: "memory://"``. It is for development and for measuring what
durable task state costs (run the same load against it and against a durable store):
it answers like the SQLite store, but **nothing survives a restart**. Task records,
dedup history, pauses, cancel requests and parked tasks live in this process only, so
after a crash or a restart a redelivered message whose task had already finished is
invoked again, and tasks parked out of their source (whose messages were acked) are
gone. It is not shared either: every process (and every instance of this class) has
its own. Never use it where a message must not be processed twice after a crash.

``save`` stores a snapshot of the record at once (there is no write-behind), so
``flush`` has nothing to wait for. Memory held by finished tasks is bounded only by
``purge``, which the runner calls with ``state.retention``; tasks that never finish are
never purged (as in every store).

Costs: ``save``, ``get``, ``finished`` (per id), ``park`` (per row), ``unpark`` and
``parked_counts`` are O(1) amortized, ``parked`` is O(log n + page) and ``purge`` is
O(purged * log n) plus one pass over the ids when it deleted any. ``query`` walks the
task ids in order from the cursor and checks its filters task by task (there are no
secondary indexes), so a filter that matches few of many tasks reads many per page.
``renew_leases`` and ``claim_parked`` walk the rows concerned, like the SQL stores.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
from collections.abc import Sequence

from consumer_core.store.base import Parked, TaskQuery
from consumer_core.tasks import TaskRecord

__all__ = ["MemoryTaskStore"]

_Group = tuple[str, str, str]
"""(pipeline, owner, tenant): the parked rows one ``parked`` call reads."""


def _snapshot(record: TaskRecord) -> TaskRecord:
    """A copy that later changes to ``record`` do not reach.

    ``history`` is the only part the core changes in place (it appends attempts);
    ``error`` and ``event`` are replaced, never mutated, so they are shared.
    """
    return dataclasses.replace(record, history=list(record.history))


class _Rows:
    """The parked rows of one group: their ``seq``s in order (some may be stale:
    unparked rows, dropped lazily) and how many are live."""

    __slots__ = ("group", "live", "seqs")

    def __init__(self, group: _Group) -> None:
        self.group = group
        self.seqs: list[int] = []
        self.live = 0


@dataclasses.dataclass(slots=True)
class _Slot:
    """A parked row and who holds it."""

    row: Parked
    rows: _Rows
    """The group it belongs to now (``rows.seqs`` holds its ``seq``)."""
    lease_until: float


class MemoryTaskStore:
    """Task state in this process's memory (see the module docstring: not durable)."""

    def __init__(self) -> None:
        self._tasks: dict[str, TaskRecord] = {}
        """The latest saved snapshot of every task."""
        self._finished: dict[str, float] = {}
        """Tasks finished for good: id -> when (``TaskRecord.finished_at``)."""
        self._by_finish: list[tuple[float, str]] = []
        """Heap of ``_finished`` entries for ``purge``; entries whose task has since
        changed are stale (``_finished`` no longer holds that time) and are skipped."""
        self._ids: list[str] = []
        """Task ids in order (code points, i.e. UTF-8 bytes), for ``query``."""
        self._new_ids: list[str] = []
        """Ids saved for the first time since ``_ids`` was last sorted."""
        self._paused: set[str] = set()
        self._cancels: dict[str, float] = {}
        """Cancel requests: task id -> when it was requested."""
        self._cancel_times: list[tuple[float, str]] = []
        """``_cancels`` as (time, id), sorted; entries that were replaced are stale."""
        self._seq = itertools.count(1)
        self._slots: dict[int, _Slot] = {}
        """Every parked row by ``seq``."""
        self._groups: dict[_Group, _Rows] = {}

    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release; the state goes with this object."""

    # Records.

    def save(self, record: TaskRecord) -> None:
        task_id = record.id
        if task_id not in self._tasks:
            self._new_ids.append(task_id)
        self._tasks[task_id] = _snapshot(record)
        done = record.finished_at
        if done is None:
            self._finished.pop(task_id, None)
        elif self._finished.get(task_id) != done:
            self._finished[task_id] = done
            heapq.heappush(self._by_finish, (done, task_id))

    async def flush(self) -> None:
        """Everything saved is already stored."""

    async def finished(self, ids: Sequence[str], *, since: float) -> set[str]:
        done = self._finished
        found: set[str] = set()
        for task_id in ids:
            at = done.get(task_id)
            if at is not None and at >= since:
                found.add(task_id)
        return found

    async def get(self, task_id: str) -> TaskRecord | None:
        record = self._tasks.get(task_id)
        return _snapshot(record) if record is not None else None

    async def query(self, query: TaskQuery) -> list[TaskRecord]:
        ids = self._sorted_ids()
        tasks = self._tasks
        state, start, end = query.state, query.received_from, query.received_to
        found: list[TaskRecord] = []
        if query.limit <= 0:
            return found
        first = 0 if query.after is None else bisect.bisect_right(ids, query.after)
        for index in range(first, len(ids)):
            record = tasks[ids[index]]
            if (
                (query.pipeline is not None and record.pipeline != query.pipeline)
                or (state is not None and record.state != state)
                or (query.tenant is not None and record.tenant != query.tenant)
            ):
                continue
            received = record.received
            if (start is not None or end is not None) and (
                received is None
                or (start is not None and received < start)
                or (end is not None and received >= end)
            ):
                continue
            found.append(_snapshot(record))
            if len(found) >= query.limit:
                break
        return found

    def _sorted_ids(self) -> list[str]:
        if self._new_ids:
            # A sorted run plus a short tail: the sort merges the tail in.
            self._ids.extend(self._new_ids)
            self._new_ids.clear()
            self._ids.sort()
        return self._ids

    async def purge(self, *, finished_before: float) -> int:
        heap, done, tasks = self._by_finish, self._finished, self._tasks
        count = 0
        while heap and heap[0][0] < finished_before:
            at, task_id = heapq.heappop(heap)
            if done.get(task_id) == at:
                del done[task_id]
                del tasks[task_id]
                count += 1
        if count:
            self._ids = [task_id for task_id in self._ids if task_id in tasks]
            self._new_ids = [task_id for task_id in self._new_ids if task_id in tasks]
        self._purge_cancels(finished_before)
        return count

    def _purge_cancels(self, before: float) -> None:
        times = self._cancel_times
        end = bisect.bisect_left(times, (before,))
        for at, task_id in times[:end]:
            if self._cancels.get(task_id) == at:
                del self._cancels[task_id]
        del times[:end]

    # Operator state.

    async def set_paused(self, scope: str, paused: bool) -> None:
        if paused:
            self._paused.add(scope)
        else:
            self._paused.discard(scope)

    async def paused_scopes(self) -> set[str]:
        return set(self._paused)

    async def request_cancel(self, task_ids: Sequence[str], *, at: float) -> None:
        for task_id in task_ids:
            if self._cancels.get(task_id) == at:
                continue
            self._cancels[task_id] = at  # a later request replaces an earlier one
            bisect.insort(self._cancel_times, (at, task_id))

    async def cancel_requests(self, *, since: float) -> list[tuple[str, float]]:
        times = self._cancel_times
        first = bisect.bisect_left(times, (since,))
        return [(task_id, at) for at, task_id in times[first:] if self._cancels.get(task_id) == at]

    # Parked tasks.

    async def park(self, items: Sequence[Parked], *, owner: str, lease_until: float) -> None:
        for item in items:
            row = dataclasses.replace(item, seq=next(self._seq))
            rows = self._rows((row.pipeline, owner, row.tenant))
            rows.seqs.append(row.seq)  # seqs only grow: the list stays sorted
            rows.live += 1
            self._slots[row.seq] = _Slot(row, rows, lease_until)

    def _rows(self, group: _Group) -> _Rows:
        rows = self._groups.get(group)
        if rows is None:
            rows = self._groups[group] = _Rows(group)
        return rows

    async def parked(
        self, pipeline: str, tenant: str, *, owner: str, after: int, limit: int
    ) -> list[Parked]:
        rows = self._groups.get((pipeline, owner, tenant))
        found: list[Parked] = []
        if rows is None or limit <= 0:
            return found
        seqs = rows.seqs
        for index in range(bisect.bisect_right(seqs, after), len(seqs)):
            slot = self._slots.get(seqs[index])
            if slot is not None and slot.rows is rows:
                found.append(slot.row)
                if len(found) >= limit:
                    break
        return found

    async def parked_counts(self, pipeline: str, *, owner: str) -> dict[str, int]:
        return {
            tenant: rows.live
            for (row_pipeline, row_owner, tenant), rows in self._groups.items()
            if row_pipeline == pipeline and row_owner == owner
        }

    async def unpark(self, seqs: Sequence[int]) -> None:
        for seq in seqs:
            slot = self._slots.pop(seq, None)
            if slot is None:
                continue
            rows = slot.rows
            rows.live -= 1
            if rows.live == 0:
                del self._groups[rows.group]
            elif len(rows.seqs) > 2 * rows.live + 64:
                self._compact(rows)

    def _compact(self, rows: _Rows) -> None:
        """Drop the stale ``seq``s of a group (amortized O(1) per unpark)."""
        slots = self._slots
        rows.seqs = [
            seq for seq in rows.seqs if (slot := slots.get(seq)) is not None and slot.rows is rows
        ]

    async def renew_leases(self, owner: str, *, until: float) -> None:
        for group, rows in self._groups.items():
            if group[1] != owner:
                continue
            for slot in self._live(rows):
                slot.lease_until = until

    async def claim_parked(self, pipeline: str, *, owner: str, now: float, until: float) -> int:
        count = 0
        for group, rows in list(self._groups.items()):
            if group[0] != pipeline or group[1] == owner:
                continue
            expired = [slot for slot in self._live(rows) if slot.lease_until < now]
            if not expired:
                continue
            taken = self._rows((pipeline, owner, group[2]))
            for slot in expired:
                slot.rows, slot.lease_until = taken, until
            taken.seqs = sorted(itertools.chain(taken.seqs, (s.row.seq for s in expired)))
            taken.live += len(expired)
            rows.live -= len(expired)
            if rows.live == 0:
                del self._groups[group]
            else:
                self._compact(rows)
            count += len(expired)
        return count

    def _live(self, rows: _Rows) -> list[_Slot]:
        slots = self._slots
        return [
            slot for seq in rows.seqs if (slot := slots.get(seq)) is not None and slot.rows is rows
        ]
