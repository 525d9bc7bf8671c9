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
import re
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.kafka_bench import Feeder, Results, create_topics, start_tansu, write_bridge_config
from bench.rows import drop_topics
from bench.support import cpu_seconds, function_server, start, stop

BRIDGE = [sys.executable, "-m", "consumer_core", "--log-level", "warning", "run", "bridge.yaml"]


def trial(bootstrap: str, url: str, fn: int, broker: int, work: Path, n: int, procs: int) -> str:
    tag = uuid.uuid4().hex[:6]
    topic, out = f"in-{tag}", f"out-{tag}"
    create_topics(bootstrap, topic, out)
    feeder = Feeder(bootstrap, topic)
    feeder.send(n)
    feeder.flush()
    results = Results(bootstrap, out).start()
    bridges = []
    group: str | None = None
    try:
        for i in range(procs):
            folder = work / f"{tag}-{i}"
            folder.mkdir()
            write_bridge_config(folder, "binary", bootstrap, url, topic, out)
            config = (folder / "bridge.yaml").read_text()
            if group is None:
                found = re.search(r"group_id: (\S+)", config)
                assert found is not None
                group = found.group(1)
            else:
                config = re.sub(r"group_id: \S+", f"group_id: {group}", config)
                (folder / "bridge.yaml").write_text(config)
            bridges.append(start(BRIDGE, cwd=folder, log=folder / "bridge.log"))
        results.wait_for(1, timeout=120)
        mine = sum(cpu_seconds(p.pid) for p in bridges)
        fn0, broker0, done0, started = (
            cpu_seconds(fn),
            cpu_seconds(broker),
            len(results.seen),
            time.monotonic(),
        )
        results.wait_for(n, timeout=600)
        wall = time.monotonic() - started
        mine = sum(cpu_seconds(p.pid) for p in bridges) - mine
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
    broker, bootstrap = start_tansu(work / "tansu.log")
    fn, url = function_server()
    print(
        "| bridge processes | msgs/s | bridges' CPU | function CPU | broker CPU "
        "| bridges' CPU s/10k | duplicated |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for _ in range(args.pairs):
            for procs in (1, 2):
                print(
                    trial(bootstrap, url, fn.pid, broker.pid, work, args.messages, procs),
                    flush=True,
                )
    finally:
        stop(fn)
        broker.kill()
        broker.wait(10)


if __name__ == "__main__":
    main()
