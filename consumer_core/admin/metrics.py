"""Every Prometheus metric the bridge exposes; the names live here and nowhere else.

SPEC section 7 fixes the first eight names. Each runner owns one ``Metrics`` (its own
``CollectorRegistry``), so tests can run several bridges in one process. The metrics
updated once per task or per invocation are ``LoopCounter``/``LoopHistogram``: plain
numbers updated from the event loop, exported on scrape like prometheus_client's own.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

__all__ = ["LoopCounter", "LoopHistogram", "Metrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class _CounterChild:
    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters can only be incremented by non-negative amounts")
        self.value += amount


class _HistogramChild:
    __slots__ = ("bounds", "counts", "created", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is >= amount (Prometheus: le), else +Inf.
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


Child = TypeVar("Child", _CounterChild, _HistogramChild)


class _LoopFamily(Generic[Child]):
    """Labelled children updated from the event loop only, and exported on scrape.

    prometheus_client's own metrics take a lock on every update, which the bridge pays
    once or more per task. These update plain numbers; only the event loop's thread may
    update them. A scrape sees the same samples as prometheus_client's own type gives.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def _new_child(self) -> Child:
        raise NotImplementedError

    def _family(self) -> Metric:
        raise NotImplementedError

    def collect(self) -> Iterator[Metric]:
        raise NotImplementedError

    def labels(self, *values: str) -> Child:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}, got {values}")
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._new_child()
        return child

    def describe(self) -> list[Metric]:
        return [self._family()]


class LoopCounter(_LoopFamily[_CounterChild]):
    """A labelled counter (``inc``): samples ``_total`` and ``_created``."""

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            family.add_metric(list(values), child.value, created=child.created)
        yield family


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``0.0005``, ``1.0``)."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


class LoopHistogram(_LoopFamily[_HistogramChild]):
    """A labelled histogram (``observe``: a bisection and two additions; the stage
    histograms take four observations per task): cumulative ``_bucket``s, ``_count``,
    ``_sum`` and ``_created``."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self._bounds = tuple(sorted(float(b) for b in buckets if b != float("inf")))
        self._les = [_le(b) for b in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry=registry)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for values, child in list(self._children.items()):
            cumulative, buckets = 0, []
            for le, count in zip(self._les, child.counts, strict=True):
                cumulative += count
                buckets.append((le, float(cumulative)))
            family.add_metric(list(values), buckets, child.sum)
            labels = dict(zip(self._labelnames, values, strict=True))
            family.add_sample(f"{self._name}_created", labels, child.created)
        yield family


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages_received = Counter(
            "bridge_messages_received", "Messages taken from a source.", ["pipeline"], registry=r
        )
        self.tasks_finished = LoopCounter(
            "bridge_tasks_finished",
            "Tasks that reached a final state (outcome: succeeded, failed, cancelled).",
            ["pipeline", "outcome"],
            registry=r,
        )
        self.invoke_duration = LoopHistogram(
            "bridge_invoke_duration_seconds",
            "Time of one function invocation (one request).",
            ["pipeline"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "bridge_inflight", "Invocations in flight.", ["pipeline", "lane"], registry=r
        )
        self.concurrency_limit = Gauge(
            "bridge_concurrency_limit",
            "The AIMD window: invocations allowed in flight.",
            ["pipeline", "lane"],
            registry=r,
        )
        self.retries = Counter(
            "bridge_retries", "Invocation attempts after the first.", ["pipeline"], registry=r
        )
        self.consumer_lag = Gauge(
            "bridge_consumer_lag",
            "Messages in the source not yet completed, per partition or queue.",
            ["pipeline", "partition"],
            registry=r,
        )
        self.isolated_tenants = Gauge(
            "bridge_isolated_tenants", "Tenants in a dedicated lane.", ["pipeline"], registry=r
        )
        self.stage_duration = LoopHistogram(
            "bridge_stage_duration_seconds",
            "Time a task spent in a stage (queued, invoke, delivery, total).",
            ["pipeline", "stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.sink_failures = Counter(
            "bridge_sink_failures",
            "Failed attempts to deliver result events to a sink.",
            ["pipeline", "sink"],
            registry=r,
        )
        self.undeliverable = Counter(
            "bridge_undeliverable_results",
            "Result events a sink can never take, not even reduced, given up for that sink.",
            ["pipeline", "sink"],
            registry=r,
        )
        self.reduced_results = Counter(
            "bridge_reduced_results",
            "Result events too large for a sink, sent to it as a reduced copy (data left "
            "out, the whole event kept in the task record).",
            ["pipeline", "sink"],
            registry=r,
        )
        self.connector_events = Counter(
            "bridge_connector_events",
            "Notable connector events (dead-lettered, visibility extended, reconnected...).",
            ["pipeline", "connector", "event"],
            registry=r,
        )
        self.window_changes = Counter(
            "bridge_window_changes",
            "Changes of the AIMD window (direction: up, down).",
            ["pipeline", "lane", "direction"],
            registry=r,
        )
        self.deduplicated = Counter(
            "bridge_deduplicated",
            "Messages acked without invoking because their task had already finished.",
            ["pipeline"],
            registry=r,
        )
        self.parked = Counter(
            "bridge_parked_tasks",
            "Tasks moved to the durable store (isolation spill or re-drive).",
            ["pipeline"],
            registry=r,
        )
        self.reread = Counter(
            "bridge_reread_messages",
            "Messages of tenants spilled by reference read back from the source.",
            ["pipeline"],
            registry=r,
        )
        self.isolation_moves = Counter(
            "bridge_isolation_moves",
            "Tenants moved to a dedicated lane (promoted) or back (reclaimed).",
            ["pipeline", "move"],
            registry=r,
        )
        self.illegal_transitions = Counter(
            "bridge_illegal_transitions",
            "Task state changes refused because they are not legal (a bug).",
            ["pipeline"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
