"""Task management through the admin API and the CLI: tenant pause, batch cancel,
re-drive, and every task state reachable."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter

import pytest

from tests.support.bridge import ROOT, read_jsonl
from tests.support.function_server import Call, Reply
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: tm
    source: {{type: embedded}}
    tenant: {{from: header, name: x-tenant}}
    target: {{url: "{url}", timeout: 5s}}
    retry: {{max_attempts: {attempts}, initial_backoff: {backoff}, max_backoff: 5s, max_age: 1h}}
    on_success: [{{type: file, path: ok.jsonl}}]
    on_failure: [{{type: file, path: failed.jsonl}}]
"""


def post(bridge, tenant: str, n: int, prefix: str = "") -> list[str]:
    ids = []
    for i in range(n):
        event_id = f"{prefix or tenant}-{i}"
        headers = {
            "ce-id": event_id,
            "ce-source": "/t",
            "ce-type": "t",
            "ce-specversion": "1.0",
            "x-tenant": tenant,
            "Content-Type": "application/json",
        }
        assert bridge.post_event("tm", json.dumps({"i": i}).encode(), headers)[0] == 202
        ids.append(event_id)
    return ids


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumer_core", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def subjects(path) -> Counter[str]:
    return Counter(r["subject"] for r in read_jsonl(path))


async def test_pausing_a_tenant_holds_only_its_work(tmp_path, function_server, bridge_process):
    fn = await function_server().start()
    bridge = bridge_process(CONFIG.format(url=fn.url, attempts=3, backoff="100ms")).start()
    status, doc = bridge.request("POST", "/v1/pipelines/tm/tenants/acme/pause")
    assert status == 200
    assert doc["paused_tenants"] == ["acme"]
    acme = await asyncio.to_thread(post, bridge, "acme", 20)
    other = await asyncio.to_thread(post, bridge, "globex", 20)
    await wait_until(lambda: set(other) <= set(subjects(tmp_path / "ok.jsonl")), 10, "globex done")
    assert not set(acme) & {c.event_id for c in fn.calls}
    # lists come from the store, where a task's state lands within about a second
    await wait_until(
        lambda: len(bridge.get("/v1/tasks?pipeline=tm&state=paused&tenant=acme")[1]["tasks"]) == 20,
        5,
        "20 paused tasks listed",
    )
    resumed = await cli("pipelines", "resume", "tm", "--url", bridge.url)
    assert resumed.returncode == 0  # resuming the pipeline does not resume the tenant
    await asyncio.sleep(0.5)
    assert not set(acme) & {c.event_id for c in fn.calls}
    status, _ = bridge.request("POST", "/v1/pipelines/tm/tenants/acme/resume")
    assert status == 200
    await wait_until(lambda: set(acme) <= set(subjects(tmp_path / "ok.jsonl")), 10, "acme done")
    assert max(subjects(tmp_path / "ok.jsonl").values()) == 1
    assert bridge.terminate() == 0


async def test_pause_under_load_loses_and_duplicates_nothing(
    tmp_path, function_server, bridge_process
):
    fn = await function_server(lambda call: Reply(200, {"ok": 1}, delay=0.005)).start()
    bridge = bridge_process(CONFIG.format(url=fn.url, attempts=3, backoff="100ms")).start()
    posting = asyncio.create_task(asyncio.to_thread(post, bridge, "acme", 600))
    for _ in range(4):
        await asyncio.sleep(0.3)
        assert (await cli("pipelines", "pause", "tm", "--url", bridge.url)).returncode == 0
        during = len(fn.calls)
        await asyncio.sleep(0.4)
        # calls already in flight when pausing may still finish; nothing new starts
        assert len(fn.calls) - during <= 16
        assert (await cli("pipelines", "resume", "tm", "--url", bridge.url)).returncode == 0
    ids = await posting
    await wait_until(lambda: set(ids) <= set(subjects(tmp_path / "ok.jsonl")), 30, "all done")
    counts = subjects(tmp_path / "ok.jsonl")
    assert len(counts) == 600
    assert max(counts.values()) == 1, "pause and resume must not duplicate"
    assert Counter(c.event_id for c in fn.calls) == Counter(ids)
    assert bridge.terminate() == 0


