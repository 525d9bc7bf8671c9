"""RabbitMQ (the machine's broker, a vhost per test): 1% poison messages; SIGTERM
during a burst."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pika
import pytest

from tests.faults.harness import Results, bridge_rss, finish, in_memory, wait_for
from tests.faults.rabbitmq_load import (
    DEAD,
    KEYS,
    RabbitFeed,
    bridge_config,
    collect_results,
    plain,
    prepare,
)
from tests.faults.report import Row
from tests.integration.rabbitmq.conftest import Broker
from tests.support.bridge import BridgeProcess
from tests.support.function_server import Call, FunctionServer, Reply

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]

SCHEMA = {
    "type": "object",
    "required": ["i", "key"],
    "properties": {
        "i": {"type": "integer"},
        "key": {"type": "string"},
        "blob": {"type": "string", "maxLength": 1024},
    },
}
OVERSIZED = 512 * 1024
POISON = ("invalid_json", "oversized", "wrong_encoding", "broken_cloudevent")
EXPECTED_KIND = {
    "invalid_json": "schema_violation",
    "oversized": "schema_violation",
    "wrong_encoding": "schema_violation",
    "broken_cloudevent": "malformed_message",
}


def poison_kind(n: int) -> str | None:
    """Every hundredth message (1%) is poison, the four kinds in turn."""
    return POISON[(n // 100) % len(POISON)] if n % 100 == 37 else None


def message(n: int) -> tuple[bytes, pika.BasicProperties]:
    body, properties = plain(n)
    kind = poison_kind(n)
    key = f"k{n % KEYS}"
    if kind == "invalid_json":
        body = body[: len(body) // 2]  # cut off mid-document
    elif kind == "oversized":
        body = json.dumps({"i": n, "key": key, "blob": "x" * OVERSIZED}).encode()
    elif kind == "wrong_encoding":
        body = json.dumps({"i": n, "key": key, "note": "café"}, ensure_ascii=False).encode(
            "latin-1"
        )
    elif kind == "broken_cloudevent":
        # Claims to be a binary-mode CloudEvent but has neither ce-source nor ce-type.
        properties.headers = {"x-key": key, "ce-specversion": "1.0", "ce-id": f"m{n}"}
    return body, properties


def work(call: Call) -> Reply:
    return Reply(200, {"i": call.data["i"]}, delay=0.005)


@pytest.mark.timeout(120)
async def test_poison_messages_fail_with_their_reason_and_never_block(
    vhost: Broker,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
    tmp_path: Path,
    fault_report: list[Row],
) -> None:
    """1% of a steady stream is poison: cut-off JSON, 512 KiB over the schema's limit,
    Latin-1 instead of UTF-8, a CloudEvent without source and type. Each reaches
    ``on_failure`` once with its kind and reason, is dead-lettered, never reaches the
    function, and the messages around it flow on."""
    total, rate, name = 3000, 500.0, "poison"
    await asyncio.to_thread(prepare, vhost)
    (tmp_path / "order.schema.json").write_text(json.dumps(SCHEMA))
    fn = await function_server(work).start()
    bridge = bridge_process(
        bridge_config(
            vhost,
            fn.url,
            name=name,
            concurrency="{initial: 32, min: 1, max: 64}",
            schema="order.schema.json",
        )
    )
    await asyncio.to_thread(bridge.start)
    rss_base = bridge_rss(bridge)
    results = Results()
    collector = collect_results(vhost, results).start()
    feeder = RabbitFeed(vhost, message).feeder(total=total, rate=rate).start()
    ids = await feeder.join()
    fed = time.monotonic()
    poison = {f"m{n}": kind for n in range(total) if (kind := poison_kind(n))}
    assert len(poison) == total // 100

    await finish(
        scenario="1% poison messages",
        broker="rabbitmq",
        name=name,
        bridge=bridge,
        feeder=feeder,
        results=results,
        collector=collector,
        fault_end=fed,
        bound=0,
        rss_base=rss_base,
        report=fault_report,
        note=lambda: (
            f"{len(poison)} poison of 4 kinds; longest accept-to-result "
            f"{feeder.latency(results, ids):.2f}s"
        ),
    )
    assert results.kinds == {i: EXPECTED_KIND[kind] for i, kind in poison.items()}
    for event_id, kind in poison.items():
        message_text = results.errors[event_id]["message"]
        if kind == "broken_cloudevent":
            assert "source" in message_text or "type" in message_text, message_text
        else:
            assert "JSON" in message_text or "schema" in message_text, message_text
    assert not set(poison) & {c.event_id for c in fn.calls}, "the function saw poison"
    assert feeder.latency(results, ids) < 5.0, "a message waited long: something blocked"
    dead = await asyncio.to_thread(vhost.drain, DEAD)
    assert sorted(m.message_id or "" for m in dead) == sorted(poison), "not dead-lettered"


@pytest.mark.timeout(120)
async def test_sigterm_during_a_burst_drains_and_a_restart_finishes_the_rest(
    vhost: Broker,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
    fault_report: list[Row],
) -> None:
    """SIGTERM while a burst is arriving: the bridge stops taking messages, finishes
    and delivers every invocation it started, hands the rest back and exits 0 within
    ``shutdown_timeout``; started again, it finishes the rest. Nothing is repeated."""
    total, rate, name, shutdown = 2000, 1000.0, "burst", 10.0
    await asyncio.to_thread(prepare, vhost)
    fn = await function_server(lambda call: Reply(200, {"i": call.data["i"]}, delay=0.2)).start()
    bridge = bridge_process(
        bridge_config(
            vhost,
            fn.url,
            name=name,
            concurrency="{initial: 64, min: 1, max: 64}",
            shutdown_timeout=f"{shutdown:g}s",
        )
    )
    await asyncio.to_thread(bridge.start)
    rss_base = bridge_rss(bridge)
    results = Results()
    collector = collect_results(vhost, results).start()
    feeder = RabbitFeed(vhost).feeder(total=total, rate=rate).start()
    await wait_for(
        lambda: len(results.counts) >= 200,
        timeout=60,
        what="200 results",
        bridge=bridge,
        pipeline=name,
        collector=collector,
    )
    held = await asyncio.to_thread(in_memory, bridge, name)
    signalled = time.monotonic()
    code = await asyncio.to_thread(bridge.terminate, shutdown + 20)
    drain = time.monotonic() - signalled
    assert code == 0, bridge.log()[-3000:]
    assert drain < shutdown + 2.0, f"the drain took {drain:.1f}s"
    invoked = {c.event_id for c in fn.calls}
    await wait_for(
        lambda: results.has_all(sorted(invoked)),
        timeout=5,
        what="the results of every invocation started before the exit",
    )
    first_run = len(results.counts)
    assert first_run < total, "the SIGTERM should land mid-burst"

    await asyncio.to_thread(bridge.start)
    restarted = time.monotonic()
    await finish(
        scenario="SIGTERM during a burst",
        broker="rabbitmq",
        name=name,
        bridge=bridge,
        feeder=feeder,
        results=results,
        collector=collector,
        fault_end=restarted,
        bound=0,
        rss_base=rss_base,
        report=fault_report,
        note=(
            f"drained in {drain:.1f}s (shutdown_timeout {shutdown:g}s) holding {held} "
            f"tasks; {first_run} results before the exit"
        ),
    )
    assert not results.kinds, f"unexpected failures: {list(results.kinds.items())[:5]}"
