"""How each row of the benchmark suite is measured (``bench.suite`` runs them).

Kafka rows (``kafka_row``): the records are produced first, then the system is
started; its rate is taken between the first and the last result's CreateTime, and its
CPU over the same stretch. Then records are produced at half that rate for a few
seconds, and each result's CreateTime minus its source record's CreateTime is one
latency sample. The other rows reuse the measuring of ``bench.embedded_bench``,
``bench.rabbitmq_bench`` and ``bench.sqs_bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import multiprocessing
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from bench import embedded_bench, rabbitmq_bench, sqs_bench
from bench.kafka_bench import (
    KEYS,
    PAD,
    Feeder,
    Results,
    create_topics,
    run_bridge,
)
from bench.report import Row
from bench.support import (
    ROOT,
    cpu_seconds,
    free_port,
    function_server,
    rss_mb,
    start,
    stop,
    wait_http,
)

FASTSTREAM_PIP = "faststream[kafka]"
LATENCY_CAP = 10_000.0
"""Highest rate (records/s) the feeder is asked for in a latency phase: the feeder, the
result reader, the system, the function and tansu share the machine's two cores."""
FLOOR_RATE = 1_000.0
"""Rate (records/s) at which the raw consumer measures the broker's latency floor."""
FEEDER_LINGER_MS = 5
"""The latency phase's producer batches for 5 ms: one produce request per record
(``linger.ms=1``) costs tansu more CPU than everything else at a few thousand/s."""


class PacedFeeder(Feeder):
    """``Feeder`` whose producer lingers ``FEEDER_LINGER_MS`` (in every row's floor)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(bootstrap, topic)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": FEEDER_LINGER_MS})


@dataclass(frozen=True, kw_only=True)
class Scale:
    """How much work each row does (``--quick`` shrinks it)."""

    messages: int
    raw_messages: int
    sequential_messages: int
    latency_seconds: float
    wrk_seconds: int
    sqs_messages: int
    backlog: int
    backlog_seconds: float


@dataclass
class Bench:
    """What every row shares: the broker, the function, the options."""

    args: argparse.Namespace
    scale: Scale
    bootstrap: str
    fn: subprocess.Popen[bytes]
    url: str
    work: Path
    broker: subprocess.Popen[bytes] | None = None

    def take_profile(self) -> str | None:
        """The ``--profile`` path the first time, then ``None`` (one profile per run)."""
        path, self.args.profile = self.args.profile, None
        return str(path) if path else None


def launch_peer(kind: str, *args: str, work: Path) -> subprocess.Popen[bytes]:
    """``bench.peers``' ``kind`` in its own process, logging to ``work``."""
    command = [sys.executable, "-m", "bench.peers", kind, *args]
    return start(command, cwd=work, log=work / f"{kind}.log")


# --------------------------------------------------------------------------- kafka rows


def fn_cpu(bench: Bench) -> float:
    return cpu_seconds(bench.fn.pid)


