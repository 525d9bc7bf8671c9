"""RabbitMQ -> function -> RabbitMQ sink: messages per second through the bridge, next to
plain pika consumers posting to the same function with the same prefetch.

    .venv/bin/python -m bench.rabbitmq_bench [--messages 20000] [--prefetch 256]

Each run gets its own queues (deleted afterwards) on the broker at ``--url``, and the
echo function of ``bench.function_server`` in its own process. For every contender
the queue is filled first, then the clock runs from the moment it starts consuming
until the last message is done:

* ``bridge binary`` / ``bridge batch``: ``bridge run`` (uvloop) with the RabbitMQ
  source (``prefetch_max`` = ``--prefetch``, window fixed at ``--prefetch`` in binary
  mode), ordering by key, results published to a queue with publisher confirms. Done
  = every result is in the results queue.
* ``pika + aiohttp``: a hand-written consumer on one asyncio loop: each delivery is
  POSTed at once (the prefetch caps concurrency), acked when the function answered.
  No task state, no ordering, no result events.
* ``pika blocking``: the textbook ``BlockingConnection`` consumer: POST (keep-alive
  ``http.client``) and ack, one message at a time.
* ``consume-pika`` / ``consume-source``: no function, consume and ack only: pika's
  ``BlockingConnection``, and the bridge's RabbitMQ source alone (each message
  decoded into a ``Delivery``), to show the connector's own ceiling.

Every contender runs in its own process; "cpu s/10k" is that process's CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
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
from urllib.parse import urlsplit

import pika

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

ENV = {"PYTHONPATH": str(ROOT)}

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: bench
    source: {{type: rabbitmq, url: "{amqp}", queue: {queue}, key_header: x-key,
             prefetch_max: {prefetch}}}
    ordering: key
    target: {{url: "{url}", timeout: 10s, mode: {mode}, batch: {{max_events: 100, max_wait: 5ms}}}}
    concurrency: {{initial: {window}, min: 1, max: {window}}}
    on_success: [{{type: rabbitmq, url: "{amqp}", exchange: "", routing_key: {results}}}]
"""

BODY = json.dumps({"order": 1, "items": [{"price": 9.5, "qty": 2}], "pad": "x" * 900})


def fill(amqp: str, queue: str, n: int, keys: int, first: int = 0) -> float:
    """Declare ``queue`` and publish ``n`` ~1 KiB messages (ids from ``first`` on);
    return the publish rate."""
    with pika.BlockingConnection(pika.URLParameters(amqp)) as conn:
        channel = conn.channel()
        channel.queue_declare(queue, durable=True)
        started = time.perf_counter()
        for i in range(first, first + n):
            properties = pika.BasicProperties(
                content_type="application/json",
                message_id=f"{queue}-{i}",
                headers={"x-key": f"k{i % keys}"},
                delivery_mode=2,
            )
            channel.basic_publish("", queue, BODY, properties)
        elapsed = time.perf_counter() - started
        while channel.queue_declare(queue, passive=True).method.message_count < n:
            time.sleep(0.05)
    return n / elapsed


def count(amqp: str, queue: str) -> int:
    with pika.BlockingConnection(pika.URLParameters(amqp)) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)


def delete(amqp: str, *queues: str) -> None:
    with pika.BlockingConnection(pika.URLParameters(amqp)) as conn:
        channel = conn.channel()
        for queue in queues:
            channel.queue_delete(queue)


