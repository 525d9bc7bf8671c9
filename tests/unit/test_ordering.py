from hypothesis import given
from hypothesis import strategies as st

from consumer_core.ordering import KeyedQueues


def test_same_key_waits_other_keys_pass():
    gates: KeyedQueues[str] = KeyedQueues()
    assert gates.admit("a", "a1")
    assert not gates.admit("a", "a2")
    assert gates.admit("b", "b1")
    assert not gates.admit("a", "a3")
    assert gates.admit(None, "x")
    assert gates.release("a") == "a2"
    assert gates.release("a") == "a3"
    assert gates.release("a") is None
    assert not gates.busy("a")
    assert gates.admit("a", "a4")


def test_removing_a_waiting_item_keeps_the_rest_in_order():
    gates: KeyedQueues[str] = KeyedQueues()
    gates.admit("k", "1")
    gates.admit("k", "2")
    gates.admit("k", "3")
    assert gates.remove("k", "2")
    assert not gates.remove("k", "2")
    assert gates.release("k") == "3"
    assert gates.waiting_count == 0


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=200))
def test_each_key_runs_one_at_a_time_in_arrival_order(ops):
    """Simulate admissions interleaved with completions: per key, the run order is the
    arrival order and never two runs of one key overlap."""
    gates: KeyedQueues[tuple[str, int]] = KeyedQueues()
    running: dict[str, tuple[str, int]] = {}
    started: dict[str, list[int]] = {}
    counter = 0
    for key, complete in ops:
        if complete and key in running:
            done = running.pop(key)
            following = gates.release(done[0])
            if following is not None:
                running[key] = following
                started.setdefault(key, []).append(following[1])
            continue
        counter += 1
        item = (key, counter)
        if gates.admit(key, item):
            assert key not in running
            running[key] = item
            started.setdefault(key, []).append(counter)
    for order in started.values():
        assert order == sorted(order)