def wait_results(
    results: Results, n: int, proc: subprocess.Popen[bytes], timeout: float, logs: Path
) -> None:
    """Wait until ``results`` holds ``n``; fail early (with the logs) if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while len(results.seen) < n:
        if proc.poll() is not None:
            tail = " | ".join(p.read_text()[-1500:] for p in logs.glob("*.log"))
            raise RuntimeError(f"exited with {proc.returncode}: {tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(results.seen)} of {n} results after {timeout:.0f}s")
        time.sleep(0.01)


def py_spy() -> str | None:
    """The py-spy beside this Python (the venv's), if installed."""
    return shutil.which("py-spy", path=str(Path(sys.executable).parent))


@contextlib.contextmanager
def profiled(pid: int, path: str | None) -> Iterator[None]:
    """``py-spy record`` on ``pid`` for 6 s, started now, waited for at the end."""
    if not path:
        yield
        return
    spy = py_spy() or "py-spy"
    proc = subprocess.Popen(
        [spy, "record", "-p", str(pid), "-d", "6", "-f", "raw", "-o", path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.wait(60)


def drop_topics(bootstrap: str, *topics: str) -> None:
    """Free tansu's memory (best effort)."""
    with contextlib.suppress(Exception):
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 2})
        for future in admin.delete_topics(list(topics)).values():
            future.result(10)


def kafka_row(
    bench: Bench,
    row: Row,
    launch: Callable[[str, str, Path], subprocess.Popen[bytes]],
    *,
    n: int,
    work_dir: str | None = None,
    profile: str | None = None,
) -> Row:
    """Drain a backlog of ``n`` records through ``launch``'s process, then measure added
    latency at half the rate it reached. For the bridge, the task store's own stamps
    (received -> delivered) of the latency phase's tasks give its in-bridge latency."""
    suffix = uuid.uuid4().hex[:6]
    topic, out = f"in-{suffix}", f"out-{suffix}"
    create_topics(bench.bootstrap, topic, out)
    feeder = PacedFeeder(bench.bootstrap, topic)
    feeder.send(n)
    feeder.flush()
    results = Results(bench.bootstrap, out).start()
    try:
        with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
            proc = launch(topic, out, Path(tmp))
            try:
                row, paced_at = _drain_and_pace(
                    bench, row, proc, feeder, results, n, Path(tmp), profile
                )
            finally:
                stop(proc)
            subjects = [subject for subject, _ in results.seen]
            duplicated = len(subjects) - len(set(subjects))
            row = replace(row, note=f"{row.note}; results duplicated: {duplicated}")
            return in_bridge(row, Path(tmp) / "state.db", paced_at)
    finally:
        results.stop()
        drop_topics(bench.bootstrap, topic, out)


def _drain_and_pace(
    bench: Bench,
    row: Row,
    proc: subprocess.Popen[bytes],
    feeder: Feeder,
    results: Results,
    n: int,
    logs: Path,
    profile: str | None,
) -> tuple[Row, float]:
    wait_results(results, 1, proc, 120, logs)
    done0, cpu0, fn0 = len(results.seen), cpu_seconds(proc.pid), fn_cpu(bench)
    broker0, drain0 = _cpu(bench.broker), time.monotonic()
    with profiled(proc.pid, profile):
        wait_results(results, n, proc, 600, logs)
    counted = len(results.seen) - done0
    cpu, fn = cpu_seconds(proc.pid) - cpu0, fn_cpu(bench) - fn0
    drained = time.monotonic() - drain0
    times = [ts for _, ts in results.seen[:n]]
    span = (max(times) - min(times)) / 1000
    row = replace(
        row,
        per_s=n / span if span > 0 else None,
        cpu_10k=cpu / counted * 10_000 if counted else None,
        fn_cpu_10k=fn / counted * 10_000 if counted else None,
    )
    if bench.broker is not None and drained > 0:
        broker = _cpu(bench.broker) - broker0
        row = replace(
            row,
            note=f"{row.note}; CPU while draining: broker {broker / drained:.0%}, "
            f"this system {cpu / drained:.0%}, function {fn / drained:.0%} of a core",
        )
    paced_at = time.time()
    if row.per_s and bench.scale.latency_seconds > 0:
        rate = min(row.per_s / 2, LATENCY_CAP)
        seconds = bench.scale.latency_seconds
        broker0, system0 = _cpu(bench.broker), cpu_seconds(proc.pid)
        started = time.monotonic()
        feeder.paced(rate, seconds)
        spent = time.monotonic() - started
        if bench.broker is not None:
            broker, system = _cpu(bench.broker) - broker0, cpu_seconds(proc.pid) - system0
            row = replace(
                row,
                note=f"{row.note}; CPU while paced: broker {broker / spent:.0%}, "
                f"this system {system / spent:.0%} of a core",
            )
        expected = n + int(rate * seconds)
        wait_results(results, expected, proc, 60 + expected / rate, logs)
        latencies = [
            ts - feeder.sent_at[subject]
            for subject, ts in results.seen[n:]
            if subject in feeder.sent_at
        ]
        if len(latencies) > 1:
            q = statistics.quantiles(latencies, n=100)
            row = replace(row, p50_ms=q[49], p99_ms=q[98], latency_rate=rate)
    return replace(row, rss_mb=rss_mb(proc.pid)), paced_at


def _cpu(proc: subprocess.Popen[bytes] | None) -> float:
    return 0.0 if proc is None else cpu_seconds(proc.pid)


STAGES = (
    ("queued", "received", "started"),
    ("running", "started", "finished"),
    ("delivery", "finished", "delivered"),
)
"""The stages of the in-bridge split: waiting for a slot (or its key), the call, and the
result's way out (sink, store, ack)."""


def in_bridge(row: Row, db: Path, since: float) -> Row:
    """Add the quantiles of received -> delivered (ms) of tasks received after ``since``,
    and the p50 of each of ``STAGES``."""
    if not db.exists():
        return row
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        docs = [
            json.loads(doc)
            for (doc,) in conn.execute(
                "SELECT doc FROM tasks WHERE received >= ? AND finished IS NOT NULL", (since,)
            )
        ]
    stamps = [d["timestamps"] for d in docs]
    spans = [(s["delivered"] - s["received"]) * 1000 for s in stamps if s["delivered"]]
    if len(spans) < 2:
        return row
    q = statistics.quantiles(spans, n=100)
    split = []
    for stage, begin, end in STAGES:
        values = [(s[end] - s[begin]) * 1000 for s in stamps if s[begin] and s[end]]
        if values:
            split.append(f"{stage} {statistics.median(values):.1f}")
    return replace(
        row,
        note=f"{row.note}; in-bridge p50 {q[49]:.1f}, p99 {q[98]:.1f} ms "
        f"(p50 by stage: {', '.join(split)})",
    )


def raw_row(bench: Bench) -> Row:
    """``bench.peers raw`` drains a topic of the same records, then reports the latency
    floor of broker and feeder while records are produced at ``FLOOR_RATE``."""
    n, seconds = bench.scale.raw_messages, bench.scale.latency_seconds
    topic = f"raw-{uuid.uuid4().hex[:6]}"
    create_topics(bench.bootstrap, topic)
    feeder = PacedFeeder(bench.bootstrap, topic)
    feeder.send(n)
    feeder.flush()
    command = [sys.executable, "-m", "bench.peers", "raw", bench.bootstrap, topic, str(n)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        with subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        ) as proc:
            stdin, stdout = proc.stdin, proc.stdout
            if stdin is None or stdout is None:
                raise RuntimeError("no pipes to bench.peers raw")
            r = json.loads(stdout.readline())
            per_s = r["counted"] / r["wall"]
            rate = FLOOR_RATE
            stdin.write(f"{int(rate * seconds)}\n")
            stdin.flush()
            feeder.paced(rate, seconds)
            q = json.loads(stdout.readline())
    finally:
        drop_topics(bench.bootstrap, topic)
    return Row(
        name="raw consume",
        kind="ceiling",
        per_s=per_s,
        cpu_10k=r["cpu"] / r["counted"] * 10_000,
        rss_mb=r["rss_mb"],
        p50_ms=q["p50_ms"],
        p99_ms=q["p99_ms"],
        latency_rate=rate,
        note=f"{n:,} records; latency: the floor under every row",
    )


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["ce-specversion"] = "1.0"
wrk.headers["ce-id"] = "wrk"
wrk.headers["ce-source"] = "/wrk"
wrk.headers["ce-type"] = "bridge.message"
"""


def wrk_row(bench: Bench) -> Row:
    """The function server alone: ``wrk -t1 -c64`` POSTing the same ~1 KiB JSON body."""
    row = Row(name="function (wrk)", kind="ceiling")
    if shutil.which("wrk") is None:
        return replace(row, note="wrk missing: apt-get install -y wrk (or pass --install)")
    script = bench.work / "post.lua"
    body = json.dumps({"key": "k1", "seq": 0, "pad": PAD})
    script.write_text(WRK_SCRIPT.format(body=body))
    seconds = bench.scale.wrk_seconds
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    fn0 = fn_cpu(bench)
    done = subprocess.run(
        ["wrk", "-t1", "-c64", f"-d{seconds}s", "-s", str(script), bench.url],
        capture_output=True,
        text=True,
        check=True,
    )
    fn = fn_cpu(bench) - fn0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = per_s = 0.0
    for line in done.stdout.splitlines():
        if " requests in " in line:
            requests = float(line.split()[0])
        if line.startswith("Requests/sec:"):
            per_s = float(line.split()[1])
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return replace(
        row,
        per_s=per_s,
        cpu_10k=wrk_cpu / requests * 10_000 if requests else None,
        fn_cpu_10k=fn / requests * 10_000 if requests else None,
        note=f"{len(body)} B JSON POSTs, {seconds}s; CPU is wrk's",
    )


# --------------------------------------------------------------------------- other sources


def embedded_row(bench: Bench) -> Row:
    fn0 = fn_cpu(bench)
    r = embedded_bench.run_mode("binary", bench.scale.messages, bench.url, "key")
    fn = fn_cpu(bench) - fn0
    return Row(
        name="bridge embedded",
        kind="bridge",
        per_s=r["processed_per_s"],
        cpu_10k=r["cpu_s_per_10k"],
        fn_cpu_10k=fn / bench.scale.messages * 10_000,
        rss_mb=r["peak_rss_mb"],
        ceiling="function (wrk)",
        note=f"binary, file sink; intake {r['intake_per_s']:,.0f}/s",
    )


def rabbitmq_row(bench: Bench) -> Row:
    row = Row(name="bridge RabbitMQ", kind="bridge", ceiling="function (wrk)")
    if importlib.util.find_spec("pika") is None:
        return replace(row, note="pika missing: pip install -e '.[rabbitmq]'")
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(bench.args.amqp)).close()
    except pika.exceptions.AMQPError:
        return replace(row, note=f"RabbitMQ not reachable at {bench.args.amqp}")
    n = bench.scale.messages
    options = argparse.Namespace(url=bench.args.amqp, messages=n, keys=KEYS, prefetch=256)
    fn0 = fn_cpu(bench)
    r = rabbitmq_bench.run_bridge("binary", options, bench.url)
    fn = fn_cpu(bench) - fn0
    return replace(
        row,
        per_s=r["per_s"],
        cpu_10k=r["cpu_s_per_10k"],
        fn_cpu_10k=fn / n * 10_000,
        rss_mb=r["peak_rss_mb"],
        note="binary, prefetch 256, RabbitMQ sink with confirms",
    )


def sqs_row(bench: Bench) -> Row:
    row = Row(name="bridge SQS", kind="bridge")
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("aiobotocore") is None:
        return replace(row, note="moto/aiobotocore missing: pip install -e '.[dev]'")
    n = bench.scale.sqs_messages
    moto, endpoint = sqs_bench.moto_server()
    try:
        fn0 = fn_cpu(bench)
        r = sqs_bench.run_bridge(endpoint, bench.url, n, 100, with_sink=False)
        fn = fn_cpu(bench) - fn0
    finally:
        stop(moto)
    return replace(
        row,
        cpu_10k=r["cpu"] / n * 10_000,
        fn_cpu_10k=fn / n * 10_000,
        note=f"binary, no sink; moto-bound: {n} msgs at {n / r['elapsed']:,.0f}/s (rate not shown)",
    )


def rss_now_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_soak(samples: list[float]) -> tuple[bool, str]:
    """Whether RSS sampled over a soak stayed flat (the last third's mean within 10% of
    the first third's), and the note that shows it."""
    third = max(1, len(samples) // 3)
    tenths = sorted({min(len(samples) - 1, len(samples) * k // 10) for k in range(1, 11)})
    early, late = statistics.mean(samples[:third]), statistics.mean(samples[-third:])
    flat = late <= 1.1 * early
    return flat, (
        f"RSS mean first third {early:.0f} MB, last third {late:.0f} MB "
        f"(flat: {'yes' if flat else 'no'}); "
        f"RSS at each tenth: {' '.join(f'{samples[i]:.0f}' for i in tenths)}"
    )


def backlog_row(bench: Bench, n: int, seconds: float, delay: float = 0.1) -> Row:
    """The bridge (Kafka binary) started on a backlog of ``n`` records with a function
    that answers after ``delay`` seconds; its RSS sampled every second for ``seconds``."""
    topic, out = f"backlog-{uuid.uuid4().hex[:6]}", f"backlog-out-{uuid.uuid4().hex[:6]}"
    create_topics(bench.bootstrap, topic, out)
    feeder = Feeder(bench.bootstrap, topic)
    for _ in range(0, n, 100_000):
        feeder.send(min(100_000, n - feeder.count))
        feeder.flush()
        feeder.sent_at.clear()
    slow, slow_url = function_server(delay=delay)
    results = Results(bench.bootstrap, out).start()
    samples: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            proc = run_bridge("binary", bench.bootstrap, slow_url, topic, out, Path(tmp))
            try:
                started = time.monotonic()
                while time.monotonic() - started < seconds:
                    time.sleep(1.0)
                    if proc.poll() is not None:
                        raise RuntimeError((Path(tmp) / "bridge.log").read_text()[-2000:])
                    samples.append(rss_now_mb(proc.pid))
                peak = rss_mb(proc.pid)
            finally:
                stop(proc)
    finally:
        results.stop()
        stop(slow)
        drop_topics(bench.bootstrap, topic, out)
    flat, rss_note = rss_soak(samples)
    if not results.seen:
        # An idle bridge's RSS says nothing about a backlog (seen with 5M records: tansu's
        # memory storage kept a core busy and served no fetch in 10 minutes).
        return Row(
            name=f"bridge backlog {n / 1e6:g}M",
            kind="memory",
            note=f"no result in {seconds:.0f}s: not a measurement (RSS {peak:.0f} MB idle)",
        )
    return Row(
        name=f"bridge backlog {n / 1e6:g}M",
        kind="memory",
        rss_mb=peak,
        soak=(n, seconds, flat),
        note=(f"fn {delay * 1000:.0f} ms, {seconds:.0f}s, {len(results.seen):,} done; {rss_note}"),
    )


def backlog_rabbitmq_row(bench: Bench, n: int, seconds: float, delay: float = 0.1) -> Row:
    """The memory row on a broker that keeps a deep backlog on disk: RabbitMQ with ``n``
    messages queued (two publisher processes fill it first), the bridge (binary,
    prefetch 256) and a function that answers after ``delay`` seconds; the bridge's
    RSS sampled every second for ``seconds``. tansu keeps every record in memory and
    serves no fetch with 5M of them, so the Kafka row cannot hold that backlog."""
    name = f"bridge backlog {n / 1e6:g}M (RabbitMQ)"
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(bench.args.amqp)).close()
    except pika.exceptions.AMQPError:
        return Row(name=name, kind="memory", note=f"RabbitMQ not reachable at {bench.args.amqp}")
    tag = uuid.uuid4().hex[:8]
    queue, results = f"backlog-{tag}", f"backlog-{tag}-results"
    half = n // 2
    fill_started = time.monotonic()
    # spawned, not forked: this process has librdkafka threads running
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [
            pool.submit(rabbitmq_bench.fill, bench.args.amqp, queue, size, KEYS, first)
            for first, size in ((0, half), (half, n - half))
        ]
        rates = [job.result() for job in jobs]
    while rabbitmq_bench.count(bench.args.amqp, queue) < n:  # each waited for its own half
        time.sleep(0.2)
    filled_in = time.monotonic() - fill_started
    slow, slow_url = function_server(delay=delay)
    samples: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            port = free_port()
            (work / "bridge.yaml").write_text(
                rabbitmq_bench.CONFIG.format(
                    port=port,
                    amqp=bench.args.amqp,
                    queue=queue,
                    results=results,
                    prefetch=256,
                    url=slow_url,
                    mode="binary",
                    window=256,
                )
            )
            with pika.BlockingConnection(pika.URLParameters(bench.args.amqp)) as conn:
                conn.channel().queue_declare(results, durable=True)
            command = [sys.executable, "-m", "consumer_core", "--log-level", "warning"]
            proc = start(
                [*command, "run", "bridge.yaml"],
                cwd=work,
                log=work / "bridge.log",
            )
            try:
                wait_http(f"http://127.0.0.1:{port}/readyz")
                started = time.monotonic()
                while time.monotonic() - started < seconds:
                    time.sleep(1.0)
                    if proc.poll() is not None:
                        raise RuntimeError((work / "bridge.log").read_text()[-2000:])
                    samples.append(rss_now_mb(proc.pid))
                peak = rss_mb(proc.pid)
                done = rabbitmq_bench.count(bench.args.amqp, results)
                left = rabbitmq_bench.count(bench.args.amqp, queue)
            finally:
                stop(proc)
    finally:
        stop(slow)
        rabbitmq_bench.delete(bench.args.amqp, queue, results)
    flat, rss_note = rss_soak(samples)
    if not done:
        return Row(name=name, kind="memory", note=f"no result in {seconds:.0f}s: not a measurement")
    return Row(
        name=name,
        kind="memory",
        rss_mb=peak,
        soak=(n, seconds, flat),
        note=(
            f"filled in {filled_in:.0f}s ({sum(rates):,.0f} msgs/s); fn {delay * 1000:.0f} ms, "
            f"{seconds:.0f}s, {done:,} done, {left:,} still queued at the end; {rss_note}"
        ),
    )


def faststream_row(
    bench: Bench, launch: Callable[[str, str, Path], subprocess.Popen[bytes]]
) -> Row:
    row = Row(name="FastStream", kind="peer", ceiling="function (wrk)")
    if (
        importlib.util.find_spec("faststream") is None
        or importlib.util.find_spec("aiokafka") is None
    ):
        return replace(row, note=f"not installed: pip install '{FASTSTREAM_PIP}' (or --install)")
    return kafka_row(
        bench,
        replace(row, note="aiokafka subscriber, max_workers=64"),
        launch,
        n=bench.scale.messages,
    )
