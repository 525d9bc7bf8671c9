"""SQS -> function: the bridge's own CPU seconds per message, beside a plain aiobotocore loop.

    .venv/bin/python -m bench.sqs_bench [--messages 2000]

The moto server, not the bridge, limits the rate here (it scans the whole queue on
every call), so wall-clock throughput says little about the bridge. What this
measures is CPU time of the consumer process only (``/proc/<pid>/stat``), per
message, with moto, the function and the feeder in other processes. Contenders, one
after the other on fresh queues, same function (``bench.function_server``), same
moto server:

* ``plain loop``: a hand-written consumer (uvloop, aiobotocore, aiohttp): four
  receivers long-poll ten messages, post each to the function (binary CloudEvent
  headers), delete the ten with one DeleteMessageBatch. No store, no retries, no
  ordering, no results.
* ``bridge``: ``bridge run`` with the SQS source (binary mode, ordering by key,
  SQLite task store), no result sink: the same SQS calls as the loop plus
  everything the bridge does per task.
* ``bridge + sqs sink``: the same, every result sent to a second queue.

The feeder keeps each input queue at most ``--depth`` deep (moto slows down with
depth), and the clock stops when every message was deleted (and, with a sink, every
result arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.support import cpu_seconds, free_port, function_server, start, stop, wait_http

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
os.environ.update(CREDENTIALS)

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: bench
    source: {{type: sqs, queue_url: "{queue}", endpoint_url: "{endpoint}", wait_time: 5s}}
    ordering: key
    target: {{url: "{url}", timeout: 10s, mode: binary}}
    concurrency: {{initial: 64, min: 1, max: 64}}
    on_success: {sinks}
"""


def client(service: str, endpoint: str) -> Any:
    from aiobotocore.session import get_session

    return get_session().create_client(service, endpoint_url=endpoint, region_name="us-east-1")


async def depth(sqs: Any, url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    answer = await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    return sum(int(answer["Attributes"][n]) for n in names)


async def feed_and_wait(
    endpoint: str, queue: str, results: str | None, n: int, limit: int
) -> float:
    """Keep ``queue`` at most ``limit`` deep until ``n`` were sent; return the seconds until
    it is empty (and ``results`` holds ``n``, drained as they come)."""
    body = json.dumps({"order": 1, "items": [{"price": 9.5, "qty": 2}], "pad": "x" * 900})
    async with client("sqs", endpoint) as sqs:
        started = time.perf_counter()
        sent = drained = 0
        while sent < n or await depth(sqs, queue) or (results and drained < n):
            busy = False
            if sent < n and await depth(sqs, queue) < limit:
                entries = [{"Id": str(i), "MessageBody": body} for i in range(min(10, n - sent))]
                await sqs.send_message_batch(QueueUrl=queue, Entries=entries)
                sent += len(entries)
                busy = True
            if results:
                got = await drain(sqs, results)
                drained += got
                busy = busy or got > 0
            if not busy:
                await asyncio.sleep(0.02)
        return time.perf_counter() - started


async def drain(sqs: Any, url: str) -> int:
    answer = await sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
    messages = answer.get("Messages") or []
    if messages:
        entries = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
        ]
        await sqs.delete_message_batch(QueueUrl=url, Entries=entries)
    return len(messages)


async def make_queue(endpoint: str, prefix: str) -> str:
    async with client("sqs", endpoint) as sqs:
        answer = await sqs.create_queue(QueueName=f"{prefix}-{uuid.uuid4().hex[:8]}")
        return str(answer["QueueUrl"])


