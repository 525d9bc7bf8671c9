"""When to try a failed invocation again, and when to give up."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter, bounded by attempts and by age.

    The n-th retry waits a random time in [base/2, base] with
    ``base = min(max_backoff, initial_backoff * 2**(n-1))`` ("equal jitter": never a
    thundering herd, never an immediate retry). A task gives up after
    ``max_attempts`` invocations or once it is older than ``max_age``.
    """

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    max_age: float = 3600.0

    def next_delay(self, attempt: int, rng: random.Random) -> float:
        """Delay before attempt ``attempt + 1``, after ``attempt`` (>= 1) failed."""
        base = min(self.max_backoff, self.initial_backoff * (2.0 ** min(attempt - 1, 62)))
        return base / 2 + rng.random() * base / 2

    def should_retry(self, *, attempt: int, age: float, delay: float) -> bool:
        """Whether a task that failed its ``attempt``-th try may have another."""
        return attempt < self.max_attempts and age + delay <= self.max_age
