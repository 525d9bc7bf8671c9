"""The task store interface, and picking a backend from ``state.url``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from consumer_core.errors import ConfigError, ConfigProblem
from consumer_core.tasks import TaskRecord, TaskState

if TYPE_CHECKING:
    from consumer_core.store.sqlite import SqliteDatabases

__all__ = ["TaskQuery", "TaskStore", "open_store"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskQuery:
    """A filter over tasks; ``after`` is the cursor (the last id of the previous page)."""

    pipeline: str | None = None
    state: TaskState | None = None
    tenant: str | None = None
    received_from: float | None = None
    received_to: float | None = None
    limit: int = 100
    after: str | None = None


class TaskStore(Protocol):
    """Where task records live.

    Writes are *write-behind*: ``save`` only marks a record dirty and returns at once;
    a background flush writes every dirty record's latest state in one transaction.
    ``flush`` returns once everything saved before the call is durable: the core awaits
    it before it acks a source message, so a task the source will never redeliver is
    always on disk as finished, and dedup can rely on it.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def save(self, record: TaskRecord) -> None: ...

    async def flush(self) -> None: ...

    async def finished(self, ids: Sequence[str], *, since: float) -> set[str]:
        """Those of ``ids`` whose task reached a final state at or after ``since``."""
        ...

    async def get(self, task_id: str) -> TaskRecord | None: ...

    async def query(self, query: TaskQuery) -> list[TaskRecord]: ...

    async def purge(self, *, finished_before: float) -> int:
        """Delete finished tasks older than ``finished_before``; return how many.

        Also drops cancel requests older than ``finished_before``."""
        ...

    # Operator state shared by every instance using this store (SPEC section 6).

    async def set_paused(self, scope: str, paused: bool) -> None:
        """Mark ``scope`` (a pipeline name, or ``pipeline/tenant``) paused or not."""
        ...

    async def paused_scopes(self) -> set[str]:
        """Every scope currently paused."""
        ...

    async def request_cancel(self, task_ids: Sequence[str], *, at: float) -> None:
        """Ask whichever instance holds these tasks to cancel them."""
        ...

    async def cancel_requests(self, *, since: float) -> list[tuple[str, float]]:
        """Cancel requests made at or after ``since``: ``(task_id, requested_at)``."""
        ...


def sqlite_path(url: str, base_dir: Path) -> Path:
    """``sqlite:///relative/x.db`` is relative to ``base_dir``; ``sqlite:////abs`` absolute."""
    rest = url.removeprefix("sqlite://")
    rest = rest.removeprefix("/")
    path = Path(rest)
    return path if path.is_absolute() else base_dir / path


def open_store(url: str, base_dir: Path, databases: SqliteDatabases) -> TaskStore:
    """Build (not open) the store a ``state.url`` names."""
    if url.startswith("sqlite://"):
        from consumer_core.store.sqlite import SqliteTaskStore

        return SqliteTaskStore(databases.get(sqlite_path(url, base_dir)))
    raise ConfigError(
        [ConfigProblem("<state>", None, "state.url", f"no task store for {url.split(':')[0]!r}")]
    )
