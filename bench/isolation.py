"""Noisy-tenant scenarios on Kafka: do well-behaved tenants keep their throughput and
latency while tenant A misbehaves, with isolation on and off?

    .venv/bin/python -m bench.isolation [--seconds 20] [--rate 20] [--only isolated] [--floor]

Tenants A (noisy) and B..K (ten well-behaved) share one 4-partition topic; every tenant
produces ``--rate`` messages/s with 5 keys each. One function endpoint, whose behaviour
for A the scenario chooses:

* ``baseline``: A behaves like everyone else;
* ``failing``: A's function answers 503 for ``--outage`` seconds, then recovers;
* ``slow``: A's function takes 5 s per call for ``--outage`` seconds, then recovers;
* ``flood``: A sends 100x the messages of any other tenant, at once, at the start, from
  its own producer (as from its own clients) while B..K go on producing theirs.

For B..K it measures throughput (results/s over the run) and p99 latency (produce to
result at the webhook sink); for A that every message got a result, in order per key;
for the source that every partition's committed offset kept advancing while A was
stuck; and whether A's lane was reclaimed. With ``--floor``, a plain consumer in its own
process reads the topic beside the bridge: B..K's p99 there is the broker's own share.
The same runner backs
``tests/integration/kafka/test_isolation.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.support import free_port, start, stop, wait_http

PARTITIONS = 4
GOOD = [chr(c) for c in range(ord("B"), ord("K") + 1)]
KEYS_PER_TENANT = 5
LAG_SECONDS = 2.0
"""How far behind a partition's end (in seconds of its messages) its commits may be at
the end of A's trouble and still count as having kept advancing."""
SETTINGS = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000, "fetch.wait.max.ms": 10}

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{url: "sqlite:///state.db"}}
shutdown_timeout: 5s
pipelines:
  - name: mt
    source:
      type: kafka
      bootstrap_servers: "{bootstrap}"
      topics: [{topic}]
      group_id: {group}
      commit_interval: 500ms
      partition_buffer: 400
      settings: {settings}
    tenant: {{from: header, name: x-tenant}}
    target: {{url: "{function}", timeout: 30s}}
    concurrency: {{initial: 32, min: 1, max: 64}}
    retry: {{max_attempts: 1000, initial_backoff: 100ms, max_backoff: 2s, max_age: 1h}}
    isolation:
      enabled: {isolation}
      window: 10s
      min_samples: 10
      spill_after: 200
      idle_reclaim: 3s
    on_success: [{{type: webhook, url: "{webhook}"}}]
    on_failure: [{{type: webhook, url: "{webhook}"}}]
