from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from consumer_core.flow import AimdWindow
from consumer_core.isolation import Detector, Thresholds
from consumer_core.lanes import FairQueue, Lane


def test_fair_queue_serves_tenants_round_robin_whatever_their_backlog():
    queue: FairQueue[str] = FairQueue()
    for i in range(1000):
        queue.push("flood", f"f{i}")
    for i in range(3):
        queue.push("small", f"s{i}")
    first = [queue.pop() for _ in range(6)]
    assert first == ["f0", "s0", "f1", "s1", "f2", "s2"]
    assert len(queue) == 997


def test_fair_queue_skips_paused_tenants_and_keeps_their_items():
    queue: FairQueue[str] = FairQueue()
    queue.push("a", "a1")
    queue.push("b", "b1")
    queue.push("a", "a2")
    assert queue.pop(skip=lambda t: t == "a") == "b1"
    assert queue.pop(skip=lambda t: t == "a") is None
    assert queue.pop() == "a1"
    assert queue.take_tenant("a") == ["a2"]
    assert len(queue) == 0


@given(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 3)), max_size=200))
def test_fair_queue_keeps_each_tenants_order(pushes):
    queue: FairQueue[tuple[str, int]] = FairQueue()
    for n, (tenant, _) in enumerate(pushes):
        queue.push(tenant, (tenant, n))
    popped = []
    while (item := queue.pop()) is not None:
        popped.append(item)
    assert len(popped) == len(pushes)
    for tenant in "abcd":
        order = [n for t, n in popped if t == tenant]
        assert order == sorted(order)


def test_lane_cap_bounds_a_wide_window():
    lane: Lane[str] = Lane("tenant:a", AimdWindow(initial=50, minimum=1, maximum=100), cap=8)
    lane.inflight = 5
    assert lane.free(now=0.0) == 3


def _thresholds(**kw):
    return Thresholds(**{"min_samples": 10, "window": 30.0, **kw})


def test_detector_flags_an_erroring_tenant_only():
    detector = Detector(_thresholds())
    for i in range(20):
        detector.record("a", ok=False, throttled=False, latency=0.01, now=float(i))
        detector.record("b", ok=True, throttled=False, latency=0.01, now=float(i))
    counts = {"a": 1, "b": 1}
    assert "error rate 100%" in detector.verdict("a", now=20.0, inflight=counts, backlog=counts)
    assert detector.verdict("b", now=20.0, inflight=counts, backlog=counts) is None


def test_detector_flags_a_tenant_whose_call_runs_long_before_it_ends():
    """A slow tenant's calls give no sample until they end (5 s later, say): a call in
    flight for ``latency_factor`` times the others' mean latency, and at least a second,
    flags it meanwhile. A call that is long only against very fast others is not enough
    under a second, and without others' samples there is no norm."""
    detector = Detector(_thresholds())
    for i in range(20):
        detector.record("b", ok=True, throttled=False, latency=0.01, now=float(i))
    slow = detector.verdict("a", now=20.0, inflight={}, backlog={}, oldest_call={"a": 1.2})
    assert slow == "a call in flight for 1.2s, 120x the others' mean latency"
    assert detector.verdict("a", now=20.0, inflight={}, backlog={}, oldest_call={"a": 0.9}) is None
    assert detector.verdict("b", now=20.0, inflight={}, backlog={}, oldest_call={"a": 5.0}) is None
    alone = Detector(_thresholds())
    assert alone.verdict("a", now=20.0, inflight={}, backlog={}, oldest_call={"a": 5.0}) is None


def test_detector_forgets_samples_older_than_the_window():
    detector = Detector(_thresholds(window=10.0))
    for i in range(20):
        detector.record("a", ok=False, throttled=True, latency=0.01, now=float(i))
    assert detector.verdict("a", now=20.0, inflight={}, backlog={}) is not None
    assert detector.verdict("a", now=45.0, inflight={}, backlog={}) is None


def test_detector_holds_one_window_of_samples_when_no_verdict_is_asked() -> None:
    # A pipeline without isolation records every attempt and never asks for a verdict.
    detector = Detector(_thresholds(window=30.0))
    for i in range(10_000):
        detector.record(f"t{i % 7}", ok=True, throttled=False, latency=0.01, now=i / 10)
    detector.record("quiet", ok=True, throttled=False, latency=0.01, now=1000.0)
    for i in range(10_001, 12_000):
        detector.record("a", ok=True, throttled=False, latency=0.01, now=i / 10)
    # 30 s at 10 samples/s: only tenant a's last window remains; "quiet" and t0..t6 went.
    assert len(detector) <= 301


def test_detector_flags_slow_tenant_against_the_others():
    detector = Detector(_thresholds(latency_factor=5.0))
    for i in range(20):
        detector.record("slow", ok=True, throttled=False, latency=2.0, now=float(i))
        detector.record("fast", ok=True, throttled=False, latency=0.01, now=float(i))
    assert "latency" in detector.verdict("slow", now=20.0, inflight={}, backlog={})


def test_detector_flags_hogs_of_inflight_or_backlog_only_when_others_are_active():
    detector = Detector(_thresholds())
    assert "in-flight" in detector.verdict(
        "hog", now=0.0, inflight={"hog": 40, "b": 2}, backlog={"hog": 0, "b": 0}
    )
    assert "queued" in detector.verdict(
        "flood", now=0.0, inflight={"flood": 1, "b": 1}, backlog={"flood": 5000, "b": 10}
    )
    alone = Counter({"hog": 40})
    assert detector.verdict("hog", now=0.0, inflight=alone, backlog=alone) is None
