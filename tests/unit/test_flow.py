from hypothesis import given
from hypothesis import strategies as st

from consumer_core.flow import AimdWindow


def test_window_grows_by_one_after_a_full_window_of_successes():
    window = AimdWindow(initial=4, minimum=1, maximum=10)
    for _ in range(3):
        window.on_success(inflight=4)
    assert window.limit == 4
    window.on_success(inflight=4)
    assert window.limit == 5


def test_window_does_not_grow_when_it_is_not_used():
    window = AimdWindow(initial=8, minimum=1, maximum=100)
    for _ in range(100):
        window.on_success(inflight=1)
    assert window.limit == 8


def test_throttle_halves_once_per_cooldown():
    window = AimdWindow(initial=16, minimum=1, maximum=64, cooldown=0.5)
    window.on_throttle(now=10.0)
    assert window.limit == 8
    window.on_throttle(now=10.1)  # same overloaded moment: no second cut
    assert window.limit == 8
    window.on_throttle(now=10.7)
    assert window.limit == 4


def test_retry_after_blocks_new_work_until_it_passed():
    window = AimdWindow(initial=4, minimum=1, maximum=8)
    window.on_throttle(now=100.0, retry_after=2.0)
    assert window.free(0, now=101.0) == 0
    assert window.free(0, now=102.5) == window.limit


def test_window_never_drops_below_minimum():
    window = AimdWindow(initial=3, minimum=2, maximum=8, cooldown=0)
    for i in range(10):
        window.on_throttle(now=float(i))
    assert window.limit == 2


@given(
    st.integers(1, 20),
    st.integers(0, 40),
    st.lists(st.tuples(st.booleans(), st.integers(0, 100)), max_size=300),
)
def test_limit_always_within_bounds(minimum, extra, signals):
    maximum = minimum + extra
    window = AimdWindow(initial=minimum, minimum=minimum, maximum=maximum, cooldown=0)
    clock = 0.0
    for throttle, inflight in signals:
        clock += 1
        if throttle:
            window.on_throttle(now=clock)
        else:
            window.on_success(inflight=inflight)
        assert minimum <= window.limit <= maximum
