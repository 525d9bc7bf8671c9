"""Kafka binary mode with one bridge process against two in one consumer group.

    .venv/bin/python -m bench.processes [--messages 30000] [--pairs 3]

Each trial fills a fresh 8-partition topic with ``--messages`` records (the suite's
1 KiB JSON, 1,000 keys), starts the bridge process(es) with the suite's pipeline
(binary mode, ordering by key, SQLite task store, results to a Kafka topic), and times
the drain from the first result to the last. With two processes each has its own
SQLite file and half the partitions; the trials alternate (1, 2, 1, 2, ...) against
the same tansu and function server. Printed per trial: the rate, each party's CPU as
a share of one core while draining, the bridges' CPU seconds per 10,000 messages, and
results duplicated.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from bench.kafka_bench import Feeder, Results, create_topics, run_bridge, tansu_and_function
from bench.rows import drop_topics
from bench.support import cpu_seconds, stop


def cpu_seconds_of(procs: list[subprocess.Popen[bytes]]) -> float:
    return sum(cpu_seconds(p.pid) for p in procs)


def trial(bootstrap: str, url: str, fn: int, broker: int, work: Path, n: int, procs: int) -> str:
    tag = uuid.uuid4().hex[:6]
    topic, out = f"in-{tag}", f"out-{tag}"
    create_topics(bootstrap, topic, out)
    feeder = Feeder(bootstrap, topic)
    feeder.send(n)
    feeder.flush()
    results = Results(bootstrap, out).start()
    bridges: list[subprocess.Popen[bytes]] = []
    group = f"bench-{tag}"  # one consumer group: the processes share the partitions
    try:
        for i in range(procs):
            folder = work / f"{tag}-{i}"
            folder.mkdir()
            bridges.append(run_bridge("binary", bootstrap, url, topic, out, folder, group=group))
        results.wait_for(1, timeout=120)
        mine0, fn0, broker0 = cpu_seconds_of(bridges), cpu_seconds(fn), cpu_seconds(broker)
        done0, started = len(results.seen), time.monotonic()
        results.wait_for(n, timeout=600)
        wall = time.monotonic() - started
        mine = cpu_seconds_of(bridges) - mine0
        fn_cpu, broker_cpu = cpu_seconds(fn) - fn0, cpu_seconds(broker) - broker0
    finally:
        for proc in bridges:
            stop(proc)
        results.stop()
        drop_topics(bootstrap, topic, out)
    times = [ts for _, ts in results.seen[:n]]
    span = (max(times) - min(times)) / 1000
    subjects = [s for s, _ in results.seen]
    return (
        f"| {procs} | {n / span:,.0f} | {mine / wall:.0%} | {fn_cpu / wall:.0%} | "
        f"{broker_cpu / wall:.0%} | {mine / (n - done0) * 10_000:.2f} | "
        f"{len(subjects) - len(set(subjects))} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="processes-"))
    print(
        "| bridge processes | msgs/s | bridges' CPU | function CPU | broker CPU "
        "| bridges' CPU s/10k | duplicated |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tansu_and_function(work / "tansu.log") as (broker, bootstrap, fn, url):
        for _ in range(args.pairs):
            for procs in (1, 2):
                row = trial(bootstrap, url, fn.pid, broker.pid, work, args.messages, procs)
                print(row, flush=True)


if __name__ == "__main__":
    main()
