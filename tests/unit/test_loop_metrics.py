"""LoopCounter and LoopHistogram scrape exactly like prometheus_client's own types."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from consumer_core.admin.metrics import LoopCounter, LoopHistogram, Metrics

BUCKETS = (0.0005, 0.001, 0.0025, 0.01, 0.5, 1.0, 30.0)
AMOUNTS = (0.0, 0.0004, 0.0005, 0.00051, 0.001, 0.003, 0.5, 0.75, 1.0, 29.9, 30.0, 31.0, 500.0)


def _scrape(registry: CollectorRegistry, name: str) -> list[str]:
    text = generate_latest(registry).decode()
    lines = [line.replace(name, "M") for line in text.splitlines()]
    # _created holds the creation time, which differs between any two metrics.
    return [line for line in lines if "_created" not in line]


def test_a_loop_histogram_scrapes_like_a_prometheus_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram(
        "ours_seconds", "doc", ["pipeline", "stage"], buckets=BUCKETS, registry=ours
    )
    reference = Histogram(
        "theirs_seconds", "doc", ["pipeline", "stage"], buckets=BUCKETS, registry=theirs
    )
    for stage in ("queued", "total"):
        for amount in AMOUNTS:
            loop.labels("p", stage).observe(amount)
            reference.labels("p", stage).observe(amount)
    assert _scrape(ours, "ours_seconds") == _scrape(theirs, "theirs_seconds")
    created = [line for line in generate_latest(ours).decode().splitlines() if "_created{" in line]
    assert len(created) == 2


def test_a_loop_counter_scrapes_like_a_prometheus_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopCounter("ours", "doc", ["pipeline", "outcome"], registry=ours)
    reference = Counter("theirs", "doc", ["pipeline", "outcome"], registry=theirs)
    for outcome, times in (("succeeded", 5), ("failed", 2)):
        for _ in range(times):
            loop.labels("p", outcome).inc()
            reference.labels("p", outcome).inc()
    loop.labels("p", "failed").inc(3)
    reference.labels("p", "failed").inc(3)
    assert _scrape(ours, "ours") == _scrape(theirs, "theirs")
    with pytest.raises(ValueError, match="non-negative"):
        loop.labels("p", "failed").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        loop.labels("p")


def test_the_bridge_registry_exports_the_spec_names() -> None:
    metrics = Metrics()
    metrics.tasks_finished.labels("orders", "succeeded").inc()
    metrics.invoke_duration.labels("orders").observe(0.02)
    metrics.stage_duration.labels("orders", "queued").observe(0.001)
    text = metrics.render().decode()
    assert 'bridge_tasks_finished_total{outcome="succeeded",pipeline="orders"} 1.0' in text
    assert 'bridge_invoke_duration_seconds_bucket{le="0.025",pipeline="orders"} 1.0' in text
    assert 'bridge_invoke_duration_seconds_count{pipeline="orders"} 1.0' in text
    assert 'bridge_stage_duration_seconds_sum{pipeline="orders",stage="queued"} 0.001' in text
    assert "# TYPE bridge_invoke_duration_seconds histogram" in text
