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

__all__ = ["Parked", "TaskQuery", "TaskStore", "open_store"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Parked:
    """A task kept in the store instead of in its source.

    Tasks are *parked* when an isolated tenant's backlog grows past
    ``isolation.spill_after`` (their source messages are then acked, so a stuck tenant
    never holds back a partition's commits) and when failed tasks are re-driven. The
    instance that parked them (``owner``) runs them, in ``seq`` order; rows whose
    owner's lease ran out are claimed by another instance.
    """

    seq: int = 0
    """Assigned by the store: the order rows are run in."""
    pipeline: str
    tenant: str
    task_id: str
    key: str | None = None
    partition: str | None = None
    attributes: str
    """The event's attributes, as ``consumer_core.events.attributes_json`` wrote them."""
    data: bytes | None = None
    headers: str = "{}"
    record: str
    """The ``TaskRecord`` as JSON: attempts and history carry over."""
    not_before: float = 0.0
    """Wall-clock time before which it must not run (a retry's backoff)."""


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

    # Parked tasks (see ``Parked``).

    async def park(self, items: Sequence[Parked], *, owner: str, lease_until: float) -> None:
        """Store ``items`` durably (in this order) for ``owner``; returns once durable."""
        ...

    async def parked(
        self, pipeline: str, tenant: str, *, owner: str, after: int, limit: int
    ) -> list[Parked]:
        """``owner``'s parked tasks of a tenant with ``seq > after``, in ``seq`` order."""
        ...

    async def parked_counts(self, pipeline: str, *, owner: str) -> dict[str, int]:
        """How many tasks ``owner`` has parked, per tenant."""
        ...

    async def unpark(self, seqs: Sequence[int]) -> None:
        """Delete parked rows (their tasks finished and were delivered)."""
        ...

    async def renew_leases(self, owner: str, *, until: float) -> None:
        """Keep ``owner``'s parked rows its own until ``until``."""
        ...

    async def claim_parked(self, pipeline: str, *, owner: str, now: float, until: float) -> int:
        """Take over rows whose lease ran out before ``now``; return how many."""
        ...


def sqlite_path(url: str, base_dir: Path) -> Path:
    """``sqlite:///relative/x.db`` is relative to ``base_dir``; ``sqlite:////abs`` absolute."""
    rest = url.removeprefix("sqlite://")
    rest = rest.removeprefix("/")
    path = Path(rest)
    return path if path.is_absolute() else base_dir / path


def open_store(url: str, base_dir: Path, databases: SqliteDatabases) -> TaskStore:
    """Build (not open) the store a ``state.url`` names."""
    if url.startswith("memory://"):
        from consumer_core.store.memory import MemoryTaskStore

        return MemoryTaskStore()
    if url.startswith("sqlite://"):
        from consumer_core.store.sqlite import SqliteTaskStore

        return SqliteTaskStore(databases.get(sqlite_path(url, base_dir)))
    if url.startswith(("redis://", "rediss://")):
        try:
            from consumer_core.store.redis import RedisTaskStore
        except ModuleNotFoundError as exc:
            _explain_missing(exc, module="redis", extra="redis")
            raise
        return RedisTaskStore(url)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from consumer_core.store.postgres import PostgresTaskStore
        except ModuleNotFoundError as exc:
            _explain_missing(exc, module="asyncpg", extra="postgres")
            raise
        return PostgresTaskStore(url)
    raise ConfigError(
        [ConfigProblem("<state>", None, "state.url", f"no task store for {url.split(':')[0]!r}")]
    )


def _explain_missing(exc: ModuleNotFoundError, *, module: str, extra: str) -> None:
    """Raise a ``ConfigError`` naming the extra to install if ``module`` is what is missing
    (anything else missing is a broken install, and the caller re-raises it)."""
    if (exc.name or "").partition(".")[0] == module:
        message = f"the {extra} task store needs `pip install 'bridge[{extra}]'` ({exc})"
        raise ConfigError([ConfigProblem("<state>", None, "state.url", message)]) from exc
