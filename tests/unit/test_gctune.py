"""The collector settings of a running bridge (consumer_core.gctune)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from consumer_core import gctune


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_start_up_objects_are_frozen_and_generation_0_is_larger(restored_gc: None) -> None:
    gc.unfreeze()
    gctune.tune()
    assert gc.get_freeze_count() > 1000  # at least the imported modules' objects
    assert gc.get_threshold()[0] == gctune.GEN0_THRESHOLD
    assert gc.isenabled()


def test_cycles_made_after_start_up_are_still_collected_without_being_asked(
    restored_gc: None,
) -> None:
    gctune.tune()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None  # a cycle: reference counting alone cannot free it
    # Allocating more than generation 0 holds triggers a collection by itself.
    keep = [[] for _ in range(3 * gctune.GEN0_THRESHOLD)]
    assert gone() is None
    del keep


def test_the_defaults_stay_when_asked(restored_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    monkeypatch.setenv(gctune.DEFAULTS_VARIABLE, "1")
    gctune.tune()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (700, 10, 10)
