"""The benchmark suite: the bridge beside its ceilings and its peers, in one run.

    .venv/bin/python -m bench.suite [--messages 20000] [--quick] [--rounds 3] [--install]
                                    [--soak] [--only ROW,...] [--profile /tmp/x.txt]

One tansu broker and one echo function (``bench.function_server``) serve every row, one
row after the other, on the same machine. What each row is, and how it is measured, is
in docs/performance.md; in short:

* ceilings: ``raw consume`` (confluent-kafka consuming the same kind of topic, doing
  nothing) and ``function (wrk)`` (the function server alone under ``wrk -c64``, 1 KiB
  JSON POSTs);
* peers: ``sequential loop`` (poll one, POST, produce the answer, commit),
  ``hand-written loop`` (``bench.kafka_bench``'s asyncio loop, 64 in flight) and
  ``FastStream`` (Kafka subscriber, ``max_workers=64``, forwarding with aiohttp);
* the bridge: Kafka binary, Kafka batch (100 per POST), embedded, RabbitMQ, SQS;
* memory: the bridge's RSS over 30 s with a 500k-message backlog and a slow function
  (5M messages and 10 minutes with ``--soak``);
* task state: Kafka binary again with ``state.url: memory://`` (task state kept in the
  process, nothing written): what durable task state costs.

How each row is measured: ``bench/rows.py`` (the peers' processes: ``bench/peers.py``;
the table: ``bench/report.py``) and docs/performance.md. Not a test: nothing asserts on
speed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.kafka_bench import (
    KEYS,
    PARTITIONS,
    run_bridge,
    run_handwritten,
    tansu_and_function,
)
from bench.report import Row, median_row, table, targets
from bench.rows import (
    FASTSTREAM_PIP,
    FEEDER_LINGER_MS,
    FLOOR_RATE,
    LATENCY_CAP,
    Bench,
    Scale,
    backlog_rabbitmq_row,
    backlog_row,
    embedded_row,
    faststream_row,
    kafka_row,
    launch_peer,
    py_spy,
    rabbitmq_row,
    raw_row,
    sqs_row,
    wrk_row,
)
from bench.support import ROOT

RESULTS_DIR = ROOT / "bench" / "results"
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"


# --------------------------------------------------------------------------- the rows


def plan(bench: Bench) -> dict[str, Callable[[], Row]]:
    """Every row, in the order run. Keys are what ``--only`` takes."""
    s, bs, url = bench.scale, bench.bootstrap, bench.url

    def worker(kind: str) -> Callable[[str, str, Path], subprocess.Popen[bytes]]:
        return lambda t, o, w: launch_peer(kind, bs, url, t, o, work=w)

    def bridge(mode: str) -> Callable[[str, str, Path], subprocess.Popen[bytes]]:
        return lambda t, o, w: run_bridge(mode, bs, url, t, o, w)

    wrk, raw = "function (wrk)", "raw consume"
    rows: dict[str, Callable[[], Row]] = {
        "raw": lambda: raw_row(bench),
        "wrk": lambda: wrk_row(bench),
        "sequential": lambda: kafka_row(
            bench,
            Row(name="sequential loop", kind="peer", ceiling=wrk, note="sync commit per record"),
            worker("sequential"),
            n=s.sequential_messages,
        ),
        "handwritten": lambda: kafka_row(
            bench,
            Row(name="hand-written loop", kind="peer", ceiling=wrk, note="asyncio, 64 in flight"),
            lambda t, o, w: run_handwritten(bs, url, t, o, w),
            n=s.messages,
        ),
        "faststream": lambda: faststream_row(bench, worker("faststream")),
        "kafka-binary": lambda: kafka_row(
            bench,
            Row(name="bridge Kafka binary", kind="bridge", ceiling=wrk, note="state on disk"),
            bridge("binary"),
            n=s.messages,
            profile=bench.take_profile(),
        ),
        "kafka-batch": lambda: kafka_row(
            bench,
            Row(name="bridge Kafka batch", kind="bridge", ceiling=raw, note="100 per POST"),
            bridge("batch"),
            n=s.messages,
            profile=bench.take_profile(),
        ),
        "embedded": lambda: embedded_row(bench),
        "rabbitmq": lambda: rabbitmq_row(bench),
        "sqs": lambda: sqs_row(bench),
        "backlog": lambda: backlog_row(bench, s.backlog, s.backlog_seconds),
        "backlog-rabbitmq": lambda: backlog_rabbitmq_row(bench, s.backlog, s.backlog_seconds),
        "kafka-binary-memory": lambda: kafka_row(
            bench,
            Row(
                name="bridge Kafka binary, state in memory",
                kind="state",
                ceiling=wrk,
                note="state.url memory://",
            ),
            lambda t, o, w: run_bridge("binary", bs, url, t, o, w, state="memory://"),
            n=s.messages,
        ),
    }
    return rows


PROFILED = " PROFILED with py-spy: the bridge Kafka binary row is slowed by it."


def header(args: argparse.Namespace, scale: Scale, rounds: int) -> str:
    from importlib.metadata import version

    import confluent_kafka

    versions = [
        f"Python {platform.python_version()}",
        f"confluent-kafka {version('confluent-kafka')}",
        f"librdkafka {confluent_kafka.libversion()[0]}",
    ]
    if importlib.util.find_spec("faststream"):
        versions.append(f"faststream {version('faststream')} / aiokafka {version('aiokafka')}")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"# Benchmark suite, {dt.datetime.now().isoformat(timespec='seconds')}\n\n"
        f"{os.cpu_count()} CPUs, load average at start {load}; {', '.join(versions)}.\n"
        f"Kafka rows and ceilings: median of {rounds} interleaved round(s); the others once.\n"
        f"{scale.messages:,} records of ~1 KiB per Kafka row ({PARTITIONS} partitions, "
        f"{KEYS:,} keys; sequential loop {scale.sequential_messages:,}, raw consume "
        f"{scale.raw_messages:,}), latency phase {scale.latency_seconds:g}s at half the "
        f"measured rate (at most {LATENCY_CAP:,.0f}/s; raw consume at {FLOOR_RATE:,.0f}/s), "
        f"end to end (source CreateTime to result CreateTime, feeder linger "
        f"{FEEDER_LINGER_MS} ms), wrk {scale.wrk_seconds}s, SQS {scale.sqs_messages:,}.\n"
        f"CPU s/10k: CPU seconds of the consumer process per 10,000 messages; fn CPU s/10k: "
        f"the function server's.{PROFILED if args.profile else ''}\n"
    )


# --------------------------------------------------------------------------- main


def ensure_tools(install: bool, profile: bool = False) -> None:
    """FastStream (pip) and wrk (apt) are only needed here, py-spy only for ``--profile``;
    install them on ``--install``."""
    if profile and py_spy() is None:
        if install:
            subprocess.run([sys.executable, "-m", "pip", "install", "py-spy"], check=True)
        else:
            raise SystemExit(
                f"--profile needs py-spy, which is missing. Install it with\n"
                f"    {sys.executable} -m pip install py-spy\n"
                f"or run the suite with --install."
            )
    if (
        importlib.util.find_spec("faststream") is None
        or importlib.util.find_spec("aiokafka") is None
    ):
        if install:
            subprocess.run([sys.executable, "-m", "pip", "install", FASTSTREAM_PIP], check=True)
            importlib.invalidate_caches()
        else:
            print(
                f"FastStream is missing; its row is skipped. Install it with\n"
                f"    {sys.executable} -m pip install '{FASTSTREAM_PIP}'\n"
                f"or run the suite with --install.",
                file=sys.stderr,
            )
    if shutil.which("wrk") is None:
        if install:
            if subprocess.run(["apt-get", "install", "-y", "wrk"], check=False).returncode:
                subprocess.run(["apt-get", "update"], check=True)
                subprocess.run(["apt-get", "install", "-y", "wrk"], check=True)
        else:
            print(
                "wrk is missing; its row is skipped. Install it with\n"
                "    apt-get install -y wrk\nor run the suite with --install.",
                file=sys.stderr,
            )


def make_scale(args: argparse.Namespace) -> Scale:
    messages = args.messages or (8_000 if args.quick else 20_000)
    quick = args.quick
    return Scale(
        messages=messages,
        raw_messages=5 * messages,
        sequential_messages=max(1_000, messages // 4),
        latency_seconds=3.0 if quick else 6.0,
        wrk_seconds=5 if quick else 10,
        sqs_messages=200 if quick else 500,
        backlog=args.backlog or (5_000_000 if args.soak else (100_000 if quick else 500_000)),
        backlog_seconds=args.backlog_seconds or (600.0 if args.soak else (10.0 if quick else 30.0)),
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, help="records per row (default 20000)")
    parser.add_argument("--quick", action="store_true", help="a smaller run (~2 minutes)")
    parser.add_argument("--rounds", type=int, help="runs of the repeated rows (default 3; quick 1)")
    parser.add_argument("--soak", action="store_true", help="5M backlog, 10-minute RSS soak")
    parser.add_argument(
        "--backlog", type=int, help="backlog records of the memory row (500k; 5M with --soak)"
    )
    parser.add_argument(
        "--backlog-seconds", type=float, help="seconds of the memory row (30; 600 with --soak)"
    )
    parser.add_argument("--install", action="store_true", help="pip/apt-install what is missing")
    parser.add_argument("--only", default="", help="comma-separated row keys (see plan())")
    parser.add_argument(
        "--profile", help="py-spy raw output of the first bridge Kafka row (binary or batch)"
    )
    parser.add_argument("--amqp", default=AMQP, help="RabbitMQ URL")
    return parser.parse_args()


ON_REQUEST = frozenset({"backlog-rabbitmq"})
"""Rows run only when ``--only`` names them (filling RabbitMQ with the backlog alone
took 681 s for 5M messages here)."""

REPEATED = frozenset(
    {"raw", "wrk", "sequential", "handwritten", "faststream"}
    | {"kafka-binary", "kafka-batch", "kafka-binary-memory"}
)
"""Rows run once per round (rounds interleave, so a colleague's load spreads over all
of them); the table shows each one's median. The others run in the first round only."""


