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
        tenant_live=Counter(dict(live)),
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
    t.flood_guard({"A": 960, "B": 20})
    assert p.parking.spilling == {"A"}
    assert promoted == [
        ("A", "floods: 960 of the 980 messages of one read, 960 of a 1000-message buffer")
    ]


def test_the_only_tenant_about_is_left_alone(monkeypatch):
    t, p, promoted = tenancy(monkeypatch)
    t.flood_guard({"A": 1000})
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
    t.flood_guard(counts)
    assert p.parking.spilling == set()
    assert promoted == []


def test_an_isolated_tenant_that_floods_starts_spilling_without_a_second_promotion(monkeypatch):
    t, p, promoted = tenancy(monkeypatch, live={"A": 200}, seen="B", lanes="A")
    t.flood_guard({"A": 500})
    assert p.parking.spilling == {"A"}
    assert promoted == []
