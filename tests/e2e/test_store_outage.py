"""The task store going away mid-run: the bridge waits for it, loses nothing, and
carries on when it is back. Uses a private redis-server so the machine's own is untouched."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections import Counter

import pytest

from tests.support.bridge import read_jsonl
from tests.support.function_server import Reply
from tests.support.net import free_port, wait_for_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "redis://127.0.0.1:{redis}/0"}}
pipelines:
  - name: so
    source: {{type: embedded}}
    target: {{url: "{url}", timeout: 5s}}
    on_success: [{{type: file, path: ok.jsonl}}]
"""


def start_redis(port: int, folder) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port("127.0.0.1", port, 10)
    return proc


async def test_store_outage_holds_work_and_loses_nothing(tmp_path, function_server, bridge_process):
    redis_port = free_port()
    redis = start_redis(redis_port, tmp_path)
    try:
        fn = await function_server(lambda call: Reply(200, {"ok": 1}, delay=0.01)).start()
        bridge = bridge_process(CONFIG.format(redis=redis_port, url=fn.url)).start()
        ids = []
        for i in range(300):
            status, doc = await asyncio.to_thread(
                bridge.post_event,
                "so",
                f'{{"i": {i}}}'.encode(),
                {"Content-Type": "application/json"},
            )
            assert status == 202
            ids.append(doc["id"].split(":", 1)[1])
        await wait_until(lambda: len(read_jsonl(tmp_path / "ok.jsonl")) >= 30, 20, "some done")
        redis.kill()
        redis.wait(10)
        await asyncio.sleep(1.5)
        stalled = len(read_jsonl(tmp_path / "ok.jsonl"))
        await asyncio.sleep(1.0)
        # results may still reach the sink, but nothing is settled while the store is down
        assert bridge.get("/healthz")[0] == 200
        assert bridge.get("/v1/pipelines")[1]["pipelines"][0]["lag"]["queue"] > 0
        redis = start_redis(redis_port, tmp_path)
        await wait_until(
            lambda: set(ids) <= {r["subject"] for r in read_jsonl(tmp_path / "ok.jsonl")},
            60,
            "all done",
        )
        counts = Counter(r["subject"] for r in read_jsonl(tmp_path / "ok.jsonl"))
        assert len(counts) == 300
        print(
            f"store outage: {stalled} done before, 0 lost, {sum(counts.values()) - 300} duplicates"
        )
        await wait_until(
            lambda: bridge.get("/v1/pipelines")[1]["pipelines"][0]["lag"]["queue"] == 0,
            20,
            "settled",
        )
        assert "task store unavailable" in bridge.log()
        assert bridge.terminate() == 0
    finally:
        redis.kill()
        redis.wait(10)
