"""Shutdown closes the source only after the receive loop ended.

A receive still running when the source closed read from a closed database (the
embedded source's): the pipeline died with ``StoreError: ... is not open`` and the
process exited 1 instead of 0.
"""

from __future__ import annotations

import asyncio

import pytest

from consumer_core.config import load_config_text
from consumer_core.runner import Runner
from tests.support.function_server import Reply
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{url: "sqlite:///{dir}/state.db"}}
pipelines:
  - name: q
    source: {{type: embedded}}
    target: {{url: "{url}", timeout: 5s}}
    on_success: [{{type: file, path: "{dir}/ok.jsonl"}}]
"""


async def test_the_source_closes_after_the_last_receive_returned(tmp_path, function_server):
    fn = await function_server(lambda call: Reply(200, {})).start()
    config = load_config_text(CONFIG.format(port=free_port(), dir=tmp_path, url=fn.url))
    runner = Runner(config, base_dir=tmp_path)
    source = runner.pipelines["q"].source
    seen: list[str] = []
    inside = asyncio.Event()
    receive, close = source.receive, source.close

    async def slow_receive(max_messages: int, timeout: float):
        inside.set()
        seen.append("receive")
        await asyncio.sleep(0.3)  # stop() lands while a receive is under way
        got = await receive(max_messages, 0)
        seen.append("received")
        inside.clear()
        return got

    async def recorded_close() -> None:
        seen.append("close")
        await close()
        await asyncio.sleep(0.5)  # a receive still under way would now read a closed queue

    source.receive, source.close = slow_receive, recorded_close  # type: ignore[method-assign]
    running = asyncio.create_task(runner.run(install_signals=False))
    await asyncio.wait_for(runner.started.wait(), 10)
    inside.clear()
    await asyncio.wait_for(inside.wait(), 5)  # stop inside a receive, not between two
    runner.stop()
    await asyncio.wait_for(running, 15)  # raised StoreError ("... is not open") before
    assert seen.index("close") > seen.index("received"), seen
    assert seen[-1] == "close"
