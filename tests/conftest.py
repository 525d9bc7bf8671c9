"""Fixtures shared by every test: real function servers and real bridge processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bridge import BridgeProcess
from tests.support.function_server import Behaviour, FunctionServer, echo


@pytest.fixture
async def function_server() -> AsyncIterator[Callable[..., FunctionServer]]:
    """Factory: ``await function_server(behaviour).start()`` -> a running server."""
    servers: list[FunctionServer] = []

    def make(behaviour: Behaviour = echo, **kwargs: Any) -> FunctionServer:
        server = FunctionServer(behaviour, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
def bridge_process(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    """Factory for ``bridge run`` subprocesses, all killed at teardown."""
    processes: list[BridgeProcess] = []

    def make(
        config: str, env: dict[str, str] | None = None, workdir: Path | None = None
    ) -> BridgeProcess:
        process = BridgeProcess(workdir or tmp_path, config, env)
        processes.append(process)
        return process

    yield make
    for process in processes:
        process.stop()
