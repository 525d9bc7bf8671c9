"""Isolation through the embedded source: a failing tenant is moved to its own lane, its
backlog parked in the store, the others keep flowing, and the lane is reclaimed."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict

import pytest

from tests.support.bridge import read_jsonl
from tests.support.function_server import Call, Reply
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: mt
    source: {{type: embedded}}
    tenant: {{from: header, name: x-tenant}}
    target: {{url: "{url}", timeout: 5s}}
    concurrency: {{initial: 16, min: 1, max: 64}}
    retry: {{max_attempts: 1000, initial_backoff: 50ms, max_backoff: 200ms, max_age: 1h}}
    isolation:
      enabled: {enabled}
      window: 10s
      min_samples: 10
      spill_after: 20
      idle_reclaim: 1s
    on_success: [{{type: file, path: ok.jsonl}}]
    on_failure: [{{type: file, path: failed.jsonl}}]
"""


def post(bridge, tenant: str, n: int, keys: int = 3) -> list[str]:
    ids = []
    for i in range(n):
        headers = {
            "ce-id": f"{tenant}-{i}",
            "ce-source": "/t",
            "ce-type": "t",
            "ce-specversion": "1.0",
            "ce-partitionkey": f"{tenant}-k{i % keys}",
            "x-tenant": tenant,
            "Content-Type": "application/json",
        }
        status, _ = bridge.post_event("mt", json.dumps({"seq": i // keys}).encode(), headers)
        assert status == 202
        ids.append(f"{tenant}-{i}")
    return ids


async def test_a_failing_tenant_is_isolated_parked_and_reclaimed(
    tmp_path, function_server, bridge_process
):
    broken = True

    def behaviour(call: Call) -> Reply:
        if call.event_id.startswith("A-") and broken:
            return Reply(500, {"error": "A's backend is down"})
        return Reply(200, {"ok": call.event_id})

    fn = await function_server(behaviour).start()
    bridge = bridge_process(CONFIG.format(url=fn.url, enabled="true")).start()
    a_ids = await asyncio.to_thread(post, bridge, "A", 200)
    await wait_until(lambda: len(fn.calls) >= 30, 10, "A failing")
    others = []
    for tenant in "BCD":
        others += await asyncio.to_thread(post, bridge, tenant, 50)
    done = lambda: {r["subject"] for r in read_jsonl(tmp_path / "ok.jsonl")}  # noqa: E731
    await wait_until(lambda: set(others) <= done(), 30, "B, C, D done while A fails")
    _, status = bridge.get("/v1/pipelines")
    pipeline = status["pipelines"][0]
    assert pipeline["isolated_tenants"] == ["A"]
    lane = {lane["name"]: lane for lane in pipeline["lanes"]}["tenant:A"]
    assert lane["max"] == 16, "a dedicated lane holds at most max_share (25%) of 64"
    assert pipeline["parked"] > 0, "A's backlog was parked in the store"
    assert status["pipelines"][0]["lag"]["queue"] < 200, "parked messages were acked"
    _, metrics = bridge.get("/metrics")
    assert 'bridge_isolated_tenants{pipeline="mt"} 1.0' in metrics
    assert 'bridge_concurrency_limit{lane="tenant:A",pipeline="mt"}' in metrics
    broken = False
    await wait_until(lambda: set(a_ids) <= done(), 60, "A recovered and finished")
    results = read_jsonl(tmp_path / "ok.jsonl")
    assert Counter(r["subject"] for r in results) == Counter(a_ids + others)
    assert read_jsonl(tmp_path / "failed.jsonl") == []
    per_key = defaultdict(list)
    for call in fn.calls:
        if call.event_id.startswith("A-") and not broken:
            per_key[call.key].append(call.data["seq"])
    first_success = {}
    for r in results:
        if r["subject"].startswith("A-"):
            first_success.setdefault(r["partitionkey"], []).append(int(r["subject"][2:]))
    assert all(order == sorted(order) for order in first_success.values()), "A's keys kept order"
    await wait_until(
        lambda: bridge.get("/v1/pipelines")[1]["pipelines"][0]["isolated_tenants"] == [],
        20,
        "reclaim",
    )
    log = bridge.log()
    assert "tenant A isolated" in log
    assert "reclaimed into the shared lane" in log
    assert bridge.terminate() == 0


async def test_without_isolation_everyone_shares_one_lane(
    tmp_path, function_server, bridge_process
):
    fn = await function_server(
        lambda call: Reply(500) if call.event_id.startswith("A-") else Reply(200)
    ).start()
    bridge = bridge_process(CONFIG.format(url=fn.url, enabled="false")).start()
    await asyncio.to_thread(post, bridge, "A", 100)
    others = await asyncio.to_thread(post, bridge, "B", 30)
    await wait_until(
        lambda: set(others) <= {r["subject"] for r in read_jsonl(tmp_path / "ok.jsonl")},
        30,
        "B done",
    )
    _, status = bridge.get("/v1/pipelines")
    assert status["pipelines"][0]["isolated_tenants"] == []
    assert [lane["name"] for lane in status["pipelines"][0]["lanes"]] == ["shared"]
    assert status["pipelines"][0]["parked"] == 0
    assert bridge.terminate() == 0
