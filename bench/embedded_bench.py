"""Embedded source -> local function -> file sink: events per second, binary and batch.

    .venv/bin/python -m bench.embedded_bench [--events 20000]

For each mode: start the bridge with its pipeline paused, post N events (measures the
durable intake rate), resume, and time until every result is in the file (measures the
processing rate). Prints CPU seconds per 10,000 events and the bridge's peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.support import cpu_seconds, free_port, function_server, rss_mb, start, stop, wait_http

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: bench
    source: {{type: embedded}}
    ordering: {ordering}
    target: {{url: "{url}", timeout: 10s, mode: {mode}, batch: {{max_events: 100, max_wait: 5ms}}}}
    concurrency: {{initial: 64, min: 1, max: 64}}
    on_success: [{{type: file, path: ok.jsonl}}]
"""


async def post_all(base: str, n: int, keys: int) -> float:
    body = json.dumps({"order": 1, "items": [{"price": 9.5, "qty": 2}], "pad": "x" * 900})
    started = time.perf_counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                headers = {
                    "ce-id": f"e{i}",
                    "ce-source": "/bench",
                    "ce-type": "bench",
                    "ce-specversion": "1.0",
                    "ce-partitionkey": f"k{i % keys}",
                    "Content-Type": "application/json",
                }
                async with session.post(
                    f"{base}/v1/pipelines/bench/events", data=body, headers=headers
                ) as r:
                    assert r.status == 202, await r.text()

        await asyncio.gather(*(worker() for _ in range(32)))
    return time.perf_counter() - started


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def run_mode(mode: str, n: int, url: str, ordering: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        port = free_port()
        (work / "bridge.yaml").write_text(
            CONFIG.format(port=port, url=url, mode=mode, ordering=ordering)
        )
        bridge = start(
            [sys.executable, "-m", "consumer_core", "--log-level", "warning", "run", "bridge.yaml"],
            cwd=work,
            log=work / "bridge.log",
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(base + "/healthz")
            urllib_post(base + "/v1/pipelines/bench/pause")
            intake = asyncio.run(post_all(base, n, keys=1000))
            cpu0 = cpu_seconds(bridge.pid)
            started = time.perf_counter()
            urllib_post(base + "/v1/pipelines/bench/resume")
            while count_lines(work / "ok.jsonl") < n:
                time.sleep(0.02)
            elapsed = time.perf_counter() - started
            cpu = cpu_seconds(bridge.pid) - cpu0
            return {
                "intake_per_s": n / intake,
                "processed_per_s": n / elapsed,
                "cpu_s_per_10k": cpu / n * 10_000,
                "peak_rss_mb": rss_mb(bridge.pid),
            }
        finally:
            stop(bridge)


def urllib_post(url: str) -> None:
    import urllib.request

    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--ordering", default="key", choices=("key", "none"))
    args = parser.parse_args()
    fn, url = function_server()
    try:
        print(f"{args.events} events of ~1 KiB, 1000 keys, ordering={args.ordering}, window 64")
        header = ("mode", "intake/s", "processed/s", "cpu s/10k", "peak RSS MB")
        print(f"{header[0]:<8} " + " ".join(f"{h:>12}" for h in header[1:]))
        for mode in ("binary", "batch"):
            r = run_mode(mode, args.events, url, args.ordering)
            print(
                f"{mode:<8} {r['intake_per_s']:>12.0f} {r['processed_per_s']:>12.0f} "
                f"{r['cpu_s_per_10k']:>12.2f} {r['peak_rss_mb']:>12.0f}"
            )
    finally:
        stop(fn)


if __name__ == "__main__":
    main()
