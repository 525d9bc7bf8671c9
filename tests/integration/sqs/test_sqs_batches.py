"""Partial failures of the batch APIs, against a scripted client (no server).

moto never fails single entries, so these answers are scripted: each fake method pops
the next scripted answer (or raises it) and records the entries it was sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from botocore.exceptions import ClientError

from connectors.sqs.client import AwsEndpoint
from connectors.sqs.errors import SinkUnavailable
from connectors.sqs.settle import Handle
from connectors.sqs.source import SQSSource
from consumer_core.errors import PartialFailure
from consumer_core.events import CloudEvent
from sinks.eventbridge import EventBridgeSink
from sinks.sqs import SQSSink

pytestmark = pytest.mark.sqs

ENDPOINT = AwsEndpoint(endpoint_url="http://127.0.0.1:1")


class ScriptedApi:
    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[dict[str, Any]] = []

    async def _answer(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        answer = self.answers.pop(0) if self.answers else {}
        if isinstance(answer, Exception):
            raise answer
        return answer

    send_message_batch = _answer
    put_events = _answer
    delete_message_batch = _answer
    change_message_visibility_batch = _answer


def event(n: int, key: str | None = None, size: int = 0) -> CloudEvent:
    attributes = {"id": f"e{n}", "source": "/bridge/pipelines/t", "type": "bridge.task.succeeded"}
    if key is not None:
        attributes["partitionkey"] = key
    data = b'{"n": 1}' if not size else b'{"pad": "' + b"x" * size + b'"}'
    return CloudEvent({"specversion": "1.0", **attributes}, data)


def sqs_sink(api: ScriptedApi, url: str = "http://q/123/results") -> SQSSink:
    sink = SQSSink(name="t", queue_url=url, endpoint=ENDPOINT)
    sink.client._client = api
    return sink


def bodies(call: dict[str, Any]) -> list[str]:
    return [json.loads(e["MessageBody"])["id"] for e in call["Entries"]]


def throttled() -> ClientError:
    return ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "SendMessageBatch"
    )


async def test_sqs_sink_resends_only_the_failed_entries() -> None:
    transient = {"Id": "1", "SenderFault": False, "Code": "InternalError", "Message": "x"}
    api = ScriptedApi({"Failed": [transient]}, {})
    await sqs_sink(api).emit([event(0), event(1), event(2)])
    assert [bodies(c) for c in api.calls] == [["e0", "e1", "e2"], ["e1"]]


async def test_sqs_sink_drops_entries_refused_for_good_with_an_error(caplog) -> None:
    refused = {"Id": "0", "SenderFault": True, "Code": "InvalidMessageContents", "Message": "x"}
    api = ScriptedApi({"Failed": [refused]})
    with caplog.at_level(logging.ERROR):
        await sqs_sink(api).emit([event(0), event(1)])
    assert len(api.calls) == 1
    assert any("e0" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


async def test_sqs_sink_reports_what_still_failed_after_its_retries() -> None:
    def failing(index: int) -> dict[str, Any]:
        return {"Failed": [{"Id": str(index), "SenderFault": False, "Code": "InternalError"}]}

    api = ScriptedApi(failing(1), failing(0), failing(0))
    with pytest.raises(PartialFailure) as caught:
        await sqs_sink(api).emit([event(0), event(1)])
    assert caught.value.failed_ids == {"e1"}


async def test_sqs_sink_raises_the_call_error_when_nothing_got_through() -> None:
    api = ScriptedApi(throttled(), throttled(), throttled())
    with pytest.raises(SinkUnavailable, match="ThrottlingException"):
        await sqs_sink(api).emit([event(0)])


async def test_fifo_sink_never_lets_an_event_overtake_a_failed_one_of_its_group() -> None:
    events = [event(n, key="g") for n in range(12)] + [event(99, key="other")]
    first = {"Failed": [{"Id": "3", "SenderFault": False, "Code": "InternalError"}]}
    api = ScriptedApi(first, {}, {})
    await sqs_sink(api, "http://q/123/results.fifo").emit(events)
    sent = [bodies(c) for c in api.calls]
    assert sent[0] == [f"e{n}" for n in range(10)]
    assert sent[1] == ["e99"], "later events of group g were held back"
    assert sent[2] == ["e3", "e10", "e11"]
    assert api.calls[0]["Entries"][0]["MessageGroupId"] == "g"
    assert api.calls[0]["Entries"][0]["MessageDeduplicationId"] == "e0"


async def test_sinks_report_an_event_over_256_kib_as_too_large_and_send_the_rest() -> None:
    api = ScriptedApi({})
    with pytest.raises(PartialFailure) as caught:
        await sqs_sink(api).emit([event(0), event(1, size=300_000), event(2)])
    assert [bodies(c) for c in api.calls] == [["e0", "e2"]]
    assert caught.value.too_large_ids == {"e1"}
    assert caught.value.failed_ids == frozenset()

    api = ScriptedApi({"FailedEntryCount": 0, "Entries": [{"EventId": "a"}]})
    sink = EventBridgeSink(name="t", event_bus_name="bus", endpoint=ENDPOINT)
    sink.client._client = api
    with pytest.raises(PartialFailure) as caught:
        await sink.emit([event(0), event(1, size=300_000)])
    assert len(api.calls) == 1
    assert len(api.calls[0]["Entries"]) == 1
    assert caught.value.too_large_ids == {"e1"}


async def test_fifo_sink_holds_the_events_behind_a_too_large_one_of_their_group() -> None:
    events = [
        event(0, key="g"),
        event(1, key="g", size=300_000),
        event(2, key="g"),
        event(4, key="g", size=300_000),
    ]
    api = ScriptedApi({})
    with pytest.raises(PartialFailure) as caught:
        await sqs_sink(api, "http://q/123/results.fifo").emit([*events, event(3, key="h")])
    assert [bodies(c) for c in api.calls] == [["e0", "e3"]]
    assert caught.value.too_large_ids == {"e1", "e4"}
    assert caught.value.failed_ids == {"e2"}, "e2 waits for e1's reduced copy"


async def test_eventbridge_sink_resends_only_failed_entries() -> None:
    answer = {
        "FailedEntryCount": 1,
        "Entries": [{"EventId": "a"}, {"ErrorCode": "InternalFailure", "ErrorMessage": "x"}],
    }
    api = ScriptedApi(answer, {"FailedEntryCount": 0, "Entries": [{"EventId": "b"}]})
    sink = EventBridgeSink(name="t", event_bus_name="bus", endpoint=ENDPOINT)
    sink.client._client = api
    await sink.emit([event(0), event(1)])
    sent = [[e["Detail"] for e in c["Entries"]] for c in api.calls]
    assert len(sent[0]) == 2
    assert len(sent[1]) == 1
    assert '"id":"e1"' in sent[1][0]
    entry = api.calls[0]["Entries"][0]
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (
        "/bridge/pipelines/t",
        "bridge.task.succeeded",
        "bus",
    )


async def test_source_retries_failed_deletes_and_logs_expired_receipt_handles(caplog) -> None:
    answer = {
        "Failed": [
            {"Id": "0", "SenderFault": True, "Code": "ReceiptHandleIsInvalid"},
            {"Id": "1", "SenderFault": False, "Code": "InternalError"},
        ]
    }
    api = ScriptedApi(answer, {})
    source = SQSSource(pipeline="t", queue_url="http://q/123/in", endpoint=ENDPOINT)
    source.client._client = api
    with caplog.at_level(logging.WARNING):
        await source._delete_batch([Handle("m0", "r0"), Handle("m1", "r1"), Handle("m2", "r2")])
    receipts = [[e["ReceiptHandle"] for e in c["Entries"]] for c in api.calls]
    assert receipts == [["r0", "r1", "r2"], ["r1"]]
    assert any("m0" in r.getMessage() for r in caplog.records)


async def test_heartbeat_extends_due_messages_and_waits_a_tick_while_sqs_fails() -> None:
    api = ScriptedApi({}, *[throttled() for _ in range(1000)])
    source = SQSSource(
        pipeline="t", queue_url="http://q/123/in", endpoint=ENDPOINT, visibility_timeout=1.0
    )
    source.client._client = api
    handles = [Handle(f"m{n}", f"r{n}") for n in range(15)]
    for handle in handles:
        source._inflight.add(handle, now=source.clock() - 0.6)  # past half of 1s
    loop = asyncio.create_task(source._heartbeat_loop())
    await asyncio.sleep(0.3)
    first = [e["ReceiptHandle"] for c in api.calls for e in c["Entries"]]
    assert sorted(first) == sorted(h.receipt for h in handles), "all due ones extended once"
    await asyncio.sleep(0.7)  # now due again, and every call fails
    loop.cancel()
    assert len(api.calls) <= 2 + 2 * 4, f"{len(api.calls)} calls: no tight retry loop"
