"""AIMD flow control: how many invocations may be in flight at once.

The window grows by one for every ``limit`` successes (additive increase: about one
step per round trip when the window is full) and halves on a throttle signal
(multiplicative decrease), at most once per ``cooldown`` so that a burst of 429s from
one overloaded moment does not collapse it to the floor. It never leaves
[``minimum``, ``maximum``]. Pure and synchronous: the caller passes the time in.
"""

from __future__ import annotations

__all__ = ["AimdWindow"]


class AimdWindow:
    """An additive-increase / multiplicative-decrease concurrency limit.

    ``limit`` is what the dispatcher compares in-flight work against. ``blocked_until``
    is the end of the longest ``Retry-After`` the function asked for: the dispatcher
    starts nothing new before it.
    """

    __slots__ = (
        "_credit",
        "_last_decrease",
        "blocked_until",
        "cooldown",
        "decrease_factor",
        "limit",
        "maximum",
        "minimum",
    )

    def __init__(
        self,
        *,
        initial: int,
        minimum: int,
        maximum: int,
        decrease_factor: float = 0.5,
        cooldown: float = 0.5,
    ) -> None:
        if not 1 <= minimum <= initial <= maximum:
            raise ValueError(
                f"need 1 <= min <= initial <= max, got {minimum}, {initial}, {maximum}"
            )
        self.minimum = minimum
        self.maximum = maximum
        self.limit = initial
        self.decrease_factor = decrease_factor
        self.cooldown = cooldown
        self.blocked_until = 0.0
        self._credit = 0.0
        self._last_decrease = float("-inf")

    def on_success(self, *, inflight: int) -> None:
        """Count one success; grow by one after ``limit`` of them.

        Growth only happens while the window is actually used (``inflight`` at least
        half of ``limit``): a window that is never filled has told us nothing about
        the function's capacity.
        """
        if self.limit >= self.maximum or inflight * 2 < self.limit:
            return
        self._credit += 1.0 / self.limit
        if self._credit >= 1.0:
            self._credit = 0.0
            self.limit += 1

    def on_throttle(self, *, now: float, retry_after: float | None = None) -> None:
        """The function said 429/503: halve the limit (once per cooldown)."""
        if retry_after is not None and retry_after > 0:
            self.blocked_until = max(self.blocked_until, now + retry_after)
        if now - self._last_decrease < self.cooldown:
            return
        self._last_decrease = now
        self._credit = 0.0
        self.limit = max(self.minimum, int(self.limit * self.decrease_factor))

    def free(self, inflight: int, now: float) -> int:
        """How many more invocations may start now."""
        if now < self.blocked_until:
            return 0
        return max(0, self.limit - inflight)
