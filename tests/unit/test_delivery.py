"""The deliver loop's retry contract with sinks, against an in-memory sink."""

from __future__ import annotations

from types import SimpleNamespace

from consumer_core.admin.metrics import Metrics
from consumer_core.delivery import ResultDelivery
from consumer_core.errors import PartialFailure, SinkError
from consumer_core.events import wrap


class ScriptedSink:
    """Answers each emit with the next scripted outcome; records what it took."""

    name = "scripted"

    def __init__(self, script):
        self.script = list(script)
        self.taken: list[str] = []
        self.calls: list[list[str]] = []

    async def emit(self, events):
        ids = [str(e.get_id()) for e in events]
        self.calls.append(ids)
        outcome = self.script.pop(0) if self.script else None
        if outcome is None:
            self.taken += ids
            return
        if isinstance(outcome, Exception):
            if isinstance(outcome, PartialFailure):
                self.taken += [
                    i for i in ids if i not in outcome.failed_ids | outcome.undeliverable_ids
                ]
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
    await delivery._emit_until_done(sink, _events("a", "b", "c"))
    assert sink.calls == [["a", "b", "c"], ["b"], ["b"]]
    assert sorted(sink.taken) == ["a", "b", "c"]
    assert metrics.sink_failures.labels("p", "scripted")._value.get() == 2


async def test_undeliverable_events_are_given_up_and_counted(monkeypatch):
    import consumer_core.delivery as delivery_module

    monkeypatch.setattr(delivery_module.asyncio, "sleep", _no_sleep)
    delivery, metrics = _delivery()
    sink = ScriptedSink([PartialFailure("too big", ["c"], undeliverable_ids=["b"]), None])
    await delivery._emit_until_done(sink, _events("a", "b", "c"))
    assert sink.calls == [["a", "b", "c"], ["c"]]
    assert sorted(sink.taken) == ["a", "c"]
    assert metrics.undeliverable.labels("p", "scripted")._value.get() == 1


async def _no_sleep(_delay: float) -> None:
    return None
