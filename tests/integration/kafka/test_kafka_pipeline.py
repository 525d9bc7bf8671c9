"""``bridge run`` subprocesses consuming from tansu, invoking a real function server and
producing results back to tansu (issue 3)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kafka.tansu import Produced, Record, Tansu, pipeline_config
from tests.support.bridge import BridgeProcess
from tests.support.function_server import Call, FunctionServer, Reply

pytestmark = [pytest.mark.kafka, pytest.mark.e2e]

STRUCTURED = b"application/cloudevents+json"
MODE_100K = "binary"


async def eventually(
    check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``check`` (sync, cheap) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


async def committed_equals(
    tansu: Tansu, group: str, topic: str, partitions: int, want: dict[int, int], timeout: float
) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.to_thread(tansu.committed, group, topic, partitions)
        if got == want:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"committed offsets {got} != {want}")
        await asyncio.sleep(0.25)


JSON_HEADERS = [("content-type", b"application/json")]


def keyed_records(count: int, keys: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """``count`` JSON records over ``keys`` keys; each carries its key's sequence number."""
    seq: Counter[str] = Counter()
    records = []
    for i in range(count):
        key = f"k{i % keys}"
        value = json.dumps({"key": key, "seq": seq[key]}).encode()
        records.append((key.encode(), value, JSON_HEADERS))
        seq[key] += 1
    return records


def wrapped_ids(topic: str, produced: Produced) -> list[str]:
    return [f"{topic}/{p}/{o}" for p, o in produced.placed]


def metric(bridge: BridgeProcess, name: str) -> float:
    status, text = bridge.get("/metrics")
    if status != 200 or not isinstance(text, str):
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def start(bridge: BridgeProcess) -> BridgeProcess:
    """Start without blocking the loop (the function server lives on it)."""
    return await asyncio.to_thread(bridge.start)