def run_bridge(endpoint: str, fn_url: str, n: int, limit: int, with_sink: bool) -> dict[str, float]:
    queue = asyncio.run(make_queue(endpoint, "bench-in"))
    results = asyncio.run(make_queue(endpoint, "bench-out")) if with_sink else None
    sinks = (
        f'[{{type: sqs, queue_url: "{results}", endpoint_url: "{endpoint}"}}]' if results else "[]"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        config = CONFIG.format(port=port, queue=queue, endpoint=endpoint, url=fn_url, sinks=sinks)
        (work / "bridge.yaml").write_text(config)
        bridge = start(
            [sys.executable, "-m", "consumer_core", "--log-level", "warning", "run", "bridge.yaml"],
            cwd=work,
            log=work / "bridge.log",
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            time.sleep(1.0)
            cpu0 = cpu_seconds(bridge.pid)
            elapsed = asyncio.run(feed_and_wait(endpoint, queue, results, n, limit))
            cpu = cpu_seconds(bridge.pid) - cpu0
        finally:
            stop(bridge)
    return {"cpu": cpu, "elapsed": elapsed}


def run_plain(endpoint: str, fn_url: str, n: int, limit: int) -> dict[str, float]:
    queue = asyncio.run(make_queue(endpoint, "bench-plain"))
    worker = start(
        [sys.executable, "-m", "bench.sqs_bench", "--plain-worker", queue, endpoint, fn_url]
    )
    try:
        time.sleep(2.0)  # imports and clients ready, polling an empty queue
        cpu0 = cpu_seconds(worker.pid)
        elapsed = asyncio.run(feed_and_wait(endpoint, queue, None, n, limit))
        cpu = cpu_seconds(worker.pid) - cpu0
    finally:
        stop(worker)
    return {"cpu": cpu, "elapsed": elapsed}


async def plain_worker(queue: str, endpoint: str, fn_url: str) -> None:
    """The hand-written consumer the bridge is compared with (runs until killed)."""
    import aiohttp

    async with client("sqs", endpoint) as sqs, aiohttp.ClientSession() as http:

        async def post(message: dict[str, Any]) -> None:
            headers = {
                "ce-id": message["MessageId"],
                "ce-source": queue,
                "ce-type": "bridge.message",
                "ce-specversion": "1.0",
                "Content-Type": "application/json",
            }
            async with http.post(fn_url, data=message["Body"], headers=headers) as response:
                await response.read()

        async def receiver() -> None:
            while True:
                answer = await sqs.receive_message(
                    QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=5
                )
                messages = answer.get("Messages") or []
                if not messages:
                    continue
                await asyncio.gather(*(post(m) for m in messages))
                entries = [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ]
                await sqs.delete_message_batch(QueueUrl=queue, Entries=entries)

        await asyncio.gather(*(receiver() for _ in range(4)))


def moto_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    # moto with its delete/send race closed (tests.support.moto_launch), as in the tests
    launcher = "tests.support.moto_launch"
    proc = start([sys.executable, "-m", launcher, "-H", "127.0.0.1", "-p", str(port)])
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(endpoint + "/moto-api/")
    return proc, endpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--depth", type=int, default=100, help="most messages queued at once")
    parser.add_argument("--plain-worker", nargs=3, metavar=("QUEUE", "ENDPOINT", "FUNCTION"))
    args = parser.parse_args()
    if args.plain_worker:
        import uvloop

        uvloop.run(plain_worker(*args.plain_worker))
        return
    moto, endpoint = moto_server()
    fn, fn_url = function_server()
    n = args.messages
    try:
        print(f"{n} messages of ~1 KiB, queue depth <= {args.depth}, moto at {endpoint}")
        print(f"{'consumer':<20} {'msgs/s':>8} {'CPU s':>7} {'CPU ms/msg':>11}")
        runs: list[tuple[str, Callable[[], dict[str, float]]]] = [
            ("plain loop", lambda: run_plain(endpoint, fn_url, n, args.depth)),
            ("bridge", lambda: run_bridge(endpoint, fn_url, n, args.depth, with_sink=False)),
            (
                "bridge + sqs sink",
                lambda: run_bridge(endpoint, fn_url, n, args.depth, with_sink=True),
            ),
        ]
        for name, run in runs:
            r = run()
            rate, per_message = n / r["elapsed"], r["cpu"] / n * 1000
            print(f"{name:<20} {rate:>8.0f} {r['cpu']:>7.2f} {per_message:>11.3f}", flush=True)
    finally:
        stop(fn)
        stop(moto)


if __name__ == "__main__":
    main()
