"""Every Prometheus metric the bridge exposes; the names live here and nowhere else.

SPEC section 7 fixes the first eight names. Each runner owns one ``Metrics`` (its own
``CollectorRegistry``), so tests can run several bridges in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.messages_received = Counter(
            "bridge_messages_received", "Messages taken from a source.", ["pipeline"], registry=r
        )
        self.tasks_finished = Counter(
            "bridge_tasks_finished",
            "Tasks that reached a final state (outcome: succeeded, failed, cancelled).",
            ["pipeline", "outcome"],
            registry=r,
        )
        self.invoke_duration = Histogram(
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
        self.stage_duration = Histogram(
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
            "Result events a sink can never take (too large...), given up for that sink.",
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