# --------------------------------------------------------------------------- 100k


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_100k_messages_get_exactly_one_result_each_in_key_order(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """100,000 messages, 8 partitions, 1,000 keys, binary mode (about 55 s on two cores;
    set ``MODE_100K = "batch"`` for about 30 s): exactly one result per message,
    per-key order at the function, and the committed offsets end at the end offsets."""
    total, keys, partitions = 100_000, 1_000, 8
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("orders"), partitions)
    results = await asyncio.to_thread(tansu.create_topic, tansu.unique("results"), partitions)
    group = tansu.unique("group")
    records = keyed_records(total, keys)
    produced = await asyncio.to_thread(tansu.produce, topic, records)
    assert sum(produced.counts.values()) == total
    ids = wrapped_ids(topic, produced)

    fn = await function_server().start()
    bridge = bridge_process(
        pipeline_config(
            tansu=tansu,
            name="orders",
            topic=topic,
            group=group,
            function_url=fn.url,
            results=results,
            mode=MODE_100K,
            partition_buffer=500,  # below what the core takes in: pause/resume happens
        )
    )
    started = time.monotonic()
    await start(bridge)
    await eventually(lambda: len(fn.calls) >= total, 240, "every message to reach the function")
    elapsed = time.monotonic() - started
    await committed_equals(tansu, group, topic, partitions, produced.counts, timeout=30)
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    print(f"\n100k: {total / elapsed:.0f} messages/s through bridge run ({MODE_100K} mode)")

    # Per key, the function saw strictly increasing sequence numbers, all of them.
    seen: dict[str, list[int]] = defaultdict(list)
    for call in fn.calls:
        seen[call.data["key"]].append(call.data["seq"])
        assert call.key == call.data["key"]  # the record key became partitionkey
    assert len(seen) == keys
    for key, seqs in seen.items():
        assert seqs == list(range(total // keys)), f"key {key}: {seqs[:10]}..."

    # Exactly one result per message, keyed by the message's key.
    out = await asyncio.to_thread(tansu.read, results, partitions, total, 60)
    subjects = Counter(r.header("ce_subject") for r in out)
    assert len(out) == total, f"{len(out)} results for {total} messages"
    assert set(subjects) == set(ids)
    assert max(subjects.values()) == 1
    key_of = {ids[i]: records[i][0] for i in range(total)}
    assert all(r.key == key_of[r.header("ce_subject") or ""] for r in out)
    assert {r.header("ce_type") for r in out} == {"bridge.task.succeeded"}

    # And the commits stayed at the end after shutdown.
    final = await asyncio.to_thread(tansu.committed, group, topic, partitions)
    assert final == produced.counts


# --------------------------------------------------------------------------- rebalance + kill


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_second_process_joins_then_first_is_killed_nothing_lost(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
    tmp_path: Path,
) -> None:
    """Two ``bridge run`` processes in one group: B joins mid-run, A is SIGKILLed later.
    Every message gets a result; the only duplicates are messages A had not committed
    when it died."""
    total, keys, partitions = 20_000, 200, 8
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("orders"), partitions)
    results = await asyncio.to_thread(tansu.create_topic, tansu.unique("results"), partitions)
    group = tansu.unique("group")
    produced = await asyncio.to_thread(tansu.produce, topic, keyed_records(total, keys))
    ids = wrapped_ids(topic, produced)
    fn = await function_server(lambda call: Reply(200, {"ok": True}, delay=0.002)).start()

    def config(name: str) -> str:
        return pipeline_config(
            tansu=tansu,
            name=name,
            topic=topic,
            group=group,
            function_url=fn.url,
            results=results,
            concurrency="{initial: 8, min: 1, max: 32}",
        )

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = bridge_process(config("kafka-a"), workdir=tmp_path / "a")
    b = bridge_process(config("kafka-b"), workdir=tmp_path / "b")
    await start(a)
    unique = lambda: len({c.event_id for c in fn.calls})  # noqa: E731
    await eventually(lambda: unique() >= total * 0.15, 120, "A to process 15%")
    await start(b)
    await eventually(
        lambda: metric(b, "bridge_messages_received_total") > 0, 60, "B to take partitions"
    )
    await eventually(lambda: unique() >= total * 0.5, 120, "half of the messages")
    snapshot = await asyncio.to_thread(tansu.committed, group, topic, partitions)
    await asyncio.to_thread(a.kill)
    killed_at = unique()

    await eventually(lambda: unique() >= total, 120, "every message to reach the function")
    await committed_equals(tansu, group, topic, partitions, produced.counts, timeout=60)
    assert await asyncio.to_thread(b.terminate) == 0, b.log()

    out = await asyncio.to_thread(tansu.read, results, partitions, total, 60)
    subjects = Counter(r.header("ce_subject") for r in out)
    missing = set(ids) - set(subjects)
    assert not missing, f"{len(missing)} messages have no result"
    duplicates = {s: n for s, n in subjects.items() if n > 1}
    by_source = Counter(r.header("ce_source") for r in out)
    print(
        f"\nrebalance+kill: {len(out)} results for {total} messages, "
        f"{sum(duplicates.values()) - len(duplicates)} duplicates "
        f"({len(duplicates)} messages); per process {dict(by_source)}; "
        f"{killed_at} done when A was killed"
    )
    assert by_source["/bridge/pipelines/kafka-a"] > 0
    assert by_source["/bridge/pipelines/kafka-b"] > 0
    # A duplicate can only be a message above what was committed before the kill.
    for subject in duplicates:
        assert subject is not None
        _, partition, offset = subject.rsplit("/", 2)
        assert int(offset) >= snapshot.get(int(partition), 0), subject


# --------------------------------------------------------------------------- failing key


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_failing_key_does_not_stop_other_keys_and_commits_stop_at_it(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """One key always fails (retryably): every other key still flows, and the commits
    of its partition advance up to that key's first message and no further."""
    total, keys, partitions = 2_000, 50, 4
    bad = "k7"
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("orders"), partitions)
    results = await asyncio.to_thread(tansu.create_topic, tansu.unique("results"), partitions)
    group = tansu.unique("group")
    records = keyed_records(total, keys)
    produced = await asyncio.to_thread(tansu.produce, topic, records)
    ids = wrapped_ids(topic, produced)
    bad_places = [produced.placed[i] for i, r in enumerate(records) if r[0] == bad.encode()]
    bad_partition = bad_places[0][0]
    first_bad = min(offset for _, offset in bad_places)
    good_ids = {ids[i] for i, r in enumerate(records) if r[0] != bad.encode()}

    def behaviour(call: Call) -> Reply:
        return Reply(500, {"error": "boom"}) if call.key == bad else Reply(200, {"ok": True})

    fn = await function_server(behaviour).start()
    bridge = bridge_process(
        pipeline_config(
            tansu=tansu,
            name="orders",
            topic=topic,
            group=group,
            function_url=fn.url,
            results=results,
            retry="{max_attempts: 1000, initial_backoff: 50ms, max_backoff: 200ms, max_age: 1h}",
            shutdown_timeout="1s",
        )
    )
    await start(bridge)
    succeeded = lambda: {c.event_id for c in fn.calls if c.key != bad}  # noqa: E731
    await eventually(lambda: succeeded() >= good_ids, 60, "every other key's messages")
    want = dict(produced.counts)
    want[bad_partition] = first_bad
    await committed_equals(tansu, group, topic, partitions, want, timeout=20)
    # It stays there while the bad key keeps failing.
    await asyncio.sleep(1.0)
    assert await asyncio.to_thread(tansu.committed, group, topic, partitions) == want
    assert {c.attempt for c in fn.calls if c.key == bad} - {1}, "the bad key was retried"
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    assert await asyncio.to_thread(tansu.committed, group, topic, partitions) == want

    out = await asyncio.to_thread(tansu.read, results, partitions, len(good_ids), 30)
    assert {r.header("ce_subject") for r in out} == good_ids


# --------------------------------------------------------------------------- CloudEvents


@pytest.mark.timeout(120)
async def test_cloudevents_keep_their_attributes_and_poison_goes_to_on_failure(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """Binary and structured CloudEvents keep their ids and attributes; a malformed one
    goes to ``on_failure`` with the reason and does not block its partition; a key
    that is not UTF-8 becomes hex."""
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("events"), 1)
    results = await asyncio.to_thread(tansu.create_topic, tansu.unique("results"), 1)
    dlq = await asyncio.to_thread(tansu.create_topic, tansu.unique("dlq"), 1)
    group = tansu.unique("group")
    binary_headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"ce-binary"),
        ("ce_source", b"/orders"),
        ("ce_type", b"order.created"),
        ("ce_tenant", b"acme"),
        ("content-type", b"application/json"),
    ]
    structured = {
        "specversion": "1.0",
        "id": "ce-structured",
        "source": "/orders",
        "type": "order.paid",
        "partitionkey": "s-key",
        "data": {"paid": True},
    }
    malformed = [("ce_specversion", b"1.0"), ("ce_id", b"ce-bad")]  # no source, no type
    records: list[tuple[bytes | None, bytes, Any]] = [
        (b"order-1", b'{"amount": 10}', binary_headers),
        (
            None,
            json.dumps(structured).encode(),
            [("content-type", b"application/cloudevents+json")],
        ),
        (b"order-2", b"{}", malformed),
        (b"\xff\xfe", b"plain", [("x-tenant", b"t1")]),
        (b"order-3", b"after the poison", None),
    ]
    produced = await asyncio.to_thread(tansu.produce, topic, records)
    fn = await function_server().start()
    bridge = bridge_process(
        pipeline_config(
            tansu=tansu,
            name="events",
            topic=topic,
            group=group,
            function_url=fn.url,
            results=results,
            failures=dlq,
        )
    )
    await start(bridge)
    await committed_equals(tansu, group, topic, 1, produced.counts, timeout=60)
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()

    calls = {c.event_id: c for c in fn.calls}
    plain_id, after_id = f"{topic}/0/3", f"{topic}/0/4"
    assert set(calls) == {"ce-binary", "ce-structured", plain_id, after_id}
    binary = calls["ce-binary"]
    assert binary.headers["ce-source"] == "/orders"
    assert binary.headers["ce-type"] == "order.created"
    assert binary.headers["ce-tenant"] == "acme"
    assert binary.key == "order-1"
    assert binary.data == {"amount": 10}
    assert calls["ce-structured"].key == "s-key"
    assert calls["ce-structured"].data == {"paid": True}
    assert calls[plain_id].key == "fffe"
    assert calls[plain_id].headers["ce-source"] == f"kafka://{topic}"
    assert calls[plain_id].headers["ce-type"] == "bridge.message"

    failures: list[Record] = await asyncio.to_thread(tansu.read, dlq, 1, 1, 30)
    assert len(failures) == 1
    failure = failures[0]
    assert failure.header("ce_type") == "bridge.task.failed"
    assert failure.header("ce_subject") == f"{topic}/0/2"
    error = failure.json()["error"]
    assert error["kind"] == "malformed_message"
    assert re.search(r"source|type", error["message"])
    ok = await asyncio.to_thread(tansu.read, results, 1, 4, 30)
    assert {r.header("ce_subject") for r in ok} == set(calls)