async def test_batch_cancel_then_redrive_recovers_a_bad_deploy(
    tmp_path, function_server, bridge_process
):
    deploy_is_bad = True

    def behaviour(call: Call) -> Reply:
        if deploy_is_bad:
            return Reply(500, {"error": "bad deploy"})
        return Reply(200, {"fixed": call.event_id})

    fn = await function_server(behaviour).start()
    bridge = bridge_process(CONFIG.format(url=fn.url, attempts=2, backoff="2s")).start()
    failing = await asyncio.to_thread(post, bridge, "acme", 10)
    await wait_until(lambda: len(read_jsonl(tmp_path / "failed.jsonl")) == 10, 20, "10 failures")
    # a second batch is stuck retrying; cancel all of it in one call
    stuck = await asyncio.to_thread(post, bridge, "globex", 5)
    await wait_until(
        lambda: bridge.get("/v1/tasks/tm:globex-0")[1].get("state") == "retrying",
        10,
        "globex retrying",
    )
    status, doc = bridge.request(
        "POST",
        "/v1/tasks/cancel",
        json.dumps({"pipeline": "tm", "tenant": "globex"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert status == 202
    assert doc["cancelled"] >= 1
    await wait_until(
        lambda: set(stuck) <= set(subjects(tmp_path / "failed.jsonl")),
        20,
        "globex cancelled or failed",
    )
    kinds = {
        r["subject"]: r["data"]["error"]["kind"] for r in read_jsonl(tmp_path / "failed.jsonl")
    }
    assert "cancelled" in {kinds[i] for i in stuck}
    # the function is fixed: re-drive acme's failures with a fresh attempt budget
    deploy_is_bad = False
    status, doc = bridge.request(
        "POST",
        "/v1/tasks/redrive",
        json.dumps({"pipeline": "tm", "tenant": "acme"}).encode(),
        {"Content-Type": "application/json"},
    )
    assert (status, doc) == (202, {"redriven": 10})
    await wait_until(lambda: set(failing) <= set(subjects(tmp_path / "ok.jsonl")), 20, "re-driven")
    _, task = bridge.get("/v1/tasks/tm:acme-3")
    assert task["state"] == "succeeded"
    assert task["attempts"] == 3, "two failed attempts kept, one fresh success"
    assert [a["outcome"] for a in task["history"]] == ["retryable", "retryable", "succeeded"]
    assert task["id"] == "tm:acme-3"
    status, doc = bridge.request(
        "POST", "/v1/tasks/redrive", json.dumps({"pipeline": "tm", "tenant": "acme"}).encode()
    )
    assert doc == {"redriven": 0}, "nothing failed is left"
    assert bridge.request("POST", "/v1/tasks/redrive", b"{}")[0] == 400
    assert bridge.request("POST", "/v1/tasks/cancel", b"[1]")[0] == 400
    assert bridge.terminate() == 0


async def test_cli_shows_and_cancels_a_task(tmp_path, function_server, bridge_process):
    fn = await function_server(lambda call: Reply(429, headers={"Retry-After": "30"})).start()
    bridge = bridge_process(CONFIG.format(url=fn.url, attempts=5, backoff="100ms")).start()
    await asyncio.to_thread(post, bridge, "acme", 1)
    await wait_until(lambda: len(fn.calls) == 1, 10, "first attempt")
    await wait_until(
        lambda: bridge.get("/v1/tasks/tm:acme-0")[1].get("state") == "retrying", 10, "retrying"
    )
    shown = await cli("tasks", "show", "tm:acme-0", "--url", bridge.url)
    assert shown.returncode == 0
    assert "state: retrying" in shown.stdout
    assert "attempt 1: throttled status=429" in shown.stdout
    cancelled = await cli("tasks", "cancel", "tm:acme-0", "--url", bridge.url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled tm:acme-0 (was retrying)" in cancelled.stdout
    again = await cli("tasks", "cancel", "tm:acme-0", "--url", bridge.url)
    assert again.returncode == 1
    assert "HTTP 409" in again.stderr
    missing = await cli("tasks", "show", "tm:nope", "--url", bridge.url)
    assert missing.returncode == 1
    assert "HTTP 404" in missing.stderr
    assert bridge.terminate() == 0


async def test_cancel_a_running_task_discards_its_answer(tmp_path, function_server, bridge_process):
    fn = await function_server(lambda call: Reply(200, {"late": True}, delay=1.5)).start()
    bridge = bridge_process(CONFIG.format(url=fn.url, attempts=3, backoff="100ms")).start()
    await asyncio.to_thread(post, bridge, "acme", 1)
    await wait_until(lambda: len(fn.calls) == 1, 10, "running")
    status, doc = bridge.request("POST", "/v1/tasks/tm:acme-0/cancel")
    assert (status, doc["was"]) == (202, "running")
    await wait_until(lambda: len(read_jsonl(tmp_path / "failed.jsonl")) == 1, 10, "cancelled")
    (failed,) = read_jsonl(tmp_path / "failed.jsonl")
    assert failed["data"]["error"]["kind"] == "cancelled"
    assert read_jsonl(tmp_path / "ok.jsonl") == [], "the function's late answer is discarded"
    assert bridge.get("/v1/tasks/tm:acme-0")[1]["state"] == "cancelled"
    assert bridge.terminate() == 0


async def test_cancel_pending_and_paused_tasks(tmp_path, function_server, bridge_process):
    fn = await function_server().start()
    bridge = bridge_process(CONFIG.format(url=fn.url, attempts=3, backoff="100ms")).start()
    bridge.request("POST", "/v1/pipelines/tm/tenants/acme/pause")
    await asyncio.to_thread(post, bridge, "acme", 3)
    await wait_until(
        lambda: bridge.get("/v1/tasks/tm:acme-1")[1].get("state") == "paused", 10, "paused"
    )
    status, doc = bridge.request("POST", "/v1/tasks/tm:acme-1/cancel")
    assert (status, doc["was"]) == (202, "paused")
    await wait_until(lambda: len(read_jsonl(tmp_path / "failed.jsonl")) == 1, 10, "cancelled")
    bridge.request("POST", "/v1/pipelines/tm/tenants/acme/resume")
    await wait_until(lambda: len(read_jsonl(tmp_path / "ok.jsonl")) == 2, 10, "the others ran")
    assert {c.event_id for c in fn.calls} == {"acme-0", "acme-2"}
    assert bridge.terminate() == 0
