"""The Kafka source's OffsetTracker: commits never pass an unfinished offset."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connectors.kafka.offsets import OffsetTracker


@st.composite
def polled_and_finished(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Offsets as a consumer polls them (increasing, with compaction gaps), and the
    order in which some of them finish (any order, possibly with repeats)."""
    start = draw(st.integers(min_value=0, max_value=1_000))
    gaps = draw(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=60))
    offsets = []
    offset = start
    for gap in gaps:
        offsets.append(offset)
        offset += gap
    finished = draw(st.permutations(offsets))
    cut = draw(st.integers(min_value=0, max_value=len(finished)))
    repeats = draw(st.lists(st.sampled_from(offsets), max_size=5))
    return offsets, list(finished[:cut]) + repeats


@given(polled_and_finished(), st.data())
def test_committed_offset_never_passes_an_unfinished_offset(case, data):
    offsets, finished = case
    tracker = OffsetTracker()
    # Polling and finishing interleave: everything is tracked before it finishes.
    epoch = 0
    tracked: list[int] = []
    done: set[int] = set()
    pending_polls = list(offsets)
    for offset in finished:
        while offset not in tracked:
            epoch = tracker.track(pending_polls[0])
            tracked.append(pending_polls.pop(0))
        tracker.done(offset, epoch)
        done.add(offset)
        unfinished = [o for o in tracked if o not in done]
        committable = tracker.committable()
        if committable is not None:
            assert all(committable <= o for o in unfinished)
            if data.draw(st.booleans(), label="commit now"):
                tracker.committed(committable)
        position = tracker.position()
        assert position is not None
        # Never past an unfinished offset...
        assert all(position <= o for o in unfinished)
        # ...and never behind what is safe: the lowest unfinished one, else the end.
        assert position == (min(unfinished) if unfinished else tracked[-1] + 1)
        assert tracker.outstanding == len(unfinished)


def test_commit_stops_at_first_unfinished_offset():
    tracker = OffsetTracker()
    for offset in range(5):
        tracker.track(offset)
    for offset in (0, 1, 3, 4):
        tracker.done(offset, 0)
    assert tracker.committable() == 2
    tracker.done(2, 0)
    assert tracker.committable() == 5


def test_compaction_gaps_count_as_done():
    tracker = OffsetTracker()
    for offset in (10, 15, 16, 40):
        tracker.track(offset)
    assert tracker.committable() == 10
    tracker.done(15, 0)
    assert tracker.committable() == 10
    tracker.done(10, 0)
    assert tracker.committable() == 16
    tracker.done(16, 0)
    assert tracker.committable() == 40
    tracker.done(40, 0)
    assert tracker.committable() == 41


def test_committable_is_none_until_something_was_tracked_or_moved():
    tracker = OffsetTracker()
    assert tracker.committable() is None
    tracker.track(7)
    assert tracker.committable() == 7
    tracker.committed(7)
    assert tracker.committable() is None
    tracker.done(7, 0)
    assert tracker.committable() == 8
    tracker.committed(8)
    assert tracker.committable() is None


def test_done_is_idempotent_and_ignores_unknown_offsets():
    tracker = OffsetTracker()
    tracker.track(1)
    tracker.track(3)
    assert tracker.done(3, 0)
    assert not tracker.done(3, 0)
    assert not tracker.done(2, 0)  # a gap: never polled
    assert not tracker.done(99, 0)
    assert tracker.outstanding == 1
    assert tracker.committable() == 1


def test_completions_from_a_revoked_epoch_are_ignored():
    tracker = OffsetTracker()
    old = tracker.track(0)
    tracker.track(1)
    new = tracker.revoke()
    assert new != old
    assert tracker.committable() is None
    assert tracker.outstanding == 0
    # The partition came back: the broker redelivers from the committed offset.
    tracker.track(0)
    tracker.track(1)
    assert not tracker.done(0, old)  # a late ack of the lost assignment
    assert tracker.committable() == 0
    assert tracker.done(0, new)
    assert tracker.committable() == 1


def test_revoke_forgets_the_last_commit():
    tracker = OffsetTracker()
    tracker.track(5)
    tracker.done(5, 0)
    tracker.committed(6)
    tracker.revoke()
    tracker.track(6)
    assert tracker.committable() == 6


def test_a_rewinding_consumer_must_start_a_new_epoch():
    tracker = OffsetTracker()
    tracker.track(5)
    with pytest.raises(ValueError, match="tracked after"):
        tracker.track(5)
    with pytest.raises(ValueError, match="tracked after"):
        tracker.track(3)
    epoch = tracker.revoke()
    assert tracker.track(3) == epoch


@given(st.lists(st.integers(min_value=-2, max_value=20), max_size=12))
def test_follows_says_whether_track_would_succeed(offsets):
    tracker = OffsetTracker()
    for offset in offsets:
        expected = tracker.follows(offset)
        try:
            tracker.track(offset)
        except ValueError:
            assert not expected
        else:
            assert expected
