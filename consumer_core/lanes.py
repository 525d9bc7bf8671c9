"""Lanes: where ready tasks wait for a window slot, fairly across tenants.

Every pipeline has a *shared* lane; with isolation on, a misbehaving tenant gets a
*dedicated* lane of its own. A lane owns an AIMD window and a ``FairQueue``: one FIFO
per tenant, served round robin (deficit round robin with a quantum of one task), so a
tenant with a million queued tasks gets the same turn as one with ten. Pure and
synchronous.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from consumer_core.flow import AimdWindow

__all__ = ["SHARED", "FairQueue", "Lane"]

SHARED = "shared"
T = TypeVar("T")


class FairQueue(Generic[T]):
    """Per-tenant FIFOs served round robin; paused tenants are passed over."""

    __slots__ = ("_queues", "_ring", "_size")

    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._ring: deque[str] = deque()
        """Tenants with queued items, in serving order; the head is served next."""
        self._size = 0

    def push(self, tenant: str, item: T, *, front: bool = False) -> None:
        queue = self._queues.get(tenant)
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._ring.append(tenant)
        if front:
            queue.appendleft(item)
        else:
            queue.append(item)
        self._size += 1

    def pop(self, skip: Callable[[str], bool] | None = None) -> T | None:
        """The next item in round-robin order, ``None`` if every tenant is empty or
        skipped."""
        for _ in range(len(self._ring)):
            tenant = self._ring[0]
            if skip is not None and skip(tenant):
                self._ring.rotate(-1)
                continue
            queue = self._queues[tenant]
            item = queue.popleft()
            self._size -= 1
            if queue:
                self._ring.rotate(-1)
            else:
                self._ring.popleft()
                del self._queues[tenant]
            return item
        return None

    def remove(self, tenant: str, item: T) -> bool:
        queue = self._queues.get(tenant)
        if queue is None or item not in queue:
            return False
        queue.remove(item)
        self._size -= 1
        if not queue:
            del self._queues[tenant]
            self._ring.remove(tenant)
        return True

    def take_tenant(self, tenant: str) -> list[T]:
        """Remove and return every item of ``tenant``, in order."""
        queue = self._queues.pop(tenant, None)
        if queue is None:
            return []
        self._ring.remove(tenant)
        self._size -= len(queue)
        return list(queue)

    def count(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue else 0

    def tenants(self) -> Iterable[str]:
        return self._queues.keys()

    def __iter__(self) -> Iterator[T]:
        for queue in self._queues.values():
            yield from queue

    def __len__(self) -> int:
        return self._size


class Lane(Generic[T]):
    """A window and a fair queue. ``tenant`` is ``None`` for the shared lane.

    ``cap`` bounds the lane's in-flight requests whatever its window says: a dedicated
    lane may hold at most ``isolation.max_share`` of the pipeline's concurrency.
    """

    __slots__ = ("cap", "idle_since", "inflight", "name", "queue", "tenant", "window")

    def __init__(self, name: str, window: AimdWindow, *, tenant: str | None = None,
                 cap: int | None = None) -> None:  # fmt: skip
        self.name = name
        self.tenant = tenant
        self.window = window
        self.cap = cap
        self.inflight = 0
        self.queue: FairQueue[T] = FairQueue()
        self.idle_since: float | None = None

    def free(self, now: float) -> int:
        room = self.window.free(self.inflight, now)
        if self.cap is not None:
            room = min(room, self.cap - self.inflight)
        return max(0, room)

    @property
    def busy(self) -> bool:
        return bool(self.inflight or len(self.queue))