"""


@dataclass
class Outcome:
    scenario: str
    isolation: bool
    good_throughput: float
    good_p50_ms: float
    good_p99_ms: float
    a_sent: int
    a_done: int
    a_in_order: bool
    lost: int
    commits_advanced: bool | None
    reclaimed: bool | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    floor_p99_ms: float | None = None
    """B..K's p99 at a plain consumer of the same topic (``--floor``): the broker's share."""
    duplicated: int = 0
    """Result events beyond the first for one message (any tenant), until the bridge stops."""


class Harness:
    """A function endpoint and a result webhook, in this process's event loop."""

    def __init__(self) -> None:
        self.behaviour: Callable[[str], tuple[int, float]] = lambda tenant: (200, 0.0)
        self.results: dict[str, float] = {}  # message id -> arrival time
        self.duplicates = 0  # success results for a message that already had one
        self.subject_tenant: dict[str, str] = {}
        self.calls: dict[str, list[int]] = defaultdict(list)  # key -> seqs, first attempts
        self.port = free_port()
        self.runner: web.AppRunner | None = None
        self.arrived = asyncio.Event()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/fn", self.function)
        app.router.add_post("/results", self.webhook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def function(self, request: web.Request) -> web.Response:
        doc = json.loads(await request.read())
        tenant = doc["tenant"]
        status, delay = self.behaviour(tenant)
        if delay:
            await asyncio.sleep(delay)
        if status == 200 and request.headers.get("x-bridge-attempt"):
            self.calls[doc["key"]].append(doc["seq"])
        return web.json_response({"ok": doc["id"]}, status=status)

    async def webhook(self, request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        if event.get("type") == "bridge.task.succeeded":
            message_id = event["data"]["ok"]
            if message_id in self.results:
                self.duplicates += 1
            else:
                self.results[message_id] = time.time()
            self.arrived.set()
        return web.Response(status=200)


def _topic(bootstrap: str) -> str:
    name = f"mt-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=PARTITIONS)]).values():
        future.result(30)
    return name


class Feed:
    """Produces the tenants' messages; remembers when each was sent."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        # idempotent: a produce request that fails under load is retried, in order
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 2, "enable.idempotence": True}
        )
        self.refused: dict[str, str] = {}
        """Messages the broker never took (by id, with the reason): not the bridge's."""
        self.confirmed: set[str] = set()
        """Messages the broker acknowledged (their delivery report came back clean)."""
        self.sent: dict[str, float] = {}
        self.tenant_of: dict[str, str] = {}
        self.seq: dict[str, int] = defaultdict(int)

    def send(self, tenant: str, n: int, keys: int = KEYS_PER_TENANT) -> None:
        for _ in range(n):
            index = len(self.sent)
            key = f"{tenant}-k{index % keys}"
            seq = self.seq[key]
            self.seq[key] += 1
            message_id = f"{tenant}-{index}"
            now = time.time()
            body = {"id": message_id, "tenant": tenant, "key": key, "seq": seq, "sent": now}
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        json.dumps(body).encode(),
                        key=key.encode(),
                        headers=[("x-tenant", tenant.encode()), ("ce_id", message_id.encode()),
                                 ("ce_source", b"/bench"), ("ce_type", b"order"),
                                 ("ce_specversion", b"1.0"),
                                 ("content-type", b"application/json")],
                        on_delivery=self._report(message_id),
                    )  # fmt: skip
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.sent[message_id] = now
            self.tenant_of[message_id] = tenant
        self.producer.poll(0)

    def _report(self, message_id: str) -> Callable[[Any, Any], None]:
        def report(error: Any, _message: Any) -> None:
            if error is not None:
                self.refused[message_id] = str(error)
            else:
                self.confirmed.add(message_id)

        return report

    def flush(self) -> None:
        """Wait for every delivery report (up to 60 s). A message without one by then
        may never have reached the broker: it counts as refused, not as lost by the
        bridge (a client that gave up on it would say the same to its own caller)."""
        self.producer.flush(60)
        for message_id in self.sent:
            if message_id not in self.confirmed and message_id not in self.refused:
                self.refused[message_id] = "no delivery report from the broker within 60 s"


def committed(bootstrap: str, group: str, topic: str) -> tuple[list[int], list[int]]:
    """The group's committed offset and the end of every partition, in that order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in tps]
        parts = consumer.committed(tps, 10)
        return [max(p.offset, 0) for p in parts], ends
    finally:
        consumer.close()


def _kept_up(samples: list[tuple[list[int], list[int]]], rate: float) -> tuple[bool, list[str]]:
    """Whether the commits kept advancing through ``samples``: every partition's moved
    from the first sample to the last, and at the last none was further behind its end
    than what it receives in ``LAG_SECONDS`` (all tenants producing ``rate`` each).
    With the notes that show it."""
    (first, _), (last, ends) = samples[0], samples[-1]
    behind = [end - done for done, end in zip(last, ends, strict=True)]
    bound = LAG_SECONDS * rate * (len(GOOD) + 1) / PARTITIONS
    moved = all(b > a for a, b in zip(first, last, strict=True))
    notes = [
        f"committed offsets during the trouble: {first} -> {last}",
        f"behind the partitions' ends at the last sample: {behind} (at most {bound:.0f})",
    ]
    return moved and max(behind) <= bound, notes


def _status(port: int) -> dict[str, Any]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/pipelines", timeout=5) as r:
        return dict(json.loads(r.read())["pipelines"][0])


def _behaviour(scenario: str, trouble_until: float) -> Callable[[str], tuple[int, float]]:
    """What the function does for a tenant's call: (status, delay)."""

    def behaviour(tenant: str) -> tuple[int, float]:
        if tenant != "A" or time.time() > trouble_until:
            return 200, 0.0
        if scenario == "failing":
            return 503, 0.0
        if scenario == "slow":
            return 200, 5.0
        return 200, 0.0

    return behaviour


def _flood_producer(bootstrap: str, topic: str, n: int) -> subprocess.Popen[str]:
    """A's producer, in its own process (see ``bench.flood_producer``); it floods when
    told to go."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.flood_producer", bootstrap, topic, str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _flooded(producer: subprocess.Popen[str]) -> dict[str, Any]:
    """Start ``producer``'s flood and wait for its report."""
    report: dict[str, Any] = json.loads(producer.communicate("go\n", timeout=300)[0])
    return report


async def _until(harness: Harness, done: Callable[[], bool], seconds: float) -> None:
    """Wait (woken by each result) until ``done()`` or ``seconds`` passed."""
    deadline = time.time() + seconds
    while not done() and (remaining := deadline - time.time()) > 0:
        harness.arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(harness.arrived.wait(), min(remaining, 0.5))


async def _produce(
    feed: Feed, scenario: str, *, rate: float, seconds: float, started: float,
    trouble_until: float, sample: Callable[[], Awaitable[None]],
) -> None:  # fmt: skip
    """Every tenant's steady stream (A's too, unless it floods), sampling commits."""
    for tick in range(int(seconds * 10)):
        for tenant in GOOD + ([] if scenario == "flood" else ["A"]):
            due = int(rate * (tick + 1) / 10) - int(rate * tick / 10)
            if due:
                feed.send(tenant, due)
        feed.producer.poll(0)
        if tick % 10 == 5 and time.time() < trouble_until + 1 and scenario != "baseline":
            await sample()
        await asyncio.sleep(max(0.0, started + (tick + 1) / 10 - time.time()))
    feed.flush()


def _p99(ordered: list[float]) -> float:
    """The 99th percentile of ascending ``ordered`` (not empty), as the tables use it."""
    return ordered[int(len(ordered) * 0.99) - 1]


def _floor_reader(bootstrap: str, topic: str) -> subprocess.Popen[str]:
    reader = subprocess.Popen(
        [sys.executable, "-m", "bench.floor_reader", bootstrap, topic, str(PARTITIONS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert reader.stdout is not None
    reader.stdout.readline()  # "ready": assigned
    return reader


def _floor_arrivals(reader: subprocess.Popen[str]) -> dict[str, float]:
    """Stop ``reader``; when each message arrived there (epoch s), by id."""
    arrived: dict[str, float] = json.loads(reader.communicate("stop\n", timeout=60)[0])
    return arrived


def _floor_p99(arrived: dict[str, float], feed: Feed) -> float | None:
    """B..K's p99 from send to arrival at the plain consumer (ms)."""
    latencies = sorted(
        (arrived[m] - sent) * 1000
        for m, sent in feed.sent.items()
        if feed.tenant_of[m] != "A" and m in arrived
    )
    return _p99(latencies) if latencies else None


async def _reclaimed(port: int, seconds: float) -> bool:
    deadline = time.time() + seconds
    while True:
        status = await asyncio.to_thread(_status, port)
        if not status["isolated_tenants"] or time.time() > deadline:
            return not status["isolated_tenants"]
        await asyncio.sleep(0.5)  # polling another process: nothing to wait on here


def _outcome(
    scenario: str, isolation: bool, feed: Feed, harness: Harness, *, started: float,
    produced_until: float,
) -> Outcome:  # fmt: skip
    good_done = [m for m, t in feed.tenant_of.items() if t != "A" and m in harness.results]
    window_end = produced_until + 1.0  # B..K's results within the run, plus a short tail
    in_window = [m for m in good_done if harness.results[m] <= window_end]
    latencies = sorted((harness.results[m] - feed.sent[m]) * 1000 for m in good_done)
    a_ids = [m for m, t in feed.tenant_of.items() if t == "A"]
    return Outcome(
        scenario=scenario,
        isolation=isolation,
        good_throughput=len(in_window) / max(window_end - started, 0.001),
        good_p50_ms=statistics.median(latencies) if latencies else float("nan"),
        good_p99_ms=_p99(latencies) if latencies else float("nan"),
        a_sent=len(a_ids),
        a_done=sum(1 for m in a_ids if m in harness.results),
        a_in_order=all(seqs == sorted(seqs) for seqs in harness.calls.values()),
        lost=sum(1 for m in feed.sent if m not in harness.results and m not in feed.refused),
        commits_advanced=None,
        reclaimed=None,
        seconds=time.time() - started,
    )


async def run_scenario(
    scenario: str,
    *,
    bootstrap: str,
    isolation: bool,
    seconds: float = 20.0,
    rate: float = 20.0,
    outage: float = 8.0,
    work: Path,
    dump: Path | None = None,
    floor: bool = False,
) -> Outcome:
    harness = Harness()
    await harness.start()
    topic = _topic(bootstrap)
    group = f"mt-{uuid.uuid4().hex[:6]}"
    port = free_port()
    (work / "bridge.yaml").write_text(
        CONFIG.format(
            port=port,
            bootstrap=bootstrap,
            topic=topic,
            group=group,
            settings=json.dumps(SETTINGS),
            function=f"http://127.0.0.1:{harness.port}/fn",
            webhook=f"http://127.0.0.1:{harness.port}/results",
            isolation="true" if isolation else "false",
        )
    )
    bridge = start(
        [sys.executable, "-m", "consumer_core", "--log-level", "info", "run", "bridge.yaml"],
        cwd=work,
        log=work / "bridge.log",
    )
    feed = Feed(bootstrap, topic)
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/healthz")
        feed.send("B", 1)  # warm up: the group joins and the first message flows
        feed.flush()
        await _until(harness, lambda: bool(harness.results), 60)
        feed.sent.clear()  # the warm-up message is not part of the run
        feed.tenant_of.clear()
        reader = await asyncio.to_thread(_floor_reader, bootstrap, topic) if floor else None
        producer = (
            _flood_producer(bootstrap, topic, int(100 * rate * seconds))
            if scenario == "flood"
            else None
        )
        started = time.time()
        trouble_until = started + outage
        harness.behaviour = _behaviour(scenario, trouble_until)
        flood: asyncio.Future[dict[str, Any]] | None = None
        if producer is not None:
            # A's flood comes from its own client in its own process, as it would from
            # A's own producers. A flooding tenant has many keys: its own backend, not
            # its keys, limits it.
            flood = asyncio.ensure_future(asyncio.to_thread(_flooded, producer))
        offsets: list[tuple[list[int], list[int]]] = []

        async def sample() -> None:
            offsets.append(await asyncio.to_thread(committed, bootstrap, group, topic))

        await _produce(
            feed, scenario, rate=rate, seconds=seconds, started=started,
            trouble_until=trouble_until, sample=sample,
        )  # fmt: skip
        if flood is not None:
            report = await flood
            feed.sent.update(report["sent"])
            feed.tenant_of.update(dict.fromkeys(report["sent"], "A"))
            feed.refused.update(report["refused"])
        produced_until = time.time()
        patience = 60 + (100 * rate * seconds / 500 if scenario == "flood" else 0)
        await _until(harness, lambda: all(m in harness.results for m in feed.sent), patience)
        outcome = _outcome(
            scenario, isolation, feed, harness, started=started, produced_until=produced_until
        )
        floor_arrived: dict[str, float] = {}
        if reader is not None:
            floor_arrived = await asyncio.to_thread(_floor_arrivals, reader)
            outcome.floor_p99_ms = _floor_p99(floor_arrived, feed)
            if outcome.lost:
                lost = [m for m in feed.sent if m not in harness.results and m not in feed.refused]
                readable = sum(1 for m in lost if m in floor_arrived)
                outcome.notes.append(
                    f"of the {len(lost)} lost, {readable} were readable at the plain consumer"
                )
        if feed.refused:
            reasons = sorted(set(feed.refused.values()))[:3]
            outcome.notes.append(f"the broker refused {len(feed.refused)} messages: {reasons}")
        if dump is not None:
            with dump.open("a") as out:
                for m, sent in feed.sent.items():
                    done = harness.results.get(m)
                    latency = "" if done is None else f"{(done - sent) * 1000:.1f}"
                    seen = floor_arrived.get(m)
                    floor_ms = "" if seen is None else f"{(seen - sent) * 1000:.1f}"
                    tenant = feed.tenant_of[m]
                    out.write(
                        f"{scenario},{isolation},{tenant},{sent - started:.3f},{latency},{m},"
                        f"{floor_ms}\n"
                    )
        if len(offsets) >= 2:
            outcome.commits_advanced, notes = _kept_up(offsets, rate)
            outcome.notes.extend(notes)
        if isolation and scenario != "baseline":
            outcome.reclaimed = await _reclaimed(port, 15)
            log = (work / "bridge.log").read_text()
            outcome.notes.append(
                "A was isolated" if "tenant A isolated" in log else "A never isolated"
            )
            if "tenant A spills by reference" in log:
                outcome.notes.append("A spilled by reference")
        outcome.duplicated = harness.duplicates
        return outcome
    finally:
        stop(bridge)
        await harness.stop()


def table(outcomes: list[Outcome]) -> str:
    base = {o.isolation: o for o in outcomes if o.scenario == "baseline"}
    rows = [
        "| scenario | isolation | B..K msgs/s | vs baseline | B..K p50 ms | B..K p99 ms | p99 vs "
        "baseline | A done | lost | duplicated | commits advanced while A stuck | A reclaimed |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    floors = any(o.floor_p99_ms is not None for o in outcomes)
    if floors:
        rows[0] += " B..K p99 at a plain consumer ms |"
        rows[1] += "---:|"
    for o in outcomes:
        ref = base.get(o.isolation) or base.get(True) or o
        rows.append(
            f"| {o.scenario} | {'on' if o.isolation else 'off'} | {o.good_throughput:.0f} | "
            f"{o.good_throughput / ref.good_throughput:.0%} | {o.good_p50_ms:.0f} | "
            f"{o.good_p99_ms:.0f} | {o.good_p99_ms / ref.good_p99_ms:.1f}x | "
            f"{o.a_done}/{o.a_sent} | {o.lost} | {o.duplicated} | {_yes(o.commits_advanced)} | "
            f"{_yes(o.reclaimed)} |" + (f" {_ms(o.floor_p99_ms)} |" if floors else "")
        )
    return "\n".join(rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


async def main_async(args: argparse.Namespace) -> None:
    from bench.kafka_bench import start_tansu

    work = Path(tempfile.mkdtemp(prefix="isolation-"))
    tansu, bootstrap = start_tansu(work / "tansu.log")
    outcomes: list[Outcome] = []
    try:
        modes = {"isolated": [True], "shared": [False]}.get(args.only, [True, False])
        for isolation in modes:
            for scenario in args.scenarios:
                folder = work / f"{scenario}-{isolation}"
                folder.mkdir()
                outcome = await run_scenario(
                    scenario,
                    bootstrap=bootstrap,
                    isolation=isolation,
                    seconds=args.seconds,
                    rate=args.rate,
                    outage=args.outage,
                    work=folder,
                    dump=args.dump,
                    floor=args.floor,
                )
                outcomes.append(outcome)
                print(f"{scenario} isolation={isolation}: {outcome}", flush=True)
    finally:
        tansu.kill()
    print()
    print(table(outcomes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=20.0, help="msgs/s per tenant")
    parser.add_argument("--outage", type=float, default=8.0, help="seconds A misbehaves")
    parser.add_argument("--only", choices=("isolated", "shared"))
    parser.add_argument(
        "--dump",
        type=Path,
        help="append every message's scenario, isolation, tenant, send time (s from the "
        "start), latency (ms; empty if lost), id and, with --floor, latency at the plain "
        "consumer (ms) to this CSV file",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also read the topic with a plain consumer in its own process and show B..K's "
        "p99 there: how long the broker itself takes to make their records readable",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=("baseline", "failing", "slow", "flood"),
        default=["baseline", "failing", "slow", "flood"],
        help="which scenarios to run (default: all)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
