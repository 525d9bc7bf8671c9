"""Deciding when a tenant misbehaves enough to get a lane of its own.

Per tenant, over a sliding window of ``window`` seconds, the detector keeps the outcome
of every finished invocation attempt (success, error, throttle) and its latency. A
tenant in the shared lane is *isolated* when, with at least ``min_samples`` samples,
its error rate reaches ``error_rate``, its throttle rate ``throttle_rate``, or its mean
latency ``latency_factor`` times the other tenants' mean; when a call of it has been in
flight for ``latency_factor`` times the others' mean latency, and at least
``SLOW_CALL`` seconds (a slow tenant's calls give no sample until they end); or, while
at least two tenants are active, it holds ``inflight_share`` of the shared lane's
in-flight work or ``backlog_share`` of its queued work. Pure and synchronous; the
caller passes the time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

__all__ = ["SLOW_CALL", "Detector", "Thresholds"]

SLOW_CALL = 1.0
"""Seconds a call must have been in flight, at the least, to count as slow before it
ends (however fast the others are)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    window: float = 30.0
    min_samples: int = 20
    error_rate: float = 0.5
    throttle_rate: float = 0.2
    latency_factor: float = 5.0
    inflight_share: float = 0.5
    backlog_share: float = 0.5
    max_share: float = 0.25
    spill_after: int = 1000
    spill_by_reference: bool = True
    idle_reclaim: float = 300.0

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Thresholds:
        known = {k: v for k, v in options.items() if k in cls.__dataclass_fields__}
        return cls(**known)


_OK, _ERROR, _THROTTLE = 0, 1, 2


class _Samples:
    __slots__ = ("counts", "items", "latency_sum")

    def __init__(self) -> None:
        self.items: deque[tuple[float, int, float]] = deque()
        self.counts = [0, 0, 0]
        self.latency_sum = 0.0

    def add(self, at: float, kind: int, latency: float) -> None:
        self.items.append((at, kind, latency))
        self.counts[kind] += 1
        self.latency_sum += latency

    def prune(self, before: float) -> None:
        items = self.items
        while items and items[0][0] < before:
            _, kind, latency = items.popleft()
            self.counts[kind] -= 1
            self.latency_sum -= latency

    def __len__(self) -> int:
        return len(self.items)


class Detector:
    """The samples are pruned as they are recorded, not only when a verdict is asked
    for: a pipeline without isolation records every attempt and never asks, and kept
    every sample for the life of the process (about 130 bytes per task)."""

    def __init__(self, thresholds: Thresholds) -> None:
        self.t = thresholds
        self._samples: dict[str, _Samples] = {}
        self._next_sweep = 0.0

    def record(self, tenant: str, *, ok: bool, throttled: bool, latency: float, now: float) -> None:
        kind = _OK if ok else _THROTTLE if throttled else _ERROR
        samples = self._samples.get(tenant)
        if samples is None:
            samples = self._samples[tenant] = _Samples()
        samples.add(now, kind, latency)
        samples.prune(now - self.t.window)
        if now >= self._next_sweep:  # tenants that went quiet: once a window
            self._next_sweep = now + self.t.window
            self._prune(now)

    def __len__(self) -> int:
        """Samples held, over every tenant."""
        return sum(len(s) for s in self._samples.values())

    def _prune(self, now: float) -> None:
        horizon = now - self.t.window
        for tenant in list(self._samples):
            samples = self._samples[tenant]
            samples.prune(horizon)
            if not samples:
                del self._samples[tenant]

    def verdict(
        self,
        tenant: str,
        *,
        now: float,
        inflight: Mapping[str, int],
        backlog: Mapping[str, int],
        oldest_call: Mapping[str, float] | None = None,
    ) -> str | None:
        """Why ``tenant`` should be isolated now, or ``None``.

        ``inflight`` and ``backlog`` are the shared lane's per-tenant counts;
        ``oldest_call`` how long (seconds) each tenant's oldest call in flight has run.
        """
        self._prune(now)
        t = self.t
        samples = self._samples.get(tenant)
        if samples is not None and len(samples) >= t.min_samples:
            n = len(samples)
            errors, throttles = samples.counts[_ERROR], samples.counts[_THROTTLE]
            if errors / n >= t.error_rate:
                return f"error rate {errors / n:.0%} over the last {t.window:g}s"
            if throttles / n >= t.throttle_rate:
                return f"throttle rate {throttles / n:.0%} over the last {t.window:g}s"
            norm = self._norm(tenant)
            mine = samples.latency_sum / n
            if norm is not None and mine >= t.latency_factor * norm:
                return f"mean latency {mine * 1000:.0f}ms is {mine / norm:.0f}x the others'"
        age = (oldest_call or {}).get(tenant, 0.0)
        if age >= SLOW_CALL:
            norm = self._norm(tenant)
            if norm is not None and age >= t.latency_factor * norm:
                return (
                    f"a call in flight for {age:.1f}s, {age / norm:.0f}x the others' mean latency"
                )
        active = {name for name, count in inflight.items() if count} | {
            name for name, count in backlog.items() if count
        }
        if len(active) < 2:
            return None
        share = _share(tenant, inflight)
        if share is not None and share >= t.inflight_share and inflight[tenant] >= 4:
            return f"holds {share:.0%} of the in-flight work"
        share = _share(tenant, backlog)
        if share is not None and share >= t.backlog_share and backlog[tenant] >= t.min_samples:
            return f"holds {share:.0%} of the queued work"
        return None

    def _norm(self, tenant: str) -> float | None:
        """The other tenants' mean latency over the window, if they have ``min_samples``
        samples between them and it is above zero."""
        others = [s for name, s in self._samples.items() if name != tenant and len(s)]
        other_n = sum(len(s) for s in others)
        if other_n < self.t.min_samples:
            return None
        norm = sum(s.latency_sum for s in others) / other_n
        return norm if norm > 0 else None

    def forget(self, tenant: str) -> None:
        self._samples.pop(tenant, None)

    def seen(self) -> Set[str]:
        """Tenants with an attempt in the window (more or less: quiet ones are dropped
        once a window)."""
        return self._samples.keys()


def _share(tenant: str, counts: Mapping[str, int]) -> float | None:
    total = sum(counts.values())
    mine = counts.get(tenant, 0)
    if total == 0 or mine == 0:
        return None
    return mine / total
