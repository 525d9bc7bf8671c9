"""``bridge run`` against the real RabbitMQ and a real function server.

Every test gets its own vhost (``broker`` fixture). Messages carry a key (header
``x-key``) and a per-key sequence number; the function server records the calls, and
results come back through the RabbitMQ sink into queues the test drains.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from tests.integration.rabbitmq.conftest import Broker, Message
from tests.support.bridge import BridgeProcess
from tests.support.function_server import Call, FunctionServer, Reply

pytestmark = [pytest.mark.rabbitmq, pytest.mark.e2e]

QUEUE = "work"
RESULTS = "results"


def bridge_config(
    broker: Broker,
    function_url: str,
    *,
    mode: str = "binary",
    initial: int = 64,
    maximum: int = 256,
    dead_letter_exchange: str | None = None,
    prefetch_max: int = 1000,
) -> str:
    dlx = f"\n      dead_letter_exchange: {dead_letter_exchange}" if dead_letter_exchange else ""
    return f"""
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
shutdown_timeout: 10s
pipelines:
  - name: rmq
    source:
      type: rabbitmq
      url: "{broker.url}"
      queue: {QUEUE}
      declare: true
      key_header: x-key
      prefetch_max: {prefetch_max}{dlx}
    ordering: key
    target:
      url: "{function_url}"
      timeout: 10s
      mode: {mode}
      batch: {{max_events: 50, max_wait: 5ms}}
    concurrency: {{initial: {initial}, min: 1, max: {maximum}}}
    retry: {{max_attempts: 4, initial_backoff: 20ms, max_backoff: 200ms}}
    on_success:
      - {{type: rabbitmq, url: "{broker.url}", exchange: {RESULTS}, routing_key: ok}}
    on_failure:
      - {{type: rabbitmq, url: "{broker.url}", exchange: {RESULTS}, routing_key: failed}}
