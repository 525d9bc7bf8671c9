"""The peers and the raw ceiling of the benchmark suite, each run as its own process so
that its CPU and RSS are its own:

    python -m bench.peers raw BOOTSTRAP TOPIC N     (then reads EXTRA from stdin)
    python -m bench.peers sequential BOOTSTRAP URL TOPIC OUT
    python -m bench.peers faststream BOOTSTRAP URL TOPIC OUT

``sequential`` and ``faststream`` run until SIGTERM, producing each function answer to
``OUT`` with a ``ce_subject`` header (``topic/partition/offset`` of its source record),
which is what ``bench.kafka_bench.Results`` reads. The third peer, the hand-written
asyncio loop, is ``bench.kafka_bench``'s ``--worker``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import resource
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from bench.kafka_bench import PARTITIONS, SETTINGS


def ce_headers(topic: str, subject: str) -> dict[str, str]:
    """Binary-mode CloudEvent headers, as the hand-written loop sends them."""
    return {
        "ce-specversion": "1.0",
        "ce-id": subject,
        "ce-source": f"kafka://{topic}",
        "ce-type": "bridge.message",
        "content-type": "application/json",
    }


def raw(bootstrap: str, topic: str, n: str) -> None:
    """Consume ``n`` records from the start of every partition and do nothing with them;
    print wall and CPU seconds from the first batch to the last (the first batch is not
    counted: it was fetched before the clock started). Then read a count from stdin, take
    that many more records as they are produced and print their latency quantiles (now
    minus CreateTime, ms): the floor the broker and the feeder put under every other
    row's latency."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"raw-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            **SETTINGS,
        }
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen = counted = 0
    wall = cpu = 0.0
    while seen < int(n):
        batch = consumer.consume(1000, 1.0)
        seen += len(batch)
        if not wall and batch:
            wall, cpu = time.perf_counter(), time.process_time()
        elif batch:
            counted += len(batch)
    report = {
        "counted": counted,
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(json.dumps(report), flush=True)
    extra = int(sys.stdin.readline())
    latencies: list[float] = []
    while len(latencies) < extra:
        batch = consumer.consume(1000, 0.005)
        now = time.time() * 1000
        latencies += [now - m.timestamp()[1] for m in batch if m.error() is None]
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [None] * 99
    print(json.dumps({"p50_ms": q[49], "p99_ms": q[98]}), flush=True)
    consumer.close()


def sequential(bootstrap: str, url: str, topic: str, out: str) -> None:
    """The textbook loop: poll one record, POST it (keep-alive ``http.client``), produce
    the answer, commit synchronously, next."""
    stopping = False

    def on_term(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"seq-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **SETTINGS,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    consumer.subscribe([topic])
    target = urlsplit(url)
    client = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)
    while not stopping:
        m = consumer.poll(0.1)
        if m is None or m.error() is not None:
            continue
        subject = f"{m.topic()}/{m.partition()}/{m.offset()}"
        client.request("POST", target.path, body=m.value(), headers=ce_headers(topic, subject))
        body = client.getresponse().read()
        producer.produce(out, value=body, key=m.key(), headers={"ce_subject": subject})
        producer.poll(0)
        consumer.commit(message=m, asynchronous=False)
    producer.flush(10)
    consumer.close()


async def faststream(bootstrap: str, url: str, topic: str, out: str) -> None:
    """FastStream's Kafka subscriber (aiokafka) with ``max_workers=64``: each message is
    POSTed with aiohttp and the answer published to ``out`` (without waiting for the
    broker's confirmation, like the other peers). Its per-message log lines are
    filtered out (a WARNING logger) so that logging is not what is measured."""
    import logging

    import aiohttp
    from faststream.kafka import KafkaBroker
    from faststream.kafka.annotations import KafkaMessage

    logger = logging.getLogger("faststream-bench")
    logger.setLevel(logging.WARNING)
    broker = KafkaBroker(bootstrap, logger=logger)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))

    @broker.subscriber(
        topic,
        group_id=f"fs-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        max_workers=64,
        fetch_max_wait_ms=SETTINGS["fetch.wait.max.ms"],
        session_timeout_ms=SETTINGS["session.timeout.ms"],
        heartbeat_interval_ms=SETTINGS["heartbeat.interval.ms"],
    )
    async def forward(body: Any, message: KafkaMessage) -> None:
        record = message.raw_message
        subject = f"{record.topic}/{record.partition}/{record.offset}"
        headers = ce_headers(topic, subject)
        async with session.post(url, data=message.body, headers=headers) as response:
            answer = await response.read()
        await broker.publish(
            answer, topic=out, key=record.key, headers={"ce_subject": subject}, no_confirm=True
        )

    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    async with session:
        await broker.start()
        await stopping.wait()
        await broker.stop()


PEERS: dict[str, Callable[..., None]] = {
    "raw": raw,
    "sequential": sequential,
    "faststream": lambda *a: asyncio.run(faststream(*a)),
}

if __name__ == "__main__":
    PEERS[sys.argv[1]](*sys.argv[2:])
