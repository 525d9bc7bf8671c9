"""Kafka (tansu): the bridge SIGKILLed five times (in-memory broker); the broker
SIGKILLed and started again on the same durable (S3) storage.

Each scenario keeps a producer running at a steady rate for its whole length, so
messages keep arriving through the faults, and reads the result topics as they fill.
The function takes 50 ms and the window is at most 16, so work is in flight whenever
a fault lands.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.faults.conftest import OwnTansu
from tests.faults.harness import (
    Results,
    Webhook,
    bridge_rss,
    finish,
    holding_work,
    in_memory,
    wait_for,
)
from tests.faults.kafka_load import KafkaFeed, bridge_config, collect_results, kafka_sink
from tests.faults.report import Row
from tests.integration.kafka.tansu import TEST_CONSUMER_SETTINGS
from tests.support.bridge import BridgeProcess
from tests.support.function_server import Call, FunctionServer, Reply

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4
WINDOW = 16
STALLED = 40
"""Messages sent (past the feeder's) to stall the function when the broker dies."""
STALL_S = 0.6
"""How long those take: they end while the broker is down, before the consumer's
session times out (``FAST_REJOIN``), so their offsets are committed without a broker."""
FAST_REJOIN = {"session.timeout.ms": 2000, "heartbeat.interval.ms": 500}
"""A SIGKILLed member holds its partitions until its session times out: keep it short."""
SEED = int(os.environ.get("FAULT_SEED", str(random.randrange(1 << 30))))
BROKER_DOWN_S = float(os.environ.get("FAULT_BROKER_DOWN_S", "5"))


class Work:
    """The function: 50 ms per event, or ``stall`` seconds while that is set."""

    def __init__(self) -> None:
        self.stall = 0.0

    def __call__(self, call: Call) -> Reply:
        return Reply(200, {"i": call.data["i"]}, delay=self.stall or 0.05)


@dataclass
class KafkaRun:
    topic: str
    group: str
    failures_topic: str
    bridge: BridgeProcess
    fn: FunctionServer
    work: Work


async def kafka_pipeline(
    tansu: OwnTansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
    name: str,
    on_success: Callable[[OwnTansu], str],
) -> KafkaRun:
    """Topics, a function server and a started bridge whose failures go to a topic."""
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique(name), PARTITIONS)
    failed = await asyncio.to_thread(tansu.create_topic, tansu.unique(f"{name}-failed"), 1)
    group = tansu.unique("group")
    work = Work()
    fn = await function_server(work).start()
    bridge = bridge_process(
        bridge_config(
            tansu,
            name=name,
            topic=topic,
            group=group,
            function_url=fn.url,
            on_success=on_success(tansu),
            on_failure=kafka_sink(tansu, failed),
            settings={**TEST_CONSUMER_SETTINGS, **FAST_REJOIN},
        )
    )
    await asyncio.to_thread(bridge.start)
    return KafkaRun(topic, group, failed, bridge, fn, work)


def end_offsets(ids: list[str]) -> dict[int, int]:
    """Per partition, one past the highest offset among ``topic/partition/offset`` ids."""
    ends: dict[int, int] = {}
    for event_id in ids:
        _, partition, offset = event_id.rsplit("/", 2)
        ends[int(partition)] = max(ends.get(int(partition), 0), int(offset) + 1)
    return ends


async def committed_up_to(tansu: OwnTansu, run: KafkaRun, want: dict[int, int]) -> None:
    """Wait until the group's commits reached ``want`` (no commit left in flight)."""
    deadline = time.monotonic() + 30
    while (
        got := await asyncio.to_thread(tansu.committed, run.group, run.topic, PARTITIONS)
    ) != want:
        assert time.monotonic() < deadline, f"committed offsets {got}, expected {want}"
        await asyncio.sleep(0.2)


def repeated_calls(fn: FunctionServer) -> int:
    """Invocations beyond the first per event: work redone after a fault."""
    return sum(n - 1 for n in Counter(c.event_id for c in fn.calls).values())


