import random

import pytest

from consumer_core.retry import RetryPolicy


def test_backoff_doubles_with_equal_jitter_and_is_capped():
    policy = RetryPolicy(initial_backoff=0.2, max_backoff=1.0)
    rng = random.Random(7)
    for attempt, base in ((1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (30, 1.0)):
        for _ in range(50):
            delay = policy.next_delay(attempt, rng)
            assert base / 2 <= delay <= base


def test_jitter_spreads_delays():
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0)
    rng = random.Random(1)
    delays = {round(policy.next_delay(3, rng), 3) for _ in range(20)}
    assert len(delays) > 10


@pytest.mark.parametrize(
    ("attempt", "age", "delay", "expected"),
    [(1, 0.0, 0.1, True), (5, 0.0, 0.1, False), (2, 59.0, 2.0, False), (2, 10.0, 2.0, True)],
)
def test_gives_up_on_attempts_or_age(attempt, age, delay, expected):
    policy = RetryPolicy(max_attempts=5, max_age=60.0)
    assert policy.should_retry(attempt=attempt, age=age, delay=delay) is expected