def run_bridge(mode: str, args: argparse.Namespace, url: str) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    queue, results = f"bench-{tag}", f"bench-{tag}-results"
    fill(args.url, queue, args.messages, args.keys)
    with pika.BlockingConnection(pika.URLParameters(args.url)) as conn:
        conn.channel().queue_declare(results, durable=True)
    window = args.prefetch if mode == "binary" else -(-args.prefetch // 100)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        (work / "bridge.yaml").write_text(
            CONFIG.format(
                port=port,
                amqp=args.url,
                queue=queue,
                results=results,
                prefetch=args.prefetch,
                url=url,
                mode=mode,
                window=window,
            )
        )
        bridge = start(
            [sys.executable, "-m", "consumer_core", "--log-level", "warning", "run", "bridge.yaml"],
            cwd=work,
            log=work / "bridge.log",
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/readyz")
            cpu0 = cpu_seconds(bridge.pid)
            started = time.perf_counter()
            while count(args.url, results) < args.messages:
                if bridge.poll() is not None:
                    raise RuntimeError((work / "bridge.log").read_text())
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            return {
                "per_s": args.messages / elapsed,
                "cpu_s_per_10k": (cpu_seconds(bridge.pid) - cpu0) / args.messages * 10_000,
                "peak_rss_mb": rss_mb(bridge.pid),
            }
        finally:
            stop(bridge)
            delete(args.url, queue, results)


# --------------------------------------------------------------------------- plain pika


class Clock:
    """Wall and CPU time of a contender, from its first delivery to its last ack."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def first(self) -> None:
        if not self.wall:
            self.wall, self.cpu = time.perf_counter(), time.process_time()

    def report(self) -> str:
        wall = time.perf_counter() - self.wall
        return json.dumps({"wall": wall, "cpu": time.process_time() - self.cpu})


def plain_async(amqp: str, queue: str, n: int, prefetch: int, url: str) -> str:
    """pika's asyncio adapter + aiohttp: POST each delivery at once, ack on the answer."""
    import aiohttp
    import uvloop
    from pika.adapters.asyncio_connection import AsyncioConnection

    clock = Clock()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=prefetch))
        acked = 0
        running: set[asyncio.Task[None]] = set()

        async def handle(channel: Any, tag: int, headers: dict[str, str], body: bytes) -> None:
            nonlocal acked
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
            channel.basic_ack(tag)
            acked += 1
            if acked == n and not done.done():
                done.set_result(None)

        def on_message(channel: Any, method: Any, properties: Any, body: bytes) -> None:
            clock.first()
            headers = {
                "Content-Type": properties.content_type,
                "ce-id": properties.message_id,
                "ce-source": queue,
                "ce-type": "bench",
                "ce-specversion": "1.0",
            }
            task = loop.create_task(handle(channel, method.delivery_tag, headers, body))
            running.add(task)
            task.add_done_callback(running.discard)

        def on_channel(channel: Any) -> None:
            channel.basic_qos(
                prefetch_count=prefetch,
                callback=lambda _: channel.basic_consume(queue, on_message),
            )

        AsyncioConnection(
            pika.URLParameters(amqp),
            on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
            custom_ioloop=loop,
        )
        await done
        await session.close()

    uvloop.run(main())
    return clock.report()


def plain_blocking(amqp: str, queue: str, n: int, prefetch: int, url: str) -> str:
    """The textbook consumer: BlockingConnection, one POST at a time, then ack."""
    target = urlsplit(url)
    client = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)
    clock = Clock()
    with pika.BlockingConnection(pika.URLParameters(amqp)) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=prefetch)
        for acked, (method, properties, body) in enumerate(channel.consume(queue), start=1):
            clock.first()
            client.request(
                "POST",
                target.path,
                body=body,
                headers={"Content-Type": properties.content_type, "ce-id": properties.message_id},
            )
            client.getresponse().read()
            channel.basic_ack(method.delivery_tag)
            if acked == n:
                break
        report = clock.report()
        channel.cancel()
    return report


def consume_only_pika(amqp: str, queue: str, n: int, prefetch: int, url: str) -> str:
    """No function at all: BlockingConnection consume and ack each (pika's own pace)."""
    clock = Clock()
    with pika.BlockingConnection(pika.URLParameters(amqp)) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=prefetch)
        for acked, (method, _properties, _body) in enumerate(channel.consume(queue), start=1):
            clock.first()
            channel.basic_ack(method.delivery_tag)
            if acked == n:
                break
        report = clock.report()
        channel.cancel()
    return report


