"""``Tenancy.flood_guard``: which tenant of a full read is isolated before decoding."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from consumer_core.isolation import Detector, Thresholds
from consumer_core.tenancy import Tenancy


def tenancy(monkeypatch, *, live=(), seen=(), lanes=()):
    thresholds = Thresholds(backlog_share=0.5)
    detector = Detector(thresholds)
    for tenant in seen:
        detector.record(tenant, ok=True, throttled=False, latency=0.01, now=0.0)
    pipeline = SimpleNamespace(
        name="p",
        tenant_live=Counter(dict(live)),
        tenant_inflight=Counter(),
        detector=detector,
        thresholds=thresholds,
        capacity=lambda: 1000,
        parking=SimpleNamespace(spilling=set()),
        lanes=dict.fromkeys(lanes),
    )
    t = Tenancy(pipeline)  # type: ignore[arg-type]
    promoted: list[tuple[str, str]] = []
    monkeypatch.setattr(t, "_promote", lambda tenant, why: promoted.append((tenant, why)))
    return t, pipeline, promoted


def test_a_tenant_flooding_a_full_read_is_isolated_and_spills_at_once(monkeypatch):
    t, p, promoted = tenancy(monkeypatch, live={"B": 3}, seen="BC")
    t.flood_guard({"A": 960, "B": 20}, 980)
    assert p.parking.spilling == {"A"}
    assert promoted == [
        ("A", "floods: 960 of the 980 messages of one read, 960 of a 1000-message buffer")
    ]


def test_the_only_tenant_about_is_left_alone(monkeypatch):
    t, p, promoted = tenancy(monkeypatch)
    t.flood_guard({"A": 1000}, 1000)
    assert p.parking.spilling == set()
    assert promoted == []


@pytest.mark.parametrize(
    ("counts", "live"),
    [
        ({"A": 400, "B": 400}, {}),  # no majority in the read
        ({"A": 300, "B": 20}, {"A": 100}),  # would hold 400 of 1000: under half the buffer
    ],
)
def test_a_read_without_a_flood_isolates_nobody(monkeypatch, counts, live):
    t, p, promoted = tenancy(monkeypatch, live=live, seen="BC")
    t.flood_guard(counts, sum(counts.values()))
    assert p.parking.spilling == set()
    assert promoted == []


def test_an_isolated_tenant_that_floods_starts_spilling_without_a_second_promotion(monkeypatch):
    t, p, promoted = tenancy(monkeypatch, live={"A": 200}, seen="B", lanes="A")
    t.flood_guard({"A": 500}, 500)
    assert p.parking.spilling == {"A"}
    assert promoted == []


def test_the_share_is_of_what_the_read_will_decode(monkeypatch):
    # 3,000 of C (spilling already: not decoded) and 1,000 of A: A is all that is decoded
    t, p, promoted = tenancy(monkeypatch, seen="BC")
    p.parking.spilling.add("C")
    t.flood_guard({"C": 3000, "A": 1000}, 4000)
    assert p.parking.spilling == {"A", "C"}
    assert [tenant for tenant, _ in promoted] == ["A"]
    # 10 of A among 1,000 messages whose tenant cannot be told raw: no flood of A
    t, p, promoted = tenancy(monkeypatch, live={"A": 495}, seen="BC")
    t.flood_guard({"A": 10}, 1000)
    assert p.parking.spilling == set()
    assert promoted == []


async def test_what_a_flooding_tenant_had_waiting_is_parked_before_the_read(monkeypatch):
    t, p, _ = tenancy(monkeypatch, live={"A": 300, "B": 3}, seen="BC")
    p.lanes["A"] = object()  # promoted (by the stub) into a lane of its own
    waiting = [f"task-{i}" for i in range(300)]
    monkeypatch.setattr(t, "_take_waiting", lambda tenant, lane: waiting if tenant == "A" else [])
    parked: list[list[str]] = []

    async def park(tasks):
        parked.append(list(tasks))

    p.parking.park = park
    t.flood_guard({"A": 700}, 700)
    assert p.parking.spilling == {"A"}
    await t.park_flooded()
    assert parked == [waiting]
    await t.park_flooded()
    assert parked == [waiting], "once"


def test_two_tenants_at_half_each_isolate_one_not_both(monkeypatch):
    t, p, promoted = tenancy(monkeypatch, live={"A": 100, "B": 100}, seen="C")
    t.flood_guard({"A": 500, "B": 500}, 1000)
    assert len(promoted) == 1
    assert len(p.parking.spilling) == 1