# --------------------------------------------------------------------------- pause


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_paused_pipeline_keeps_its_partitions_and_resumes_where_it_stopped(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """Paused longer than ``max.poll.interval.ms``, the consumer still polls (so it
    stays in the group) but fetches nothing; after resume every message produced
    meanwhile is processed once."""
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("orders"), 2)
    results = await asyncio.to_thread(tansu.create_topic, tansu.unique("results"), 2)
    group = tansu.unique("group")
    fn = await function_server().start()
    bridge = bridge_process(
        pipeline_config(
            tansu=tansu,
            name="orders",
            topic=topic,
            group=group,
            function_url=fn.url,
            results=results,
            settings={"max.poll.interval.ms": 6000},
        )
    )
    await start(bridge)
    first = await asyncio.to_thread(tansu.produce, topic, keyed_records(100, 10))
    await eventually(lambda: len(fn.calls) >= 100, 60, "the first 100 messages")
    status, _ = await asyncio.to_thread(bridge.request, "POST", "/v1/pipelines/orders/pause")
    assert status == 200
    records = keyed_records(200, 10)[100:]
    second = await asyncio.to_thread(tansu.produce, topic, records)
    await asyncio.sleep(8.0)  # > max.poll.interval.ms
    assert len(fn.calls) == 100
    status, _ = await asyncio.to_thread(bridge.request, "POST", "/v1/pipelines/orders/resume")
    assert status == 200
    await eventually(lambda: len(fn.calls) >= 200, 60, "the messages produced while paused")
    counts = {p: first.counts.get(p, 0) + second.counts.get(p, 0) for p in range(2)}
    await committed_equals(tansu, group, topic, 2, counts, timeout=20)
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    assert len({c.event_id for c in fn.calls}) == len(fn.calls) == 200
    log = bridge.log()
    assert "revoking" not in log.split("shutting down")[0], "left the group while paused"
    assert "lost" not in log
