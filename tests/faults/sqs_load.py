"""Load and result collection for the SQS scenarios (moto), all blocking: run in threads.

A message's event id (and its results' ``subject``) is its SQS MessageId, which
SendMessageBatch returns once the queue accepted it.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from tests.faults.conftest import Moto
from tests.faults.harness import Collector, Feeder, Results


def create_queue(moto: Moto, prefix: str) -> str:
    sqs: Any = moto.client("sqs")
    answer = sqs.create_queue(QueueName=f"{prefix}-{uuid.uuid4().hex[:10]}")
    return str(answer["QueueUrl"])


def plain(n: int) -> str:
    return json.dumps({"i": n, "key": f"k{n % 50}"})


class SqsFeed:
    """SendMessageBatch, ten at a time (one at a time for large bodies: a call takes at
    most 256 KiB), with a client of the feeder thread's own."""

    def __init__(self, moto: Moto, queue_url: str, body: Callable[[int], str] = plain) -> None:
        self.moto = moto
        self.queue_url = queue_url
        self.body = body
        self._sqs: Any = None

    def send(self, start: int, count: int) -> list[str]:
        if self._sqs is None:
            self._sqs = self.moto.client("sqs")
        ids: dict[int, str] = {}
        batch: list[tuple[int, str]] = []
        for n in range(start, start + count):
            body = self.body(n)
            if len(body) > 20_000:
                ids.update(self._send([(n, body)]))
            else:
                batch.append((n, body))
            if len(batch) == 10:
                ids.update(self._send(batch))
                batch = []
        if batch:
            ids.update(self._send(batch))
        return [ids[n] for n in range(start, start + count)]  # in message order

    def _send(self, entries: list[tuple[int, str]]) -> dict[int, str]:
        answer = self._sqs.send_message_batch(
            QueueUrl=self.queue_url,
            Entries=[{"Id": str(n), "MessageBody": body} for n, body in entries],
        )
        assert not answer.get("Failed"), answer["Failed"]
        return {int(s["Id"]): str(s["MessageId"]) for s in answer["Successful"]}

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
    schema: str | None = None,
) -> str:
    """A pipeline file (JSON is YAML) with one SQS pipeline; ``{port}`` is the admin port."""
    extra = {"schema": schema} if schema else {}
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
                **extra,
            }
        ],
    }
    return json.dumps(document, indent=1).replace("127.0.0.1:PORT", "127.0.0.1:{port}")


def sqs_sink(moto: Moto, queue_url: str) -> dict[str, Any]:
    return {"type": "sqs", "queue_url": queue_url, "endpoint_url": moto.url}