def run_rows(bench: Bench, chosen: list[str], rounds: int) -> list[Row]:
    steps = plan(bench)
    runs: dict[str, list[Row]] = {key: [] for key in chosen}
    for round_ in range(rounds):
        for key in chosen:
            if round_ and key not in REPEATED:
                continue
            began = time.monotonic()
            try:
                row = steps[key]()
            except Exception as exc:  # recorded in the table: one failure spoils no other row
                row = Row(name=key, kind="failed", note=f"failed: {exc!r}"[:300])
            runs[key].append(row)
            rate = f"{row.per_s:,.0f}/s" if row.per_s else row.note
            took = time.monotonic() - began
            print(
                f"  [{round_ + 1}/{rounds}] {key}: {took:.0f}s, {rate}", file=sys.stderr, flush=True
            )
    return [median_row(r) for r in runs.values()]


def main() -> None:
    args = parse_args()
    ensure_tools(args.install, profile=bool(args.profile))
    scale = make_scale(args)
    rounds = args.rounds or (1 if args.quick else 3)
    title = header(args, scale, rounds)
    print(title.splitlines()[0], flush=True)
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        tansu_and_function(Path(tmp) / "tansu.log") as (broker, bootstrap, fn, url),
    ):
        bench = Bench(args, scale, bootstrap, fn, url, Path(tmp), broker)
        known = list(plan(bench))
        chosen = [k for k in args.only.split(",") if k] or [k for k in known if k not in ON_REQUEST]
        if unknown := sorted(set(chosen) - set(known)):
            raise SystemExit(f"unknown rows {unknown}; rows are: {', '.join(known)}")
        rows = run_rows(bench, chosen, rounds)
    took = time.monotonic() - started
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = (
        f"{title}\n{table(rows)}\n\n## Targets (issue 9)\n\n{targets(rows)}\n\n"
        f"Run took {took:.0f}s; load average at the end {load}.\n"
    )
    print("\n" + report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"suite-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(report)
    print(f"Written to {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
