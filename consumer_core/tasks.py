"""Task states, the legal moves between them, and the task record.

A task is one event's journey through a pipeline. Its id is ``{pipeline}:{event id}``
(SPEC section 6). The transitions below are the only ones allowed; everything that
moves a task goes through ``Task.move``, which refuses any other edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from consumer_core.errors import IllegalTransition

__all__ = ["TERMINAL", "TRANSITIONS", "AttemptRecord", "TaskRecord", "TaskState", "task_id"]


class TaskState(StrEnum):
    """Where a task is in its life."""

    PENDING = "pending"
    """Received and waiting for a window slot (or for its key to be free)."""
    PAUSED = "paused"
    """Held because its pipeline or tenant is paused."""
    RUNNING = "running"
    """An invocation is in flight."""
    RETRYING = "retrying"
    """The last attempt failed; waiting out the backoff before the next one."""
    SUCCEEDED = "succeeded"
    """The function took it; terminal once the result is delivered."""
    FAILED = "failed"
    """Gave up (permanent error, attempts or age exhausted); terminal."""
    CANCELLED = "cancelled"
    """An operator cancelled it; terminal."""


TERMINAL: frozenset[TaskState] = frozenset(
    {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED}
)

TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    TaskState.PENDING: frozenset(
        {TaskState.RUNNING, TaskState.PAUSED, TaskState.FAILED, TaskState.CANCELLED}
    ),
    TaskState.PAUSED: frozenset({TaskState.PENDING, TaskState.CANCELLED}),
    TaskState.RUNNING: frozenset(
        {TaskState.SUCCEEDED, TaskState.FAILED, TaskState.RETRYING, TaskState.CANCELLED}
    ),
    TaskState.RETRYING: frozenset(
        {TaskState.RUNNING, TaskState.PAUSED, TaskState.FAILED, TaskState.CANCELLED}
    ),
    # Re-drive: a finished task may run again with a fresh attempt budget.
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset({TaskState.PENDING}),
    TaskState.CANCELLED: frozenset({TaskState.PENDING}),
}


def task_id(pipeline: str, event_id: str) -> str:
    return f"{pipeline}:{event_id}"


def check_transition(task: str, current: TaskState, to: TaskState) -> None:
    """Raise ``IllegalTransition`` unless ``current -> to`` is an edge."""
    if to not in TRANSITIONS[current]:
        raise IllegalTransition(f"task {task}: {current} -> {to} is not a legal transition")


@dataclass(slots=True, kw_only=True)
class AttemptRecord:
    """One invocation attempt: when it ran and how it ended (read-only by convention:
    not frozen, which would make it three times slower to build, once per attempt)."""

    number: int
    started: float
    finished: float
    outcome: str
    status: int | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started": self.started,
            "finished": self.finished,
            "outcome": self.outcome,
            "status": self.status,
            "error": self.error,
        }


@dataclass(slots=True, kw_only=True)
class TaskRecord:
    """What the store keeps of a task (a snapshot; the latest write wins).

    Timestamps are Unix seconds (wall clock) so that they mean the same on every
    instance sharing a store; ``None`` until the stage is reached.
    """

    id: str
    pipeline: str
    event_id: str
    state: TaskState
    tenant: str = "default"
    key: str | None = None
    attempts: int = 0
    attempt_base: int = 0
    """Attempts made before the last re-drive: the retry budget counts from here."""
    received: float | None = None
    dispatched: float | None = None
    started: float | None = None
    finished: float | None = None
    delivered: float | None = None
    error: dict[str, Any] | None = None
    history: list[AttemptRecord] = field(default_factory=list)
    event: dict[str, Any] | None = None
    """The original event (structured form), kept for failed tasks so they can be re-driven."""
    result: dict[str, Any] | None = None
    """The result event (structured form), kept when a sink could take only a reduced
    copy of it (``events.reduced``): the copy's ``dataref`` points here."""

    def move(self, to: TaskState) -> None:
        check_transition(self.id, self.state, to)
        self.state = to

    @property
    def finished_for_good(self) -> bool:
        return self.state in TERMINAL and self.delivered is not None

    def stage_durations(self) -> dict[str, float | None]:
        """Seconds spent in each stage, ``None`` for stages not (yet) passed."""

        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 6)

        return {
            "queued": span(self.received, self.dispatched),
            "dispatch": span(self.dispatched, self.started),
            "running": span(self.started, self.finished),
            "delivery": span(self.finished, self.delivered),
            "total": span(self.received, self.delivered),
        }

    @property
    def finished_at(self) -> float | None:
        """When the task finished for good: ``None`` until it is final *and* delivered
        (dedup and purge rely on that time)."""
        return self.delivered if self.state in TERMINAL else None

    def stored(self) -> tuple[dict[str, Any], float | None]:
        """What a store keeps: the document without the stage durations (``from_json``
        does not read them; they follow from the timestamps), with the event of a
        failed task (for re-drive) and a result only a reduced copy of which went out,
        and ``finished_at``."""
        doc = self._document()
        self._kept(doc)
        return doc, self.finished_at

    def to_json(self, *, kept: bool = True) -> dict[str, Any]:
        """The task as the admin API shows it; with ``kept``, the events it keeps (a
        failure's original, a result only a reduced copy of which went out)."""
        doc = self._document()
        doc["durations"] = self.stage_durations()
        if kept:
            self._kept(doc)
        return doc

    def _kept(self, doc: dict[str, Any]) -> None:
        if self.event is not None:
            doc["event"] = self.event
        if self.result is not None:
            doc["result"] = self.result

    def _document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pipeline": self.pipeline,
            "event_id": self.event_id,
            "state": self.state.value,
            "tenant": self.tenant,
            "key": self.key,
            "attempts": self.attempts,
            "attempt_base": self.attempt_base,
            "timestamps": {
                "received": self.received,
                "dispatched": self.dispatched,
                "started": self.started,
                "finished": self.finished,
                "delivered": self.delivered,
            },
            "error": self.error,
            "history": [a.to_json() for a in self.history],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> TaskRecord:
        stamps = doc.get("timestamps", {})
        return cls(
            id=doc["id"],
            pipeline=doc["pipeline"],
            event_id=doc["event_id"],
            state=TaskState(doc["state"]),
            tenant=doc.get("tenant", "default"),
            key=doc.get("key"),
            attempts=doc.get("attempts", 0),
            attempt_base=doc.get("attempt_base", 0),
            received=stamps.get("received"),
            dispatched=stamps.get("dispatched"),
            started=stamps.get("started"),
            finished=stamps.get("finished"),
            delivered=stamps.get("delivered"),
            error=doc.get("error"),
            history=[AttemptRecord(**a) for a in doc.get("history", [])],
            event=doc.get("event"),
            result=doc.get("result"),
        )
