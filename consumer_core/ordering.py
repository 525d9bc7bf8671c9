"""Key ordering: tasks sharing a key run one at a time, in arrival order.

A key is *busy* from the moment one of its tasks is admitted until that task's
invocation reached a final outcome (retries included: a retrying task keeps its key).
Later tasks of a busy key wait in the key's own queue; tasks of other keys pass them.
Pure and synchronous.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

__all__ = ["KeyedQueues"]

T = TypeVar("T")


class KeyedQueues(Generic[T]):
    """Per-key FIFO gates. ``None`` keys are never gated."""

    __slots__ = ("_waiting", "waiting_count")

    def __init__(self) -> None:
        self._waiting: dict[str, deque[T]] = {}
        """Busy keys, each with the tasks waiting behind its running task."""
        self.waiting_count = 0

    def admit(self, key: str | None, item: T) -> bool:
        """True if ``item`` may run now (its key was free and is now busy)."""
        if key is None:
            return True
        queue = self._waiting.get(key)
        if queue is None:
            self._waiting[key] = deque()
            return True
        queue.append(item)
        self.waiting_count += 1
        return False

    def release(self, key: str | None) -> T | None:
        """The running task of ``key`` is done: return the next one, which now runs."""
        if key is None:
            return None
        queue = self._waiting.get(key)
        if not queue:
            self._waiting.pop(key, None)
            return None
        self.waiting_count -= 1
        return queue.popleft()

    def remove(self, key: str | None, item: T) -> bool:
        """Take a waiting ``item`` out of its key's queue (cancel). False if not waiting."""
        queue = self._waiting.get(key) if key is not None else None
        if not queue or item not in queue:
            return False
        queue.remove(item)
        self.waiting_count -= 1
        return True

    def busy(self, key: str) -> bool:
        return key in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)
