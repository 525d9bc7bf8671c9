"""Kafka fixtures: one tansu broker per session (see ``tansu.py`` for the helpers).

A test that cannot start tansu fails; it never skips.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.integration.kafka.tansu import Tansu, tansu_binary
from tests.support.net import free_port, wait_for_port


@pytest.fixture(scope="session")
def tansu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tansu]:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=30)
        broker = Tansu(f"127.0.0.1:{port}", process, log)
        broker.admin.list_topics(timeout=30)
        yield broker
    finally:
        # In-memory storage has nothing to flush; a graceful stop waits ~5 s for clients.
        process.kill()
        process.wait(10)
