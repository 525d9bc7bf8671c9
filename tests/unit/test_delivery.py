"""The deliver loop's retry contract with sinks, against an in-memory sink."""

from __future__ import annotations

from types import SimpleNamespace

from consumer_core.admin.metrics import Metrics
from consumer_core.delivery import ResultDelivery
from consumer_core.errors import PartialFailure, SinkError
from consumer_core.events import failed_event, succeeded_event, wrap
from consumer_core.outcome import ErrorKind
from consumer_core.tasks import TaskRecord, TaskState


class ScriptedSink:
    """Answers each emit with the next scripted outcome; records what it took."""

    name = "scripted"

    def __init__(self, script):
        self.script = list(script)
        self.taken: list[str] = []
        self.calls: list[list[str]] = []
        self.events: list = []

    async def emit(self, events):
        ids = [str(e.get_id()) for e in events]
        self.calls.append(ids)
        outcome = self.script.pop(0) if self.script else None
        if outcome is None:
            self.taken += ids
            self.events += list(events)
            return
        if isinstance(outcome, Exception):
            if isinstance(outcome, PartialFailure):
                refused = outcome.failed_ids | outcome.undeliverable_ids | outcome.too_large_ids
                self.taken += [i for i in ids if i not in refused]
                self.events += [e for e in events if str(e.get_id()) not in refused]
            raise outcome


def _delivery() -> tuple[ResultDelivery, Metrics]:
    metrics = Metrics()
    pipeline = SimpleNamespace(name="p", res=SimpleNamespace(metrics=metrics))
    return ResultDelivery(pipeline, on_success=[], on_failure=[]), metrics  # type: ignore[arg-type]


def _events(*ids):
    return [wrap(b"{}", event_id=i, source="/s") for i in ids]


async def test_only_failed_events_are_retried_until_the_sink_takes_them(monkeypatch):
    import consumer_core.delivery as delivery_module

    monkeypatch.setattr(delivery_module.asyncio, "sleep", _no_sleep)
    delivery, metrics = _delivery()
    sink = ScriptedSink([PartialFailure("x", ["b"]), SinkError("down"), None])
    await delivery._emit_until_done(sink, _events("a", "b", "c"), [])
    assert sink.calls == [["a", "b", "c"], ["b"], ["b"]]
    assert sorted(sink.taken) == ["a", "b", "c"]
    assert metrics.sink_failures.labels("p", "scripted")._value.get() == 2


async def test_undeliverable_events_are_given_up_and_counted(monkeypatch):
    import consumer_core.delivery as delivery_module

    monkeypatch.setattr(delivery_module.asyncio, "sleep", _no_sleep)
    delivery, metrics = _delivery()
    sink = ScriptedSink([PartialFailure("too big", ["c"], undeliverable_ids=["b"]), None])
    await delivery._emit_until_done(sink, _events("a", "b", "c"), [])
    assert sink.calls == [["a", "b", "c"], ["c"]]
    assert sorted(sink.taken) == ["a", "c"]
    assert metrics.undeliverable.labels("p", "scripted")._value.get() == 1


def _finished(event_id: str, *, ok: bool, size: int) -> SimpleNamespace:
    """A task that finished: its record and its result event, with ``size`` bytes of data."""
    original = wrap(b'{"pad": "' + b"x" * size + b'"}', event_id=event_id, source="/s")
    common = {"pipeline": "p", "original": original, "tenant": "t", "attempts": 1}
    if ok:
        result = succeeded_event(
            **common,
            traceparent=None,
            data=b'{"blob": "' + b"y" * size + b'"}',
            content_type="application/json",
        )
    else:
        result = failed_event(
            **common, traceparent=None, kind=ErrorKind.CLIENT_ERROR, message="HTTP 400", status=400
        )
    state = TaskState.SUCCEEDED if ok else TaskState.FAILED
    record = TaskRecord(id=f"p:{event_id}", pipeline="p", event_id=event_id, state=state)
    return SimpleNamespace(record=record, result=result, event=original, span=None)


async def test_too_large_results_go_again_at_once_as_reduced_copies(monkeypatch):
    import consumer_core.delivery as delivery_module

    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)

    monkeypatch.setattr(delivery_module.asyncio, "sleep", sleep)
    delivery, metrics = _delivery()
    small, big, failed = (
        _finished("a", ok=True, size=10),
        _finished("b", ok=True, size=300_000),
        _finished("c", ok=False, size=300_000),
    )
    tasks = [small, big, failed]
    events = [t.result for t in tasks]
    ids = [str(e.get_id()) for e in events]
    sink = ScriptedSink([PartialFailure("big", [], too_large_ids=ids[1:]), None])
    await delivery._emit_until_done(sink, events, tasks)

    assert sink.calls == [ids, ids[1:]]
    assert slept == [], "a reduced copy goes at once: the sink refused nothing for a while"
    taken = {str(e.get_id()): e for e in sink.events}
    assert sorted(taken) == sorted(ids)
    copy = taken[ids[1]]
    assert copy.get_data() is None
    assert copy.get_attributes()["dataref"] == "/v1/tasks/p:b"
    assert copy.get_attributes()["dataomitted"] == len(events[1].get_data())
    assert big.record.result["data"] == {"blob": "y" * 300_000}, "the task keeps it whole"
    failure = taken[ids[2]]
    assert failure.get_attributes()["dataref"] == "/v1/tasks/p:c"
    body = failure.get_data()
    assert b"x" * 1000 not in body, "the original's data is left out"
    assert small.record.result is None
    assert failed.record.result is None
    assert "x" * 300_000 in failed.record.event["data"], "the original, whole"
    assert metrics.reduced_results.labels("p", "scripted")._value.get() == 2
    assert metrics.undeliverable.labels("p", "scripted")._value.get() == 0


async def test_a_reduced_copy_that_is_still_too_large_is_given_up(monkeypatch):
    import consumer_core.delivery as delivery_module

    monkeypatch.setattr(delivery_module.asyncio, "sleep", _no_sleep)
    delivery, metrics = _delivery()
    task = _finished("a", ok=True, size=100)
    event_id = str(task.result.get_id())
    too_large = PartialFailure("big", [], too_large_ids=[event_id])
    sink = ScriptedSink([too_large, PartialFailure("still big", [], too_large_ids=[event_id])])
    await delivery._emit_until_done(sink, [task.result], [task])
    assert sink.calls == [[event_id], [event_id]]
    assert sink.taken == []
    assert metrics.undeliverable.labels("p", "scripted")._value.get() == 1


async def _no_sleep(_delay: float) -> None:
    return None