def consume_only_source(amqp: str, queue: str, n: int, prefetch: int, url: str) -> str:
    """No function at all: the bridge's RabbitMQ source alone, decoding every message
    into a Delivery (CloudEvent wrapping, key, id) and acking it."""
    import uvloop

    from connectors.rabbitmq import RabbitMQSource

    clock = Clock()
    reports: list[str] = []

    async def main() -> None:
        source = RabbitMQSource(
            pipeline="bench", queue=queue, url=amqp, key_header="x-key", prefetch_max=prefetch
        )
        await source.connect()
        source.window_changed(prefetch)
        done = 0
        while done < n:
            deliveries = await source.receive(1000, 1.0)
            clock.first()
            for delivery in deliveries:
                await delivery.ack()
            done += len(deliveries)
        await asyncio.sleep(0)  # let the coalesced acks go out
        reports.append(clock.report())
        await source.close()

    uvloop.run(main())
    return reports[0]


PLAIN: dict[str, Callable[[str, str, int, int, str], str]] = {
    "async": plain_async,
    "blocking": plain_blocking,
    "consume-pika": consume_only_pika,
    "consume-source": consume_only_source,
}


def run_plain(kind: str, args: argparse.Namespace, url: str) -> dict[str, float]:
    queue = f"bench-{uuid.uuid4().hex[:8]}"
    fill(args.url, queue, args.messages, args.keys)
    try:
        child = [sys.executable, "-m", "bench.rabbitmq_bench", "--plain", kind]
        child += ["--queue", queue, "--function", url, "--url", args.url]
        child += ["--messages", str(args.messages), "--prefetch", str(args.prefetch)]
        done = subprocess.run(
            child, capture_output=True, text=True, check=True, env={**os.environ, **ENV}
        )
        times = json.loads(done.stdout.strip().splitlines()[-1])
        return {
            "per_s": args.messages / times["wall"],
            "cpu_s_per_10k": times["cpu"] / args.messages * 10_000,
            "peak_rss_mb": 0.0,
        }
    finally:
        delete(args.url, queue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--prefetch", type=int, default=256)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    parser.add_argument("--only", default="", help="comma-separated contenders to run")
    parser.add_argument("--plain", choices=sorted(PLAIN), help=argparse.SUPPRESS)
    parser.add_argument("--queue", help=argparse.SUPPRESS)
    parser.add_argument("--function", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:  # the child process of run_plain
        print(PLAIN[args.plain](args.url, args.queue, args.messages, args.prefetch, args.function))
        return

    contenders: dict[str, Callable[[str], dict[str, float]]] = {
        "bridge-binary": lambda url: run_bridge("binary", args, url),
        "bridge-batch": lambda url: run_bridge("batch", args, url),
        "pika-aiohttp": lambda url: run_plain("async", args, url),
        "pika-blocking": lambda url: run_plain("blocking", args, url),
        "consume-pika": lambda url: run_plain("consume-pika", args, url),
        "consume-source": lambda url: run_plain("consume-source", args, url),
    }
    chosen = [c for c in args.only.split(",") if c] or list(contenders)
    fn, url = function_server()
    try:
        print(
            f"{args.messages} messages of ~1 KiB, {args.keys} keys, prefetch {args.prefetch}; "
            f"echo function in its own process"
        )
        print(f"{'contender':<15} {'msgs/s':>8} {'cpu s/10k':>10} {'peak RSS MB':>12}")
        for name in chosen:
            r = contenders[name](url)
            cpu = f"{r['cpu_s_per_10k']:.2f}" if r["cpu_s_per_10k"] else "-"
            rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"
            print(f"{name:<15} {r['per_s']:>8.0f} {cpu:>10} {rss:>12}", flush=True)
    finally:
        stop(fn)


if __name__ == "__main__":
    main()
