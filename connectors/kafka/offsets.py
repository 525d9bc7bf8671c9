"""Which offset of one partition may be committed, given out-of-order completions.

The source hands a partition's messages to the core in offset order, and the core
finishes them in any order (different keys run in parallel). Kafka only stores one
number per partition -- "everything below this offset is done" -- so the tracker keeps
the offsets handed out but not yet finished and answers with the lowest of them.

Only offsets that were actually polled are tracked. Offsets that never reach the
consumer (removed by compaction, transaction markers) leave gaps that count as done:
after ``track(10)``, ``track(15)`` and ``done`` for both, ``committable()`` is 16.

Epochs: a partition can be revoked while its messages are still in the core. Each
``track`` returns the current epoch; ``revoke`` forgets everything and starts a new
one, so a ``done`` that carries an older epoch (a message of the lost assignment that
finished late) is ignored instead of corrupting the new assignment's figures.

Pure and synchronous: no I/O, no clock, no threads. Owned by the event loop.
"""

from __future__ import annotations

from collections import deque

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Completion tracking for one partition (see the module docstring).

    Invariants: ``_pending`` holds the offsets tracked in this epoch in strictly
    increasing order, from the lowest unfinished one on (finished offsets to its
    right are dropped lazily, once everything before them finished);
    ``_outstanding`` is the set of tracked offsets not finished yet; ``_next`` is one
    past the highest offset tracked in this epoch (``None`` before the first).
    """

    __slots__ = ("_committed", "_next", "_outstanding", "_pending", "epoch")

    def __init__(self) -> None:
        self.epoch = 0
        self._pending: deque[int] = deque()
        self._outstanding: set[int] = set()
        self._next: int | None = None
        self._committed: int | None = None

    def track(self, offset: int) -> int:
        """Record that ``offset`` was handed to the core; return the epoch to pass to
        ``done``. Raises ``ValueError`` unless ``offset`` is above every offset tracked
        in this epoch (a consumer that rewinds must ``revoke`` first)."""
        if self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} tracked after {self._next - 1}")
        self._pending.append(offset)
        self._outstanding.add(offset)
        self._next = offset + 1
        return self.epoch

    def follows(self, offset: int) -> bool:
        """Whether ``track(offset)`` would succeed without starting over."""
        return self._next is None or offset >= self._next

    def done(self, offset: int, epoch: int) -> bool:
        """Mark ``offset`` finished. Idempotent. Returns False (and changes nothing) when
        ``epoch`` is not the current one or ``offset`` is not outstanding."""
        if epoch != self.epoch or offset not in self._outstanding:
            return False
        self._outstanding.discard(offset)
        pending, outstanding = self._pending, self._outstanding
        while pending and pending[0] not in outstanding:
            pending.popleft()
        return True

    @property
    def outstanding(self) -> int:
        """Offsets handed out and not finished, in this epoch."""
        return len(self._outstanding)

    def position(self) -> int | None:
        """The offset everything below which is finished (or was never polled) in this
        epoch: the lowest unfinished offset, else one past the highest tracked.
        ``None`` before anything was tracked."""
        if self._pending:
            return self._pending[0]
        return self._next

    def committable(self) -> int | None:
        """The offset to commit now, or ``None`` when it would not move past the last
        one passed to ``committed`` (or nothing was tracked). Never passes an
        unfinished offset."""
        position = self.position()
        if position is None or (self._committed is not None and position <= self._committed):
            return None
        return position

    def committed(self, offset: int) -> None:
        """Record that ``offset`` was committed to the broker (for this epoch)."""
        if self._committed is None or offset > self._committed:
            self._committed = offset

    @property
    def last_committed(self) -> int | None:
        """The highest offset passed to ``committed`` in this epoch."""
        return self._committed

    def revoke(self) -> int:
        """Forget this epoch (the partition was revoked or lost) and start the next.
        Completions of the old epoch are ignored from now on. Returns the new epoch."""
        self.epoch += 1
        self._pending.clear()
        self._outstanding.clear()
        self._next = None
        self._committed = None
        return self.epoch
