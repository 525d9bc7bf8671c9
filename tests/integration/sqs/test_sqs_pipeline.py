"""``bridge run`` with an SQS source against the moto server and a real function server."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import re
import urllib.request
from collections import Counter, defaultdict
from typing import Any

import pytest

from tests.support.function_server import Call, Reply

pytestmark = [pytest.mark.sqs, pytest.mark.e2e, pytest.mark.slow]


def sqs_source(aws: Any, url: str, **extra: Any) -> dict[str, Any]:
    return {"type": "sqs", "queue_url": url, "endpoint_url": aws.server.url, **extra}


def sqs_sink(aws: Any, url: str) -> dict[str, Any]:
    return {"type": "sqs", "queue_url": url, "endpoint_url": aws.server.url}


def metrics_text(bridge: Any) -> str:
    with urllib.request.urlopen(bridge.url + "/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return text


def received_total(bridge: Any, pipeline: str) -> float:
    text = metrics_text(bridge)
    pattern = rf'^bridge_messages_received_total{{pipeline="{pipeline}"}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_thousand_messages_each_give_exactly_one_result(
    aws, function_server, sqs_bridge
) -> None:
    total, window = 1000, 120  # keep moto's queues shallow: it slows down with depth
    source, results = await aws.create_queue("in"), await aws.create_queue("results")
    fn = await function_server().start()
    sqs_bridge(
        name="thousand",
        source=sqs_source(aws, source, wait_time="5s"),
        target=fn.url,
        on_success=[sqs_sink(aws, results)],
        concurrency={"initial": 32, "min": 1, "max": 128},
    )
    sent: dict[str, int] = {}
    seen: list[dict[str, Any]] = []

    async def feed() -> None:
        while len(sent) < total:
            if len(sent) - len(seen) >= window:
                await asyncio.sleep(0.02)
                continue
            numbers = range(len(sent), min(total, len(sent) + 10))
            ids = await aws.send(source, [{"MessageBody": json.dumps({"n": n})} for n in numbers])
            sent.update(zip(ids, numbers, strict=True))

    async def drain() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 100
        while len(seen) < total and loop.time() < deadline:
            seen.extend(json.loads(m["Body"]) for m in await aws.receive(results))

    await asyncio.gather(feed(), drain())
    seen.extend(json.loads(m["Body"]) for m in await aws.receive(results, wait=1))

    per_message = Counter(event["subject"] for event in seen)
    assert len(per_message) == total, f"{total - len(per_message)} messages without a result"
    assert set(per_message) == set(sent)
    assert max(per_message.values()) == 1, per_message.most_common(3)
    for event in seen:
        assert event["type"] == "bridge.task.succeeded"
        assert event["data"] == {"echo": {"n": sent[event["subject"]]}}
    assert Counter(c.event_id for c in fn.calls).most_common(1)[0][1] == 1
    assert await aws.wait_empty(source, timeout=10) == 0, "acked messages were not deleted"


async def test_function_slower_than_visibility_timeout_is_not_redelivered(
    aws, function_server, sqs_bridge
) -> None:
    source, results = await aws.create_queue("slow"), await aws.create_queue("slow-results")
    fn = await function_server(lambda call: Reply(200, {"ok": True}, delay=5.0)).start()
    bridge = sqs_bridge(
        name="slow",
        source=sqs_source(aws, source, wait_time="1s", visibility_timeout="2s"),
        target=fn.url,
        on_success=[sqs_sink(aws, results)],
    )
    ids = await aws.send(source, [{"MessageBody": f"task {n}"} for n in range(3)])

    found = await aws.collect(results, 3, timeout=30)
    await asyncio.sleep(2.5)  # past another visibility timeout: nothing comes back
    found += await aws.receive(results)

    assert sorted(json.loads(m["Body"])["subject"] for m in found) == sorted(ids)
    assert sorted(c.event_id for c in fn.calls) == sorted(ids)
    assert received_total(bridge, "slow") == 3, "a message was delivered twice"
    assert await aws.wait_empty(source, timeout=5) == 0


async def test_fifo_queue_keeps_order_within_each_group(aws, function_server, sqs_bridge) -> None:
    groups, per_group = 4, 25
    source = await aws.create_queue("orders", fifo=True)
    results = await aws.create_queue("orders-results", fifo=True)
    rng = random.Random(5)
    delays = {n: rng.choice((0.0, 0.005, 0.02)) for n in range(groups * per_group)}
    fn = await function_server(
        lambda call: Reply(200, {"n": call.data["n"]}, delay=delays[call.data["n"]])
    ).start()
    sqs_bridge(
        name="fifo",
        source=sqs_source(aws, source, wait_time="1s"),
        target=fn.url,
        on_success=[sqs_sink(aws, results)],
    )
    entries = [
        {
            "MessageBody": json.dumps({"group": f"g{n % groups}", "n": n}),
            "MessageGroupId": f"g{n % groups}",
            "MessageDeduplicationId": f"m{n}",
        }
        for n in range(groups * per_group)
    ]
    await aws.send(source, entries)

    found = await aws.collect(results, groups * per_group, timeout=60)

    calls: dict[str, list[Call]] = defaultdict(list)
    for call in fn.calls:
        calls[call.key or ""].append(call)
    assert sorted(calls) == [f"g{g}" for g in range(groups)]
    for group, made in calls.items():
        numbers = [c.data["n"] for c in made]
        assert numbers == sorted(numbers), f"{group} ran out of order: {numbers}"
        assert len(numbers) == per_group
        for before, after in itertools.pairwise(made):
            assert after.at >= before.at + delays[before.data["n"]] - 0.001, "a group overlapped"
    emitted: dict[str, list[int]] = defaultdict(list)
    for message in found:
        event = json.loads(message["Body"])
        emitted[message["Attributes"]["MessageGroupId"]].append(event["data"]["n"])
    assert sorted(emitted) == sorted(calls)
    for group, numbers in emitted.items():
        assert numbers == sorted(numbers), f"{group} results out of order: {numbers}"
        assert len(numbers) == per_group


async def test_eventbridge_sink_delivers_cloudevents_with_attributes_intact(
    aws, function_server, sqs_bridge
) -> None:
    source = await aws.create_queue("eb-in")
    bus, target = await aws.bus_to_queue("results")

    def behaviour(call: Call) -> Reply:
        if isinstance(call.data, dict) and call.data.get("fail"):
            return Reply(400, {"error": "no"})
        return Reply(200, {"got": call.data})

    fn = await function_server(behaviour).start()
    sink = {"type": "eventbridge", "event_bus_name": bus, "endpoint_url": aws.server.url}
    sqs_bridge(
        name="eb",
        source=sqs_source(aws, source, wait_time="1s"),
        target=fn.url,
        on_success=[sink],
        on_failure=[sink],
    )
    structured = {
        "specversion": "1.0",
        "id": "order-1",
        "source": "/shop/orders",
        "type": "shop.order.created",
        "partitionkey": "customer-7",
        "region": "eu",
        "datacontenttype": "application/json",
        "data": {"order": 1},
    }
    binary_attributes = {
        "ce-specversion": "1.0",
        "ce-id": "order-2",
        "ce-source": "/shop/orders",
        "ce_type": "shop.order.paid",
        "ce-region": "us",
        "content-type": "application/json",
    }
    ids = await aws.send(
        source,
        [
            {"MessageBody": json.dumps(structured)},
            {
                "MessageBody": json.dumps({"order": 2}),
                "MessageAttributes": {
                    k: {"DataType": "String", "StringValue": v}
                    for k, v in binary_attributes.items()
                },
            },
            {"MessageBody": json.dumps({"order": 3, "fail": True})},
            {"MessageBody": "plain text"},
        ],
    )
    failed_id, plain_id = ids[2], ids[3]

    found = await aws.collect(target, 4, timeout=30)

    envelopes = [json.loads(m["Body"]) for m in found]
    details = {e["detail"]["subject"]: e for e in envelopes}
    assert sorted(details) == sorted(["order-1", "order-2", failed_id, plain_id])
    for envelope in envelopes:
        detail = envelope["detail"]
        assert envelope["detail-type"] == detail["type"]
        assert envelope["source"] == detail["source"] == "/bridge/pipelines/eb"
        assert detail["specversion"] == "1.0"
        assert {"id", "time", "tenant", "attempts", "traceparent"} <= set(detail)
    ok = details["order-1"]["detail"]
    assert ok["type"] == "bridge.task.succeeded"
    assert ok["partitionkey"] == "customer-7"
    assert ok["data"] == {"got": {"order": 1}}
    assert details["order-2"]["detail"]["data"] == {"got": {"order": 2}}
    assert details[plain_id]["detail"]["data"] == {"got": "plain text"}
    failed = details[failed_id]["detail"]
    assert failed["type"] == "bridge.task.failed"
    assert failed["data"]["error"]["status"] == 400
    original = failed["data"]["event"]
    assert original["type"] == "bridge.message"
    assert original["source"].startswith("arn:aws:sqs:")
    assert original["data"] == {"order": 3, "fail": True}
    # the function saw both CloudEvents with their own attributes
    by_id = {c.event_id: c for c in fn.calls}
    assert by_id["order-1"].headers["ce-region"] == "eu"
    assert by_id["order-1"].headers["ce-type"] == "shop.order.created"
    assert by_id["order-2"].headers["ce-region"] == "us"
    assert by_id["order-2"].headers["ce-type"] == "shop.order.paid"
    assert by_id[plain_id].headers["ce-type"] == "bridge.message"
    assert await aws.wait_empty(source, timeout=5) == 0, "without a redrive policy: deleted"


async def test_message_that_fails_for_good_moves_to_the_redrive_dead_letter_queue(
    aws, function_server, sqs_bridge
) -> None:
    dead = await aws.create_queue("dead")
    source = await aws.create_queue("redriven", dead_letter_url=dead)
    results = await aws.create_queue("redriven-results")
    fn = await function_server(
        lambda call: Reply(422) if call.data == "bad" else Reply(200, {"ok": True})
    ).start()
    sqs_bridge(
        name="redrive",
        source=sqs_source(aws, source, wait_time="1s"),
        target=fn.url,
        on_success=[sqs_sink(aws, results)],
    )
    tenant = {"tenant": {"DataType": "String", "StringValue": "acme"}}
    ids = await aws.send(
        source,
        [
            {"MessageBody": "good"},
            {"MessageBody": "bad", "MessageAttributes": tenant},
        ],
    )

    (result,) = await aws.collect(results, 1, timeout=20)
    (moved,) = await aws.collect(dead, 1, timeout=20)

    assert json.loads(result["Body"])["subject"] == ids[0]
    assert moved["Body"] == "bad"
    assert moved["MessageAttributes"]["tenant"]["StringValue"] == "acme"
    assert await aws.wait_empty(source, timeout=5) == 0
    assert [c.event_id for c in fn.calls].count(ids[1]) == 1, "a permanent failure: no retry"


async def test_results_over_256_kib_arrive_reduced_and_the_task_keeps_them_whole(
    aws, function_server, sqs_bridge
) -> None:
    """SQS takes 256 KiB per message. A function answer of 300 KB, and the failure event
    of a 300 KB message (which embeds it), reach their queues as reduced copies: every
    attribute, the error, and a ``dataref`` to the task, which keeps the whole event."""
    ok_queue, failed_queue = await aws.create_queue("big-ok"), await aws.create_queue("big-no")

    def behaviour(call: Call) -> Reply:
        if call.data.get("fail"):
            return Reply(400, {"error": "no"})
        if call.data.get("big"):
            return Reply(200, {"blob": "y" * 300_000})
        return Reply(200, {"small": True})

    fn = await function_server(behaviour).start()
    bridge = sqs_bridge(
        name="big",
        source={"type": "embedded"},
        target=fn.url,
        on_success=[sqs_sink(aws, ok_queue)],
        on_failure=[sqs_sink(aws, failed_queue)],
    )
    bodies = {
        "small": {"n": 1},
        "large-answer": {"big": True},
        "large-failure": {"fail": True, "pad": "x" * 300_000},
        "small-failure": {"fail": True},
    }
    for event_id, body in bodies.items():
        headers = {
            "ce-id": event_id,
            "ce-source": "/test",
            "ce-type": "job",
            "ce-specversion": "1.0",
            "Content-Type": "application/json",
        }
        status, doc = bridge.post_event("big", json.dumps(body).encode(), headers)
        assert status == 202, doc

    ok = {
        e["subject"]: e
        for e in map(json.loads, (m["Body"] for m in await aws.collect(ok_queue, 2, timeout=30)))
    }
    no = {
        e["subject"]: e
        for e in map(
            json.loads, (m["Body"] for m in await aws.collect(failed_queue, 2, timeout=30))
        )
    }

    assert ok["small"]["data"] == {"small": True}
    assert "dataref" not in ok["small"]
    answer = ok["large-answer"]
    assert "data" not in answer
    assert answer["dataref"] == "/v1/tasks/big:large-answer"
    assert answer["dataomitted"] >= 300_000
    assert answer["type"] == "bridge.task.succeeded"
    assert answer["tenant"] == "default"
    status, task = bridge.get(answer["dataref"])
    assert status == 200
    assert task["state"] == "succeeded"
    assert task["result"]["id"] == answer["id"]
    assert task["result"]["data"] == {"blob": "y" * 300_000}

    assert no["small-failure"]["data"]["event"]["data"] == {"fail": True}
    failure = no["large-failure"]
    assert failure["dataref"] == "/v1/tasks/big:large-failure"
    assert failure["data"]["error"]["status"] == 400
    assert failure["data"]["event"]["id"] == "large-failure"
    assert "data" not in failure["data"]["event"]
    status, task = bridge.get(failure["dataref"])
    assert status == 200
    assert task["state"] == "failed"
    assert task["event"]["data"]["pad"] == "x" * 300_000, "kept for re-drive, whole"
    status, listed = bridge.get("/v1/tasks?pipeline=big")
    assert status == 200
    assert len(listed["tasks"]) == 4
    assert not [t for t in listed["tasks"] if "event" in t or "result" in t], "lists are lean"

    metrics = metrics_text(bridge)
    reduced = re.findall(
        r'^bridge_reduced_results_total\{pipeline="big",sink="[^"]+"\} (\S+)$',
        metrics,
        re.MULTILINE,
    )
    assert sorted(float(v) for v in reduced) == [1.0, 1.0]
    assert "bridge_undeliverable_results_total{" not in metrics