"""


def prepare(broker: Broker, *, queue_arguments: dict[str, Any] | None = None) -> None:
    broker.declare_queue(QUEUE, queue_arguments)
    broker.declare_exchange(RESULTS)
    broker.bind("ok", RESULTS, "ok")
    broker.bind("failed", RESULTS, "failed")


def messages(count: int, keys: int) -> Iterator[tuple[bytes, pika.BasicProperties]]:
    """Message i has key ``k{i % keys}`` and that key's sequence number ``i // keys``."""
    for i in range(count):
        key = f"k{i % keys}"
        body = json.dumps({"key": key, "seq": i // keys, "i": i}).encode()
        yield (
            body,
            pika.BasicProperties(
                content_type="application/json",
                message_id=f"m{i}",
                headers={"x-key": key},
                delivery_mode=2,
            ),
        )


async def wait_for(
    check: Callable[[], bool], bridge: BridgeProcess, *, timeout: float, what: str
) -> None:
    """Poll ``check`` (blocking, run in a thread) until true; fail if the bridge died."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert bridge.proc is not None
        if bridge.proc.poll() is not None:
            pytest.fail(f"bridge exited with {bridge.proc.returncode}:\n{bridge.log()[-5000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n{bridge.log()[-5000:]}")
        await asyncio.sleep(0.25)


def subjects(results: list[Message]) -> Counter[str]:
    return Counter(str(m.headers.get("ce-subject")) for m in results)


def assert_key_order_of_first_results(results: list[Message]) -> None:
    """Per key, results first appear in sequence order (a retried publish may repeat)."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    for message in results:
        subject = str(message.headers["ce-subject"])
        if subject in seen:
            continue
        seen.add(subject)
        echo = message.json()["echo"]
        key, seq = echo["key"], echo["seq"]
        assert seq > last.get(key, -1), f"key {key}: result {seq} after {last[key]}"
        assert message.headers.get("ce-partitionkey") == key
        last[key] = seq


def assert_function_saw_keys_in_order(calls: list[Call]) -> None:
    by_key: dict[str, list[int]] = defaultdict(list)
    for call in calls:
        if call.attempt == 1:
            by_key[call.data["key"]].append(call.data["seq"])
    for key, seqs in by_key.items():
        firsts = list(dict.fromkeys(seqs))
        assert firsts == sorted(firsts), f"key {key} invoked out of order"
    assert all(call.key == call.data["key"] for call in calls)  # ce-partitionkey


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_fifty_thousand_messages_give_one_result_each_in_key_order(
    broker: Broker, function_server: Callable[..., FunctionServer], bridge_process: Any
) -> None:
    total, keys = 50_000, 500
    server = await function_server().start()
    await asyncio.to_thread(prepare, broker)
    await asyncio.to_thread(broker.publish, QUEUE, messages(total, keys))
    bridge = bridge_process(bridge_config(broker, server.url, initial=64, maximum=256))
    started = time.monotonic()
    await asyncio.to_thread(bridge.start)
    await wait_for(
        lambda: broker.depth("ok") >= total, bridge, timeout=240, what=f"{total} results"
    )
    elapsed = time.monotonic() - started
    assert await asyncio.to_thread(bridge.terminate) == 0
    results = await asyncio.to_thread(broker.drain, "ok")
    print(f"\n{total} messages in {elapsed:.1f}s: {total / elapsed:.0f} msgs/s (binary mode)")

    counts = subjects(results)
    assert len(results) == total
    assert set(counts) == {f"m{i}" for i in range(total)}
    assert max(counts.values()) == 1
    assert_key_order_of_first_results(results)
    assert len(server.calls) == total
    assert_function_saw_keys_in_order(server.calls)
    assert await asyncio.to_thread(broker.counts, QUEUE) == (0, 0)
    assert await asyncio.to_thread(broker.depth, "failed") == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_connections_closed_mid_run_reconnects_and_loses_nothing(
    broker: Broker, function_server: Callable[..., FunctionServer], bridge_process: Any
) -> None:
    total, keys = 6_000, 100

    def slowish(call: Call) -> Reply:
        return Reply(200, {"echo": call.data}, delay=0.002)

    server = await function_server(slowish).start()
    await asyncio.to_thread(prepare, broker)
    await asyncio.to_thread(broker.publish, QUEUE, messages(total, keys))
    bridge = bridge_process(bridge_config(broker, server.url, initial=32, maximum=64))
    await asyncio.to_thread(bridge.start)
    for connects, threshold in enumerate((1_000, 3_000), start=1):
        await wait_for(
            lambda t=threshold: broker.depth("ok") >= t,  # type: ignore[misc]
            bridge,
            timeout=60,
            what=f"{threshold} results",
        )
        # The source must be connected (again) for the close to hit it: after the first
        # close it waits before reconnecting, and the in-memory tasks alone may make
        # the next thousands of results meanwhile.
        await wait_for(
            lambda n=connects: bridge.log().count(": consuming ") >= n,  # type: ignore[misc]
            bridge,
            timeout=30,
            what=f"source connection {connects}",
        )
        await asyncio.to_thread(broker.close_all_connections)
    await wait_for(
        lambda: broker.depth("ok") >= total and broker.counts(QUEUE) == (0, 1),
        bridge,
        timeout=120,
        what="every result after the reconnects",
    )
    await asyncio.sleep(1.0)  # let any straggling duplicate land before counting
    assert await asyncio.to_thread(bridge.terminate) == 0
    results = await asyncio.to_thread(broker.drain, "ok")

    counts = subjects(results)
    duplicate_results = sum(n - 1 for n in counts.values())
    invocations = Counter(call.event_id for call in server.calls)
    duplicate_calls = sum(n - 1 for n in invocations.values())
    log = bridge.log()
    lost = [line for line in log.splitlines() if "source lost its connection" in line]
    print(*lost, sep="\n")
    print(
        f"\nafter 2 forced disconnects: {len(results)} results for {total} messages "
        f"({duplicate_results} duplicate results), {len(server.calls)} invocations "
        f"({duplicate_calls} repeated); source reconnects logged: "
        f"{len(lost)}"
    )
    assert set(counts) == {f"m{i}" for i in range(total)}  # nothing lost
    assert set(invocations) == {f"m{i}" for i in range(total)}
    assert len(lost) >= 2
    assert_key_order_of_first_results(results)
    assert_function_saw_keys_in_order(server.calls)
    assert await asyncio.to_thread(broker.counts, QUEUE) == (0, 0)


@pytest.mark.timeout(120)
async def test_function_400_fails_to_on_failure_and_dead_letters_the_rest_flow(
    broker: Broker, function_server: Callable[..., FunctionServer], bridge_process: Any
) -> None:
    total, keys = 300, 10

    def picky(call: Call) -> Reply:
        if call.data["i"] % 7 == 0:
            return Reply(400, {"error": "no sevens"})
        return Reply(200, {"echo": call.data})

    server = await function_server(picky).start()
    dlx = "work-dlx"

    def setup() -> None:
        broker.declare_exchange(dlx, "fanout")
        broker.bind("dead", dlx)
        prepare(broker, queue_arguments={"x-dead-letter-exchange": dlx})
        broker.publish(QUEUE, messages(total, keys))

    await asyncio.to_thread(setup)
    bad = {f"m{i}" for i in range(total) if i % 7 == 0}
    bridge = bridge_process(bridge_config(broker, server.url, dead_letter_exchange=dlx))
    await asyncio.to_thread(bridge.start)
    await wait_for(
        lambda: (
            broker.depth("ok") + broker.depth("failed") >= total
            and broker.depth("dead") >= len(bad)
        ),
        bridge,
        timeout=60,
        what="every result and dead letter",
    )
    assert await asyncio.to_thread(bridge.terminate) == 0
    ok, failed, dead = await asyncio.gather(
        *(asyncio.to_thread(broker.drain, q) for q in ("ok", "failed", "dead"))
    )

    assert set(subjects(ok)) == {f"m{i}" for i in range(total)} - bad
    assert set(subjects(failed)) == bad
    for message in failed:
        assert message.headers["ce-type"] == "bridge.task.failed"
        error = message.json()["error"]
        assert error["kind"] == "client_error"
        assert error["status"] == 400
        assert message.json()["event"]["id"] == message.headers["ce-subject"]
    assert {m.message_id for m in dead} == bad
    for message in dead:
        (death,) = message.headers["x-death"]
        assert death["reason"] == b"rejected" or death["reason"] == "rejected"
        assert death["queue"] in (QUEUE, QUEUE.encode())
    assert all(len(server.calls_for(i)) == 1 for i in bad)  # 400 is not retried
    assert await asyncio.to_thread(broker.counts, QUEUE) == (0, 0)


@pytest.mark.timeout(120)
async def test_poison_messages_fail_once_and_are_not_requeued(
    broker: Broker, function_server: Callable[..., FunctionServer], bridge_process: Any
) -> None:
    server = await function_server().start()
    dlx = "poison-dlx"
    poison = [
        (b"{not json", pika.BasicProperties(content_type="application/cloudevents+json")),
        (
            b'{"a": 1}',  # claims binary mode but has no ce-id / ce-source
            pika.BasicProperties(
                content_type="application/json",
                message_id="p-binary",
                headers={"ce-specversion": "1.0", "ce-type": "t"},
            ),
        ),
    ]

    def setup() -> None:
        broker.declare_exchange(dlx, "fanout")
        broker.bind("dead", dlx)
        prepare(broker, queue_arguments={"x-dead-letter-exchange": dlx})
        broker.publish(QUEUE, [*poison, *messages(20, 4)])

    await asyncio.to_thread(setup)
    bridge = bridge_process(bridge_config(broker, server.url, dead_letter_exchange=dlx))
    await asyncio.to_thread(bridge.start)
    await wait_for(
        lambda: broker.depth("ok") >= 20 and broker.depth("dead") >= 2,
        bridge,
        timeout=60,
        what="results and dead letters",
    )
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(bridge.terminate) == 0
    failed = await asyncio.to_thread(broker.drain, "failed")
    dead = await asyncio.to_thread(broker.drain, "dead")

    assert len(failed) == 2
    kinds = {m.json()["error"]["kind"] for m in failed}
    assert kinds == {"malformed_message"}
    reasons = " ".join(m.json()["error"]["message"] for m in failed)
    assert "not a valid CloudEvent" in reasons
    assert len(dead) == 2
    assert len(server.calls) == 20  # the function never saw the poison
    assert await asyncio.to_thread(broker.counts, QUEUE) == (0, 0)


@pytest.mark.timeout(120)
async def test_pause_cancels_the_consumer_and_resume_finishes_the_queue(
    broker: Broker, function_server: Callable[..., FunctionServer], bridge_process: Any
) -> None:
    server = await function_server().start()
    await asyncio.to_thread(prepare, broker)
    bridge = bridge_process(bridge_config(broker, server.url))
    await asyncio.to_thread(bridge.start)
    await wait_for(lambda: broker.counts(QUEUE)[1] == 1, bridge, timeout=30, what="a consumer")

    status, _ = await asyncio.to_thread(bridge.request, "POST", "/v1/pipelines/rmq/pause")
    assert status in (200, 202, 204)
    await wait_for(lambda: broker.counts(QUEUE)[1] == 0, bridge, timeout=10, what="no consumer")
    await asyncio.to_thread(broker.publish, QUEUE, messages(200, 5))
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(broker.depth, QUEUE) == 200
    assert server.calls == []

    status, _ = await asyncio.to_thread(bridge.request, "POST", "/v1/pipelines/rmq/resume")
    assert status in (200, 202, 204)
    await wait_for(lambda: broker.depth("ok") >= 200, bridge, timeout=30, what="200 results")
    assert await asyncio.to_thread(bridge.terminate) == 0
    assert len(server.calls) == 200