@pytest.mark.timeout(180)
async def test_kill_9_five_times_loses_nothing(
    memory_tansu: OwnTansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
    fault_report: list[Row],
) -> None:
    """SIGKILL the bridge at five random moments under load, restarting it each time.
    Only messages in the bridge's hands at a kill may get a second result."""
    rng = random.Random(SEED)
    total, rate, name = 5000, 125.0, "kill9"
    ok = await asyncio.to_thread(
        memory_tansu.create_topic, memory_tansu.unique(f"{name}-ok"), PARTITIONS
    )
    run = await kafka_pipeline(
        memory_tansu, function_server, bridge_process, name, lambda t: kafka_sink(t, ok)
    )
    bridge = run.bridge
    rss_base = bridge_rss(bridge)
    results = Results()
    topics = {ok: PARTITIONS, run.failures_topic: 1}
    collector = collect_results(memory_tansu, topics, results).start()
    feed = KafkaFeed(memory_tansu, run.topic, PARTITIONS)
    feeder = feed.feeder(total=total, rate=rate).start()

    bound = 0
    restarts: list[float] = []
    moment = time.monotonic()
    for _ in range(5):
        # Each kill lands at a random moment once the bridge is processing again.
        await wait_for(
            lambda: results.first_after(moment) is not None,  # noqa: B023
            timeout=60,
            what="results after the (re)start",
            bridge=bridge,
            pipeline=name,
            collector=collector,
        )
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        assert not feeder.done, "the load ended before the fifth kill: make it longer"
        bound += await holding_work(bridge, name)
        await asyncio.to_thread(bridge.kill)
        await asyncio.to_thread(bridge.start)
        moment = time.monotonic()
        restarts.append(moment)
    await finish(
        scenario="kill -9 x5",
        broker="kafka",
        name=name,
        bridge=bridge,
        feeder=feeder,
        results=results,
        collector=collector,
        fault_end=restarts[-1],
        bound=bound,
        rss_base=rss_base,
        report=fault_report,
        note=lambda: (
            f"seed {SEED}; bound = tasks in the bridge's hands at the 5 kills; restart to "
            f"first result {max(results.first_after(t) or 0.0 for t in restarts):.1f}s "
            f"at worst; {repeated_calls(run.fn)} invocations repeated"
        ),
    )
    assert not results.kinds, f"unexpected failures: {list(results.kinds.items())[:5]}"
    assert bridge.starts == 6


@pytest.mark.timeout(180)
async def test_broker_killed_and_restarted_loses_nothing(
    durable_tansu: OwnTansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
    fault_report: list[Row],
) -> None:
    """SIGKILL tansu mid-run, keep it down ``FAULT_BROKER_DOWN_S`` (5 s), start it again
    on the same port and storage. The bridge rides it out (no restart of its own) and
    every message accepted before and after gets one result; its group's commits
    reach the end of every partition.

    Results go to a webhook, failures to a topic on the same broker. The webhook keeps
    taking results during the outage, so the bridge keeps finishing work and has
    offsets to commit while the group coordinator is gone."""
    rng = random.Random(SEED)
    total, rate, name = 3000, 125.0, "brokerdown"
    results = Results()
    hook = await function_server(Webhook(results)).start()
    run = await kafka_pipeline(
        durable_tansu,
        function_server,
        bridge_process,
        name,
        lambda _: json.dumps(Webhook.sink(hook)),
    )
    bridge = run.bridge
    rss_base = bridge_rss(bridge)
    collector = collect_results(durable_tansu, {run.failures_topic: 1}, results).start()
    feed = KafkaFeed(durable_tansu, run.topic, PARTITIONS)
    feeder = feed.feeder(total=total, rate=rate).start()

    started = time.monotonic()
    await wait_for(
        lambda: results.first_after(started) is not None,
        timeout=60,
        what="the first results",
        bridge=bridge,
        pipeline=name,
        collector=collector,
    )
    await asyncio.sleep(rng.uniform(2.0, 5.0))
    # tansu loses or renumbers records whose produce request is in flight at a SIGKILL:
    # hold the test's producer (not the bridge) still around the kill.
    await feeder.pause()
    feeder.accept(await asyncio.to_thread(feed.quiesce))
    # The kill lands on invocations that end while the broker is down: the bridge then
    # has results delivered (to the webhook) and offsets to commit without a broker.
    await wait_for(lambda: in_memory(bridge, name) == 0, timeout=30, what="an idle bridge")
    await committed_up_to(durable_tansu, run, end_offsets(feeder.ids()))
    run.work.stall = STALL_S
    calls = len(run.fn.calls)
    feeder.accept(await asyncio.to_thread(feed.send, total, STALLED))
    feeder.accept(await asyncio.to_thread(feed.quiesce))
    await wait_for(
        lambda: len(run.fn.calls) >= calls + WINDOW, timeout=30, what="stalled invocations"
    )
    bound = await asyncio.to_thread(in_memory, bridge, name)
    await asyncio.to_thread(durable_tansu.kill)
    run.work.stall = 0.0
    await asyncio.sleep(BROKER_DOWN_S)
    assert not feeder.done, "the load ended before the broker came back: make it longer"
    await asyncio.to_thread(durable_tansu.start)
    back = time.monotonic()
    feeder.resume()
    ids = await feeder.join()
    await finish(
        scenario=f"broker kill -9, down {BROKER_DOWN_S:g}s",
        broker="kafka",
        name=name,
        bridge=bridge,
        feeder=feeder,
        results=results,
        collector=collector,
        fault_end=back,
        bound=bound,
        rss_base=rss_base,
        report=fault_report,
        note=lambda: (
            f"seed {SEED}; tansu on S3 (moto) storage; bound = tasks in the bridge's hands "
            f"at the kill; {repeated_calls(run.fn)} invocations repeated; "
            f"{feed.misreported} acks without their record's offset"
        ),
    )
    assert not results.kinds, f"unexpected failures: {list(results.kinds.items())[:5]}"
    assert bridge.starts == 1
    await committed_up_to(durable_tansu, run, end_offsets(ids))
