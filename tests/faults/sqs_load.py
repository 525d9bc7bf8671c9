"""Load and result collection for the SQS scenarios (moto), all blocking: run in threads.

A message's event id (and its results' ``subject``) is its SQS MessageId, which
SendMessageBatch returns once the queue accepted it.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from tests.faults.conftest import Moto
from tests.faults.harness import Collector, Feeder, Results


def create_queue(moto: Moto, prefix: str) -> str:
    sqs: Any = moto.client("sqs")
    answer = sqs.create_queue(QueueName=f"{prefix}-{uuid.uuid4().hex[:10]}")
    return str(answer["QueueUrl"])


class SqsFeed:
    """SendMessageBatch, ten at a time, with a client of the feeder thread's own."""

    def __init__(self, moto: Moto, queue_url: str) -> None:
        self.moto = moto
        self.queue_url = queue_url
        self._sqs: Any = None

    def send(self, start: int, count: int) -> list[str]:
        if self._sqs is None:
            self._sqs = self.moto.client("sqs")
        accepted: list[str] = []
        for first in range(start, start + count, 10):
            numbers = range(first, min(first + 10, start + count))
            answer = self._sqs.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[
                    {"Id": str(n), "MessageBody": json.dumps({"i": n, "key": f"k{n % 50}"})}
                    for n in numbers
                ],
            )
            assert not answer.get("Failed"), answer["Failed"]
            by_number = {int(s["Id"]): str(s["MessageId"]) for s in answer["Successful"]}
            accepted.extend(by_number[n] for n in numbers)
        return accepted

    def feeder(self, *, total: int, rate: float) -> Feeder:
        return Feeder(self.send, total=total, rate=rate, batch=10)


def collect_results(moto: Moto, queue_urls: list[str], results: Results) -> Collector:
    """A thread reading (and deleting) structured CloudEvents from result queues."""
    clients: list[Any] = []

    def poll() -> None:
        if not clients:
            clients.append(moto.client("sqs"))
        sqs = clients[0]
        for url in queue_urls:
            answer = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = answer.get("Messages") or []
            for message in messages:
                event = json.loads(message["Body"])
                results.add(event.get("subject", ""), event.get("type", ""), event.get("data"))
            if messages:
                sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(messages)
                    ],
                )
            else:
                time.sleep(0.05)

    return Collector(poll)


def sqs_bridge_config(
    moto: Moto,
    *,
    name: str,
    queue_url: str,
    function_url: str,
    on_success: dict[str, Any],
    on_failure: dict[str, Any],
    retry: dict[str, Any],
    concurrency: dict[str, int],
) -> str:
    """A pipeline file (JSON is YAML) with one SQS pipeline; ``{port}`` is the admin port."""
    document = {
        "version": 1,
        "server": {"listen": "127.0.0.1:PORT"},
        "state": {"url": "sqlite:///state.db"},
        "shutdown_timeout": "5s",
        "pipelines": [
            {
                "name": name,
                "source": {
                    "type": "sqs",
                    "queue_url": queue_url,
                    "endpoint_url": moto.url,
                    "wait_time": "1s",
                },
                "ordering": "none",
                "target": {"url": function_url, "timeout": "5s", "mode": "binary"},
                "concurrency": concurrency,
                "retry": retry,
                "on_success": [on_success],
                "on_failure": [on_failure],
            }
        ],
    }
    return json.dumps(document, indent=1).replace("127.0.0.1:PORT", "127.0.0.1:{port}")


def sqs_sink(moto: Moto, queue_url: str) -> dict[str, Any]:
    return {"type": "sqs", "queue_url": queue_url, "endpoint_url": moto.url}
