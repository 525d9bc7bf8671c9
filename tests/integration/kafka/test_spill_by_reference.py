"""Spilling by reference on a real broker: the source hands a spilling tenant's
messages over undecoded, as references, commits past them once acked, and reads them
back by reference later (``isolation.spill_by_reference``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from connectors.kafka.reread import parse_reference, reference
from connectors.kafka.source import KafkaSource, consumer_config
from consumer_core.contracts import Delivery
from tests.integration.kafka.tansu import TEST_CONSUMER_SETTINGS, Tansu, pipeline_config
from tests.integration.kafka.test_kafka_pipeline import committed_equals, eventually, metric, start
from tests.support.bridge import BridgeProcess
from tests.support.function_server import Call, FunctionServer, Reply

pytestmark = pytest.mark.kafka


def record(n: int, tenant: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    headers = [
        ("ce_id", f"m{n}".encode()),
        ("ce_source", b"/test"),
        ("ce_type", b"order"),
        ("ce_specversion", b"1.0"),
        ("content-type", b"application/json"),
        ("x-tenant", tenant.encode()),
    ]
    return f"{tenant}-k".encode(), json.dumps({"n": n}).encode(), headers


def raw_tenant(key, headers):
    for name, value in headers or ():
        if name == "x-tenant":
            return value.decode()
    return None


def source_for(tansu: Tansu, topic: str) -> KafkaSource:
    config = consumer_config(
        bootstrap_servers=tansu.bootstrap,
        group_id=tansu.unique("g"),
        client_id="test",
        settings=TEST_CONSUMER_SETTINGS,
    )
    return KafkaSource(pipeline="p", config=config, topics=[topic], commit_interval=0.2)


async def receive_all(source: KafkaSource, n: int) -> list[Delivery]:
    """Receive until ``n`` messages came (a run of references counts its positions)."""
    got: list[Delivery] = []
    async with asyncio.timeout(60):
        while sum(len(d.positions) or 1 for d in got) < n:
            got.extend(await source.receive(100, 0.5))
    return got


def test_references_name_a_partition_and_offset():
    assert reference("orders.v1", 3, 42) == "orders.v1/3/42"
    assert parse_reference("orders.v1/3/42") == (("orders.v1", 3), 42)


async def test_a_spilling_tenants_messages_come_as_references_and_read_back(tansu: Tansu):
    topic = tansu.create_topic(tansu.unique("spill"), 1)
    tenants = ["A", "B", "A", "A", "B", "A"]
    await asyncio.to_thread(tansu.produce, topic, [record(n, t) for n, t in enumerate(tenants)])
    source = source_for(tansu, topic)
    spilling = {"A"}
    source.spill_by_reference(spilling, raw_tenant)
    await source.connect()
    try:
        got = await receive_all(source, len(tenants))  # B, the runs of A between: [0], [2, 3], [5]
        # A's messages are not decoded: runs of positions in a partition, no event
        runs = [(d.reference, d.tenant, d.positions) for d in got if d.reference]
        assert runs == [
            (f"{topic}/0", "A", [0]),
            (f"{topic}/0", "A", [2, 3]),
            (f"{topic}/0", "A", [5]),
        ]
        assert all(d.event is None for d in got if d.reference)
        decoded = [d.event.get_id() for d in got if d.reference is None and d.event]
        assert decoded == ["m1", "m4"]
        # acking a run means its references are stored: the commit passes them
        for delivery in got:
            await delivery.ack()
        await source.commit()
        committed = await asyncio.to_thread(tansu.committed, source.group_id, topic, 1)
        assert committed == {0: len(tenants)}

        # read back later, decoded, by reference; one past the end is reported missing
        wanted = [f"{topic}/0/{n}" for n in (0, 2, 3, 5)] + [f"{topic}/0/99"]
        back = await source.reread(wanted)
        assert sorted(back) == sorted(wanted[:-1])
        for ref, message in back.items():
            n = parse_reference(ref)[1]
            assert message.event is not None
            assert message.event.get_id() == f"m{n}"
            assert json.loads(message.raw) == {"n": n}
            assert message.key == "A-k"
            assert message.headers["x-tenant"] == "A"
        # reading back again (the rows were not deleted yet after a restart) works too
        again = await source.reread(wanted[:1])
        assert list(again) == wanted[:1]
    finally:
        await source.close()


async def test_the_flood_guard_sees_a_full_read_before_any_of_it_is_decoded(tansu: Tansu):
    """A read that brings all it asked for is shown to the flood guard, tenant by
    tenant, before decoding: a tenant the guard adds is taken by reference from that
    read on, so not one message of its flood is decoded first."""
    topic = tansu.create_topic(tansu.unique("spill"), 1)
    tenants = ["B"] * 5 + ["A"] * 300 + ["B"] * 5
    await asyncio.to_thread(tansu.produce, topic, [record(n, t) for n, t in enumerate(tenants)])
    source = source_for(tansu, topic)
    spilling: set[str] = set()
    seen: list[dict[str, int]] = []

    def guard(counts, size):
        assert sum(counts.values()) == size  # every tenant here can be told raw
        seen.append(dict(counts))
        if counts.get("A", 0) > size // 2:
            spilling.add("A")

    source.spill_by_reference(spilling, raw_tenant, guard)
    await source.connect()
    got: list[Delivery] = []
    try:
        async with asyncio.timeout(60):
            while sum(len(d.positions) or 1 for d in got) < len(tenants):
                # asks for no more than is there: every read but the last is full
                left = len(tenants) - sum(len(d.positions) or 1 for d in got)
                got.extend(await source.receive(min(100, left), 0.5))
        full_reads = [c for c in seen if sum(c.values()) == 100]
        assert full_reads, seen
        assert full_reads[0].get("A", 0) >= 90
        decoded = [d.event.get_id() for d in got if d.reference is None and d.event]
        assert all(tenants[int(i[1:])] == "B" for i in decoded), "no A message was decoded"
        assert sorted(decoded, key=lambda i: int(i[1:])) == [
            f"m{n}" for n, t in enumerate(tenants) if t == "B"
        ]
        positions = [p for d in got if d.reference for p in d.positions]
        assert positions == [n for n, t in enumerate(tenants) if t == "A"]
    finally:
        for delivery in got:
            await delivery.ack()
        await source.close()


async def test_a_tenant_from_the_key_is_told_without_building_the_headers(tansu: Tansu):
    """``reads_headers=False``: the source hands ``tenant_of`` no headers, on a full read
    (the flood guard's path) and on the others, and the references are the same."""
    topic = tansu.create_topic(tansu.unique("spill"), 1)
    tenants = ["B"] * 3 + ["A"] * 200 + ["B"] * 3 + ["A"] * 2
    await asyncio.to_thread(tansu.produce, topic, [record(n, t) for n, t in enumerate(tenants)])
    source = source_for(tansu, topic)
    asked: list[Any] = []

    def key_tenant(key, headers):
        asked.append(headers)
        return key.decode().split("-")[0]

    source.spill_by_reference({"A"}, key_tenant, lambda counts, size: None, reads_headers=False)
    await source.connect()
    got: list[Delivery] = []
    try:
        async with asyncio.timeout(60):
            while sum(len(d.positions) or 1 for d in got) < len(tenants):
                got.extend(await source.receive(100, 0.5))
        assert asked
        assert all(headers is None for headers in asked)
        positions = [p for d in got if d.reference for p in d.positions]
        assert positions == [n for n, t in enumerate(tenants) if t == "A"]
        decoded = [d.event.get_id() for d in got if d.reference is None and d.event]
        assert decoded == [f"m{n}" for n, t in enumerate(tenants) if t == "B"]
    finally:
        for delivery in got:
            await delivery.ack()
        await source.close()


async def test_a_tenant_that_stops_spilling_is_decoded_again(tansu: Tansu):
    topic = tansu.create_topic(tansu.unique("spill"), 1)
    await asyncio.to_thread(tansu.produce, topic, [record(n, "A") for n in range(4)])
    source = source_for(tansu, topic)
    spilling: set[str] = set()  # the core's live set: nobody spills yet
    source.spill_by_reference(spilling, raw_tenant)
    await source.connect()
    got: list[Delivery] = []
    more: list[Delivery] = []
    try:
        got = await receive_all(source, 4)
        assert all(d.reference is None and d.event is not None for d in got)
        spilling.add("A")
        await asyncio.to_thread(tansu.produce, topic, [record(n, "A") for n in range(4, 6)])
        more = await receive_all(source, 2)
        assert [(d.reference, d.positions) for d in more] == [(f"{topic}/0", [4, 5])]
    finally:
        for delivery in got + more:
            await delivery.ack()
        await source.close()


# --------------------------------------------------------------------------- end to end


def tenant_records(tenant: str, start: int, count: int, keys: int) -> list[Any]:
    """JSON records of ``tenant`` (header ``x-tenant``), each with its key's sequence."""
    records = []
    for i in range(start, start + count):
        key = f"{tenant}{i % keys}"
        body = json.dumps({"key": key, "seq": i // keys}).encode()
        records.append((key.encode(), body, [("x-tenant", tenant.encode())]))
    return records


class FailingA:
    """The function for the end-to-end tests: every call of tenant A fails (503, after
    ``delay`` seconds) while ``broken``; A's successful calls are kept in order."""

    def __init__(self, delay: float = 0.0) -> None:
        self.broken = True
        self.delay = delay
        self.succeeded: list[Call] = []

    def __call__(self, call: Call) -> Reply:
        if call.key is not None and call.key.startswith("A") and self.broken:
            return Reply(503, {"error": "down"}, delay=self.delay)
        if call.key is not None and call.key.startswith("A"):
            self.succeeded.append(call)
        return Reply(200, {"ok": True})

    def done(self) -> int:
        return len({c.event_id for c in self.succeeded})

    def seqs_by_key(self) -> dict[str, list[int]]:
        by_key: dict[str, list[int]] = {}
        for call in self.succeeded:
            by_key.setdefault(str(call.key), []).append(call.data["seq"])
        return by_key


async def isolating_bridge(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
    function: FailingA,
    *,
    topic: str,
    group: str,
    max_backoff: str,
    min_samples: int,
    failures: str | None = None,
    initial_backoff: str = "50ms",
) -> BridgeProcess:
    """A Kafka pipeline with tenants from ``x-tenant`` and isolation on (spilling after
    20 waiting tasks), calling ``function``."""
    results = await asyncio.to_thread(tansu.create_topic, tansu.unique("results"), 2)
    fn = await function_server(function).start()
    config = pipeline_config(
        tansu=tansu,
        name="mt",
        topic=topic,
        group=group,
        function_url=fn.url,
        results=results,
        failures=failures,
        retry=(
            f"{{max_attempts: 10000, initial_backoff: {initial_backoff},"
            f" max_backoff: {max_backoff},"
            " max_age: 1h}"
        ),
        shutdown_timeout="2s",
    )
    config += (
        "    tenant: {from: header, name: x-tenant}\n"
        f"    isolation: {{enabled: true, window: 5s, min_samples: {min_samples},"
        " spill_after: 20, idle_reclaim: 2s}\n"
    )
    return bridge_process(config)


def counts(partitions: int, *produced: Any) -> dict[int, int]:
    return {p: sum(x.counts.get(p, 0) for x in produced) for p in range(partitions)}


@dataclass
class SpilledA:
    """A bridge stopped while failing tenant A had spilled: by copy, then by reference."""

    bridge: BridgeProcess
    fn: FailingA
    topic: str
    group: str
    produced: list[Any]


async def park_a_and_stop(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
    *,
    partitions: int,
    keys: int,
    failures: str | None = None,
) -> SpilledA:
    """Tenant A fails, is isolated and spills: first its waiting tasks (copied), then its
    new arrivals (by reference). Every partition is committed to the end while A still
    fails; then the bridge stops with the rows parked."""
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("mt"), partitions)
    group = tansu.unique("group")
    fn = FailingA()
    bridge = await isolating_bridge(
        tansu, function_server, bridge_process, fn,
        topic=topic, group=group, max_backoff="200ms", min_samples=5, failures=failures,
    )  # fmt: skip
    first = tenant_records("B", 0, 20, keys) + tenant_records("A", 0, 60, keys)
    produced = await asyncio.to_thread(tansu.produce, topic, first)
    await start(bridge)
    await eventually(lambda: "tenant A spills" in bridge.log(), 60, "A spilling")
    # A's later arrivals come while it spills: parked as references
    more = await asyncio.to_thread(tansu.produce, topic, tenant_records("A", 60, 300, keys))
    await eventually(lambda: "spills by reference" in bridge.log(), 30, "spill by reference")
    want = counts(partitions, produced, more)
    await committed_equals(tansu, group, topic, partitions, want, timeout=30)
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    return SpilledA(bridge, fn, topic, group, [produced, more])


@pytest.mark.e2e
@pytest.mark.timeout(240)
async def test_parked_references_survive_a_restart_and_run_in_order(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """Tenant A fails, is isolated and spills: first its waiting tasks (copied), then its
    new arrivals (by reference). Every partition is committed to the end while A still
    fails. The bridge stops with the rows parked; restarted with A healthy, it reads the
    references back and runs every message of A once more, in order per key, with the
    messages that arrive after the restart behind them."""
    partitions, keys = 2, 3
    parked = await park_a_and_stop(
        tansu, function_server, bridge_process, partitions=partitions, keys=keys
    )
    bridge, fn, topic, group = parked.bridge, parked.fn, parked.topic, parked.group
    assert not fn.succeeded

    with contextlib.closing(sqlite3.connect(bridge.workdir / "state.db")) as db:
        kinds = dict(
            db.execute(
                "SELECT task_id LIKE 'ref:%', count(*) FROM parked WHERE tenant = 'A' GROUP BY 1"
            ).fetchall()
        )
    assert kinds.get(1, 0) >= 1, kinds  # rows of references...
    assert kinds.get(0, 0) >= 1, kinds  # ...after the copied tasks

    await start(bridge)
    # new messages of A arriving while its old ones are still parked (A still fails, so
    # only a few are loaded back) queue behind them: parked too, so committed
    later = await asyncio.to_thread(tansu.produce, topic, tenant_records("A", 360, 30, keys))
    want = counts(partitions, *parked.produced, later)
    await committed_equals(tansu, group, topic, partitions, want, timeout=30)
    fn.broken = False
    await eventually(lambda: fn.done() >= 390, 90, "all of A")
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    # none lost, each once, in order per key
    assert fn.done() == 390
    assert fn.seqs_by_key() == {f"A{k}": list(range(130)) for k in range(keys)}
    # and nothing was left parked
    with contextlib.closing(sqlite3.connect(bridge.workdir / "state.db")) as db:
        assert db.execute("SELECT count(*) FROM parked").fetchone() == (0,)


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_tasks_running_when_their_tenant_spills_do_not_hold_back_commits(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """A's calls take a second and then fail, so when A spills, the head task of every
    key of A is running. When those fail they wait for a retry still holding their
    Kafka messages: they are anchored in the store, so every partition commits to the
    end while A keeps failing. After A recovers everything runs, in order per key.

    The retry backoff is a few milliseconds: A is isolated by the tick after its third
    failure, and with 50-100 ms the heads could still be waiting for that retry then
    (they are parked with the rest, and nothing is left to anchor)."""
    partitions, keys = 2, 3
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("mt"), partitions)
    group = tansu.unique("group")
    fn = FailingA(delay=1.0)
    bridge = await isolating_bridge(
        tansu, function_server, bridge_process, fn,
        topic=topic, group=group, initial_backoff="1ms", max_backoff="5ms", min_samples=3,
    )  # fmt: skip
    records = tenant_records("B", 0, 20, keys) + tenant_records("A", 0, 90, keys)
    produced = await asyncio.to_thread(tansu.produce, topic, records)
    await start(bridge)
    await committed_equals(
        tansu, group, topic, partitions, counts(partitions, produced), timeout=40
    )
    assert "anchored in the store" in bridge.log()
    assert not fn.succeeded

    fn.broken = False
    await eventually(lambda: fn.done() >= 90, 60, "all of A")
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    assert fn.seqs_by_key() == {f"A{k}": list(range(30)) for k in range(keys)}


class SlowA(FailingA):
    """A's calls take ``delay`` seconds while ``broken`` (then none does); B's take
    ``b_delay``. Every call succeeds; A's are kept in the order they arrived."""

    def __init__(self, delay: float, b_delay: float) -> None:
        super().__init__(delay)
        self.b_delay = b_delay
        self.first_a: float | None = None
        """When (``time.monotonic()``) the first call of A arrived."""

    def __call__(self, call: Call) -> Reply:
        if call.key is not None and call.key.startswith("A"):
            if self.first_a is None:
                self.first_a = time.monotonic()
            self.succeeded.append(call)
            return Reply(200, {"ok": True}, delay=self.delay if self.broken else 0.0)
        return Reply(200, {"ok": True}, delay=self.b_delay)


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_calls_in_flight_of_a_spilling_tenant_do_not_hold_back_commits(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """A's calls take 8 s. Its first call per key is in flight when A is isolated and
    spills (the rest wait behind those keys, and are parked); after a second in flight
    each such task is anchored in the store and its message settled, so every partition
    commits to the end while those calls are still running. After A speeds up every
    message of A runs exactly once (the anchored copies join their running tasks, or
    find them finished), in order per key, and nothing stays parked."""
    partitions, keys, delay = 2, 3, 8.0
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("mt"), partitions)
    group = tansu.unique("group")
    fn = SlowA(delay=delay, b_delay=0.3)
    bridge = await isolating_bridge(
        tansu, function_server, bridge_process, fn,
        topic=topic, group=group, max_backoff="200ms", min_samples=5,
    )  # fmt: skip
    records = tenant_records("B", 0, 20, keys) + tenant_records("A", 0, 90, keys)
    produced = await asyncio.to_thread(tansu.produce, topic, records)
    await start(bridge)
    await eventually(lambda: fn.first_a is not None, 60, "A's first call")
    assert fn.first_a is not None
    # A's first calls return ``delay`` after they began: the commits must get to the
    # end before that (without anchoring they wait for those calls)
    before_a_returns = fn.first_a + delay - 0.5 - time.monotonic()
    await committed_equals(
        tansu, group, topic, partitions, counts(partitions, produced), timeout=before_a_returns
    )
    assert time.monotonic() < fn.first_a + delay
    assert "in a long call) anchored in the store" in bridge.log()

    fn.broken = False
    await eventually(lambda: fn.done() >= 90, 60, "all of A")

    def parked_rows() -> int:
        with contextlib.closing(sqlite3.connect(bridge.workdir / "state.db")) as db:
            return int(db.execute("SELECT count(*) FROM parked").fetchone()[0])

    # every anchored copy was loaded back and deleted: one run again would have called
    # the function before its row went
    await eventually(lambda: parked_rows() == 0, 30, "no rows left parked")
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    assert len(fn.succeeded) == 90, [c.event_id for c in fn.succeeded]
    assert fn.seqs_by_key() == {f"A{k}": list(range(30)) for k in range(keys)}
    assert parked_rows() == 0


@pytest.mark.e2e
@pytest.mark.timeout(240)
async def test_a_spilled_message_its_topic_no_longer_has_fails_as_expired(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """Rows of references whose records are gone when their turn comes (here the topic
    was deleted and created again while the bridge was stopped; in production, retention
    ran out first): each such task fails as ``expired``, naming its reference, and its
    failure reaches ``on_failure``. The copied rows still run, and nothing stays parked."""
    partitions = 2
    failures = await asyncio.to_thread(tansu.create_topic, tansu.unique("failures"), 1)
    parked = await park_a_and_stop(
        tansu, function_server, bridge_process, partitions=partitions, keys=3, failures=failures
    )
    bridge, fn, topic = parked.bridge, parked.fn, parked.topic

    with contextlib.closing(sqlite3.connect(bridge.workdir / "state.db")) as db:
        rows = db.execute("SELECT task_id, record FROM parked WHERE tenant = 'A'").fetchall()
    referenced = {
        f"{task_id[4:].rpartition('/')[0]}/{offset}"
        for task_id, doc in rows
        if task_id.startswith("ref:")
        for offset in json.loads(doc)["offsets"]
    }
    copied = sum(1 for task_id, _ in rows if not task_id.startswith("ref:"))
    assert referenced, rows
    assert copied, rows

    await asyncio.to_thread(tansu.recreate_topic, topic, partitions)
    fn.broken = False
    await start(bridge)
    records = await asyncio.to_thread(tansu.read, failures, 1, len(referenced), 90)
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    assert records, bridge.log()[-4000:]
    failed = {}
    for r in records:
        body = r.json()
        assert r.header("ce_type") == "bridge.task.failed"
        assert body["error"]["kind"] == "expired", body
        assert "was removed from the source" in body["error"]["message"]
        failed[body["event"]["id"]] = body
    assert set(failed) == referenced  # each gone message failed once, by its reference
    assert fn.done() == copied  # the copied rows ran: their messages were in the store
    assert bridge.log().count("is no longer in the source") == len(referenced)
    with contextlib.closing(sqlite3.connect(bridge.workdir / "state.db")) as db:
        assert db.execute("SELECT count(*) FROM parked").fetchone() == (0,)


@pytest.mark.e2e
@pytest.mark.timeout(180)
async def test_a_flood_spilled_by_reference_is_read_back_once(
    tansu: Tansu,
    function_server: Callable[..., FunctionServer],
    bridge_process: Callable[..., BridgeProcess],
) -> None:
    """A floods (many rows of references park at once) while its function is healthy but
    slower than the flood arrives. As its lane makes room, the refill reads back only the
    rows it loads: every message of A runs once, in order per key, and the source reads
    back no more messages than A parked by reference (a refill that read every fetched
    row's references, loading only the first, read the same messages again and again)."""
    partitions, keys, flood = 2, 20, 4000
    topic = await asyncio.to_thread(tansu.create_topic, tansu.unique("mt"), partitions)
    fn = FailingA(delay=0.005)
    fn.broken = False
    bridge = await isolating_bridge(
        tansu, function_server, bridge_process, fn,
        topic=topic, group=tansu.unique("group"), max_backoff="200ms", min_samples=5,
    )  # fmt: skip
    await start(bridge)
    await asyncio.to_thread(tansu.produce, topic, tenant_records("B", 0, 20, keys))
    await asyncio.to_thread(tansu.produce, topic, tenant_records("A", 0, flood, keys))
    await eventually(lambda: fn.done() >= flood, 120, "all of A")
    reread = await asyncio.to_thread(metric, bridge, "bridge_reread_messages_total")
    assert await asyncio.to_thread(bridge.terminate) == 0, bridge.log()
    assert "spills by reference" in bridge.log()
    assert fn.done() == flood
    per_key = flood // keys
    assert fn.seqs_by_key() == {f"A{k}": list(range(per_key)) for k in range(keys)}
    assert 0 < reread <= flood, reread
