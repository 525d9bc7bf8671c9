"""Fixtures for the SQS/EventBridge tests: a moto server process and clients for it.

The moto server (``python -m moto.server``) speaks the SQS and EventBridge APIs over
HTTP on a free port; the bridge reaches it through ``endpoint_url``, exactly as it
would reach AWS. One server serves the whole session; every test makes its own
uniquely named queues and buses.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import pytest
from aiobotocore.session import get_session

from tests.support.bridge import BridgeProcess
from tests.support.moto import CREDENTIALS, REGION, MotoServer, running_moto


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with running_moto(tmp_path_factory.mktemp("moto"), CREDENTIALS) as (url, process):
        yield MotoServer(url, process)


class Aws:
    """The test's own view of moto: make queues and buses, send, read, count."""

    def __init__(self, server: MotoServer, sqs: Any, events: Any) -> None:
        self.server = server
        self.sqs = sqs
        self.events = events

    @staticmethod
    def unique(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    async def create_queue(
        self, prefix: str, *, fifo: bool = False, dead_letter_url: str | None = None
    ) -> str:
        name = self.unique(prefix) + (".fifo" if fifo else "")
        attributes = {"FifoQueue": "true"} if fifo else {}
        if dead_letter_url is not None:
            policy = {"deadLetterTargetArn": await self.queue_arn(dead_letter_url)}
            attributes["RedrivePolicy"] = json.dumps({**policy, "maxReceiveCount": "5"})
        answer = await self.sqs.create_queue(QueueName=name, Attributes=attributes)
        return str(answer["QueueUrl"])

    async def queue_arn(self, url: str) -> str:
        answer = await self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        return str(answer["Attributes"]["QueueArn"])

    async def depth(self, url: str) -> int:
        """Messages visible plus in flight."""
        answer = await self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=[
                "ApproximateNumberOfMessages",
                "ApproximateNumberOfMessagesNotVisible",
            ],
        )
        attributes = answer["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    async def send(self, url: str, entries: Sequence[dict[str, Any]]) -> list[str]:
        """SendMessageBatch, ten at a time; return the MessageIds in order."""
        ids: list[str] = []
        for start in range(0, len(entries), 10):
            chunk = entries[start : start + 10]
            answer = await self.sqs.send_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), **entry} for i, entry in enumerate(chunk)],
            )
            assert not answer.get("Failed"), answer["Failed"]
            by_id = {int(s["Id"]): str(s["MessageId"]) for s in answer["Successful"]}
            ids.extend(by_id[i] for i in range(len(chunk)))
        return ids

    async def receive(self, url: str, *, wait: int = 1) -> list[dict[str, Any]]:
        """Receive up to ten messages and delete them."""
        answer = await self.sqs.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=wait,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        messages = list(answer.get("Messages") or [])
        if messages:
            await self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
        return messages

    async def collect(self, url: str, count: int, *, timeout: float) -> list[dict[str, Any]]:
        """Read (and delete) messages until ``count`` arrived or ``timeout`` passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        found: list[dict[str, Any]] = []
        while len(found) < count and loop.time() < deadline:
            found.extend(await self.receive(url))
        return found

    async def wait_empty(self, url: str, *, timeout: float) -> int:
        """Wait for the queue to hold nothing; return its final depth."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        depth = await self.depth(url)
        while depth and loop.time() < deadline:
            await asyncio.sleep(0.2)
            depth = await self.depth(url)
        return depth

    async def bus_to_queue(self, prefix: str) -> tuple[str, str]:
        """An event bus with a rule sending everything from the bridge to a new queue."""
        bus = self.unique(prefix)
        await self.events.create_event_bus(Name=bus)
        url = await self.create_queue(prefix + "-target")
        rule = self.unique("all")
        await self.events.put_rule(
            Name=rule,
            EventBusName=bus,
            EventPattern=json.dumps({"source": [{"prefix": "/bridge/"}]}),
        )
        await self.events.put_targets(
            Rule=rule,
            EventBusName=bus,
            Targets=[{"Id": "queue", "Arn": await self.queue_arn(url)}],
        )
        return bus, url


@pytest.fixture
async def aws(moto_server: MotoServer) -> AsyncIterator[Aws]:
    session = get_session()
    options = {
        "region_name": REGION,
        "endpoint_url": moto_server.url,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    async with (
        session.create_client("sqs", **options) as sqs,
        session.create_client("events", **options) as events,
    ):
        yield Aws(moto_server, sqs, events)


def bridge_config(
    *,
    name: str,
    source: dict[str, Any],
    target: str,
    on_success: Sequence[dict[str, Any]] = (),
    on_failure: Sequence[dict[str, Any]] = (),
    ordering: str = "key",
    concurrency: dict[str, int] | None = None,
    target_timeout: str = "30s",
    retry: dict[str, Any] | None = None,
) -> str:
    """A pipeline file (JSON is YAML) with one pipeline; ``{port}`` is the admin port."""
    pipeline: dict[str, Any] = {
        "name": name,
        "source": source,
        "ordering": ordering,
        "target": {"url": target, "timeout": target_timeout, "mode": "binary"},
        "concurrency": concurrency or {"initial": 16, "min": 1, "max": 64},
        "retry": retry or {"max_attempts": 3, "initial_backoff": "100ms", "max_backoff": "1s"},
        "on_success": list(on_success),
        "on_failure": list(on_failure),
    }
    document = {
        "version": 1,
        "server": {"listen": "127.0.0.1:PORT"},
        "state": {"url": "sqlite:///state.db"},
        "shutdown_timeout": "5s",
        "pipelines": [pipeline],
    }
    return json.dumps(document, indent=1).replace("127.0.0.1:PORT", "127.0.0.1:{port}")


@pytest.fixture
def sqs_bridge(
    bridge_process: Callable[..., BridgeProcess], moto_server: MotoServer
) -> Callable[..., BridgeProcess]:
    """Factory: ``sqs_bridge(**bridge_config kwargs)`` -> a started ``bridge run`` process
    with credentials for the moto server."""

    def start(**kwargs: Any) -> BridgeProcess:
        return bridge_process(bridge_config(**kwargs), env=moto_server.env).start()

    return start
