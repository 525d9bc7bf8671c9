"""RabbitMQ fixtures: the broker on 127.0.0.1:5672, a fresh vhost per test (deleted
afterwards, with every queue and exchange in it), and a small blocking client.

The broker must be running (``scripts/services.sh`` starts it): a test that cannot
reach it fails, it never skips. The blocking client is meant to be called through
``asyncio.to_thread`` from async tests, so the in-process function server keeps
answering meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pika
import pytest

from tests.support.net import wait_for_port

HOST = "127.0.0.1"
PORT = 5672


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


@dataclass
class Message:
    """One message read back from a queue."""

    routing_key: str
    body: bytes
    headers: dict[str, Any] = field(default_factory=dict)
    content_type: str | None = None
    message_id: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


class Broker:
    """Blocking helpers over one vhost; every call opens its own short connection."""

    def __init__(self, vhost: str) -> None:
        self.vhost = vhost
        self.url = f"amqp://guest:guest@{HOST}:{PORT}/{quote(vhost, safe='')}"

    def _connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(pika.URLParameters(self.url))

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        with self._connect() as conn:
            conn.channel().queue_declare(name, durable=True, arguments=arguments)

    def delete_queue(self, name: str) -> None:
        with self._connect() as conn:
            conn.channel().queue_delete(name)

    def declare_exchange(self, name: str, kind: str = "direct") -> None:
        with self._connect() as conn:
            conn.channel().exchange_declare(name, exchange_type=kind, durable=True)

    def bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        with self._connect() as conn:
            channel = conn.channel()
            channel.queue_declare(queue, durable=True)
            channel.queue_bind(queue, exchange, routing_key=routing_key)

    def publish(
        self, queue: str, messages: Iterable[tuple[bytes, pika.BasicProperties | None]]
    ) -> int:
        """Publish to ``queue`` through the default exchange; return how many."""
        count = 0
        with self._connect() as conn:
            channel = conn.channel()
            for body, properties in messages:
                channel.basic_publish("", queue, body, properties)
                count += 1
        return count

    def counts(self, queue: str) -> tuple[int, int]:
        """(messages ready, consumers) of ``queue``."""
        with self._connect() as conn:
            frame = conn.channel().queue_declare(queue, passive=True)
            return int(frame.method.message_count), int(frame.method.consumer_count)

    def depth(self, queue: str) -> int:
        return self.counts(queue)[0]

    def drain(self, queue: str, *, idle: float = 0.5) -> list[Message]:
        """Every message of ``queue`` (consumed and acked), in queue order."""
        out: list[Message] = []
        with self._connect() as conn:
            channel = conn.channel()
            for method, properties, body in channel.consume(
                queue, auto_ack=True, inactivity_timeout=idle
            ):
                if method is None:
                    break
                out.append(
                    Message(
                        routing_key=method.routing_key,
                        body=body,
                        headers=dict(properties.headers or {}),
                        content_type=properties.content_type,
                        message_id=properties.message_id,
                    )
                )
            channel.cancel()
        return out

    def close_all_connections(self) -> None:
        rabbitmqctl("close_all_connections", "-p", self.vhost, "closed by a bridge test")


@pytest.fixture(scope="session")
def rabbitmq_up() -> None:
    """Fail (not skip) when nothing listens on 5672: start it with scripts/services.sh."""
    wait_for_port(HOST, PORT, timeout=10)


def _vhost() -> Iterator[Broker]:
    vhost = f"bridge-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield Broker(vhost)
    finally:
        rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def broker(rabbitmq_up: None) -> Iterator[Broker]:
    """A fresh vhost on the local broker (guest has all rights), deleted after the test."""
    yield from _vhost()


@pytest.fixture(scope="module")
def module_broker(rabbitmq_up: None) -> Iterator[Broker]:
    """One vhost for a whole module (deleted after it); tests use unique names in it."""
    yield from _vhost()


@pytest.fixture
def names(module_broker: Broker) -> Iterator[Callable[[str], str]]:
    """``names("in")`` -> a name unique to this test; its queue is deleted afterwards."""
    suffix = uuid.uuid4().hex[:8]
    made: list[str] = []

    def name(base: str) -> str:
        made.append(f"{base}-{suffix}")
        return made[-1]

    yield name
    with module_broker._connect() as conn:
        channel = conn.channel()
        for queue in made:
            channel.queue_delete(queue)
            channel.exchange_delete(queue)
