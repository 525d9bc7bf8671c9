"""``bridge run`` with the embedded source, end to end, against a real function server."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from tests.support.bridge import BridgeProcess, read_jsonl
from tests.support.function_server import Call, Reply
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
shutdown_timeout: {shutdown}
pipelines:
  - name: jobs
    source: {{type: embedded}}
    target:
      url: {url}
      timeout: {timeout}
      mode: {mode}
      batch: {{max_events: 50, max_wait: 5ms}}
    concurrency: {{initial: 8, min: 1, max: 64}}
    retry: {{max_attempts: {attempts}, initial_backoff: 20ms, max_backoff: 200ms, max_age: 1h}}
    on_success: [{{type: file, path: ok.jsonl}}]
    on_failure: [{{type: file, path: failed.jsonl}}]
"""


def config(
    url: str, *, mode: str = "binary", attempts: int = 8, timeout: str = "2s", shutdown: str = "30s"
) -> str:
    return CONFIG.format(url=url, mode=mode, attempts=attempts, timeout=timeout, shutdown=shutdown)


def post(bridge: BridgeProcess, n: int, keys: int = 10, start: int = 0) -> list[str]:
    """Post ``n`` binary CloudEvents with ids ``e{i}``, keyed ``k{i % keys}``, carrying
    their per-key sequence number."""
    ids = []
    for i in range(start, start + n):
        key = f"k{i % keys}"
        headers = {
            "ce-id": f"e{i}",
            "ce-source": "/test",
            "ce-type": "job",
            "ce-specversion": "1.0",
            "ce-partitionkey": key,
            "Content-Type": "application/json",
        }
        status, doc = bridge.post_event(
            "jobs", json.dumps({"seq": i // keys, "i": i}).encode(), headers
        )
        assert status == 202, doc
        assert doc == {"id": f"jobs:e{i}"}
        ids.append(f"e{i}")
    return ids


def results(tmp_path: Path) -> tuple[list[dict], list[dict]]:
    return read_jsonl(tmp_path / "ok.jsonl"), read_jsonl(tmp_path / "failed.jsonl")


def assert_key_order(calls: list[Call]) -> None:
    """Per key, the first attempt of each event came in sequence order, and no event
    started before the previous one of its key had finished retrying."""
    last: dict[str, int] = {}
    for call in calls:
        seq = call.data["seq"]
        previous = last.get(call.key, -1)
        assert seq >= previous, f"key {call.key}: seq {seq} after {previous}"
        last[call.key] = seq


async def test_every_event_gets_exactly_one_result_in_key_order(
    tmp_path, function_server, bridge_process
):
    fn = await function_server().start()
    bridge = bridge_process(config(fn.url)).start()
    ids = await asyncio.to_thread(post, bridge, 1000)
    await wait_until(lambda: len(results(tmp_path)[0]) >= 1000, 60, "1000 results")
    await asyncio.sleep(0.3)
    ok, failed = results(tmp_path)
    assert failed == []
    assert Counter(r["subject"] for r in ok) == Counter(ids)
    assert all(r["type"] == "bridge.task.succeeded" and r["attempts"] == 1 for r in ok)
    assert all(r["data"]["echo"]["i"] == int(r["subject"][1:]) for r in ok)
    assert_key_order(fn.calls)
    # results of one key are emitted in order too
    per_key = defaultdict(list)
    for r in ok:
        per_key[r["partitionkey"]].append(r["data"]["echo"]["seq"])
    assert all(seqs == sorted(seqs) for seqs in per_key.values())
    assert bridge.terminate() == 0


async def test_faults_are_retried_and_each_event_has_one_final_result(
    tmp_path, function_server, bridge_process
):
    rng = random.Random(42)
    seen: Counter[str] = Counter()

    def flaky(call: Call) -> Reply:
        seen[call.event_id] += 1
        if seen[call.event_id] > 3:
            return Reply(200, {"ok": call.event_id})
        roll = rng.random()
        if roll < 0.15:
            return Reply(503)
        if roll < 0.25:
            return Reply(429, headers={"Retry-After": "0.05"})
        if roll < 0.30:
            return Reply(200, delay=3.0)  # longer than the 1 s timeout
        if roll < 0.38:
            return Reply(reset=True)
        if roll < 0.42:
            return Reply(500, {"error": "boom"})
        return Reply(200, {"ok": call.event_id})

    fn = await function_server(flaky).start()
    bridge = bridge_process(config(fn.url, timeout="1s")).start()
    ids = await asyncio.to_thread(post, bridge, 300)
    await wait_until(lambda: sum(map(len, results(tmp_path))) >= 300, 90, "300 final results")
    await asyncio.sleep(0.3)
    ok, failed = results(tmp_path)
    assert failed == []
    assert Counter(r["subject"] for r in ok) == Counter(ids)
    retried = [r for r in ok if r["attempts"] > 1]
    assert retried, "the fault injection should have forced retries"
    for r in ok:
        attempts = [c.attempt for c in fn.calls_for(r["subject"])]
        assert attempts[-1] == r["attempts"]
        assert attempts == sorted(attempts)
    assert_key_order(fn.calls)
    _, metrics = bridge.get("/metrics")
    assert 'bridge_retries_total{pipeline="jobs"}' in metrics
    assert bridge.terminate() == 0


async def test_permanent_and_exhausted_failures_reach_on_failure_with_the_reason(
    tmp_path, function_server, bridge_process
):
    def behaviour(call: Call) -> Reply:
        if call.data["i"] == 0:
            return Reply(400, {"error": "bad order"})
        if call.data["i"] == 1:
            return Reply(500, {"error": "always broken"})
        return Reply(200, {"fine": True})

    fn = await function_server(behaviour).start()
    bridge = bridge_process(config(fn.url, attempts=3)).start()
    await asyncio.to_thread(post, bridge, 20, 20)
    await wait_until(lambda: sum(map(len, results(tmp_path))) >= 20, 30, "20 results")
    ok, failed = results(tmp_path)
    assert len(ok) == 18
    by_subject = {r["subject"]: r for r in failed}
    client = by_subject["e0"]
    assert client["type"] == "bridge.task.failed"
    assert client["attempts"] == 1
    assert client["data"]["error"]["kind"] == "client_error"
    assert client["data"]["error"]["status"] == 400
    assert "bad order" in client["data"]["error"]["message"]
    assert client["data"]["event"]["id"] == "e0"
    assert client["data"]["event"]["data"] == {"seq": 0, "i": 0}
    exhausted = by_subject["e1"]
    assert exhausted["attempts"] == 3
    assert exhausted["data"]["error"]["kind"] == "server_error"
    assert "gave up after 3 attempts" in exhausted["data"]["error"]["message"]
    assert len(fn.calls_for("e1")) == 3
    status, task = bridge.get("/v1/tasks/jobs:e1")
    assert status == 200
    assert task["state"] == "failed"
    assert task["attempts"] == 3
    assert [a["status"] for a in task["history"]] == [500, 500, 500]
    lines = [json.loads(line) for line in bridge.log().splitlines() if line.startswith("{")]
    (logged,) = [line for line in lines if line.get("task_id") == "jobs:e1"]
    assert logged["level"] == "warning"
    assert logged["pipeline"] == "jobs"
    assert logged["tenant"] == "default"
    assert len(logged["trace_id"]) == 32
    assert not [line for line in lines if "e5" in line.get("msg", "")], "no line per success"
    assert all(
        task["timestamps"][s] is not None for s in ("received", "started", "finished", "delivered")
    )
    assert bridge.terminate() == 0


async def test_kill_9_and_restart_lose_nothing(tmp_path, function_server, bridge_process):
    def slowish(call: Call) -> Reply:
        return Reply(200, {"ok": True}, delay=0.01)

    fn = await function_server(slowish).start()
    bridge = bridge_process(config(fn.url)).start()
    ids = await asyncio.to_thread(post, bridge, 600)
    await wait_until(lambda: len(results(tmp_path)[0]) >= 50, 30, "some results")
    bridge.kill()
    done_before = len(results(tmp_path)[0])
    assert done_before < 600, "the kill should land mid-run"
    bridge.start()
    await wait_until(
        lambda: set(ids) <= {r["subject"] for r in results(tmp_path)[0]}, 60, "every event done"
    )
    ok, failed = results(tmp_path)
    assert failed == []
    counts = Counter(r["subject"] for r in ok)
    duplicates = sum(c - 1 for c in counts.values())
    # only work in flight at the kill may be repeated: at most the window (max 64)
    assert duplicates <= 64, duplicates
    print(f"kill -9 after {done_before} results: 0 lost, {duplicates} duplicates")
    assert bridge.terminate() == 0


async def test_sigterm_drains_in_flight_work_and_hands_back_the_rest(
    tmp_path, function_server, bridge_process
):
    fn = await function_server(lambda call: Reply(200, {"ok": True}, delay=0.3)).start()
    bridge = bridge_process(config(fn.url, shutdown="10s")).start()
    ids = await asyncio.to_thread(post, bridge, 200, 200)
    await wait_until(lambda: len(fn.calls) >= 8, 10, "calls in flight")
    stopping = time.monotonic()
    assert await asyncio.to_thread(bridge.terminate) == 0
    # only the calls in flight (0.3 s each) are waited for, not the 10 s timeout
    assert time.monotonic() - stopping < 8
    first_run = {r["subject"] for r in results(tmp_path)[0]}
    started = {c.event_id for c in fn.calls}
    assert started <= first_run, (
        "every invocation started before SIGTERM finished and was delivered"
    )
    assert len(first_run) < 200
    bridge.start()
    await wait_until(
        lambda: set(ids) <= {r["subject"] for r in results(tmp_path)[0]}, 60, "all done"
    )
    counts = Counter(r["subject"] for r in results(tmp_path)[0])
    assert max(counts.values()) == 1, "a graceful stop must not cause duplicates"
    assert bridge.terminate() == 0


async def test_a_sink_that_is_down_holds_messages_until_it_recovers(
    tmp_path, function_server, bridge_process
):
    sink_up = False
    received: list[dict] = []

    def webhook(call: Call) -> Reply:
        if not sink_up:
            return Reply(503)
        received.append(call.attributes["subject"])
        return Reply(200)

    fn = await function_server().start()
    hook = await function_server(webhook).start()
    text = config(fn.url).replace(
        "on_success: [{type: file, path: ok.jsonl}]",
        f"on_success: [{{type: webhook, url: {hook.url}, mode: structured}}]",
    )
    bridge = bridge_process(text).start()
    ids = await asyncio.to_thread(post, bridge, 50)
    await wait_until(lambda: len(hook.calls) >= 5, 10, "webhook attempts")
    _, pipelines = bridge.get("/v1/pipelines")
    assert pipelines["pipelines"][0]["lag"]["queue"] == 50, "nothing acked while the sink is down"
    sink_up = True
    await wait_until(lambda: set(ids) <= set(received), 30, "all delivered")
    assert len(received) == len(ids), "each result delivered once after the sink came back"
    await wait_until(
        lambda: bridge.get("/v1/pipelines")[1]["pipelines"][0]["lag"]["queue"] == 0, 10, "acked"
    )
    assert bridge.terminate() == 0


async def test_a_finished_event_id_is_not_invoked_again(tmp_path, function_server, bridge_process):
    fn = await function_server().start()
    bridge = bridge_process(config(fn.url)).start()
    await asyncio.to_thread(post, bridge, 5)
    await wait_until(lambda: len(results(tmp_path)[0]) == 5, 10, "5 results")
    await asyncio.to_thread(post, bridge, 5)  # the same ids again
    await asyncio.sleep(1.0)
    assert len(fn.calls) == 5
    assert len(results(tmp_path)[0]) == 5
    _, metrics = bridge.get("/metrics")
    assert 'bridge_deduplicated_total{pipeline="jobs"} 5.0' in metrics
    assert bridge.terminate() == 0


@pytest.mark.parametrize("mode", ["structured", "batch"])
async def test_structured_and_batch_modes(tmp_path, function_server, bridge_process, mode):
    def behaviour(call: Call) -> Reply:
        if call.data["i"] == 7 and call.attempt == 1:
            return Reply(500)
        return Reply(200, {"n": call.data["i"]})

    fn = await function_server(behaviour).start()
    bridge = bridge_process(config(fn.url, mode=mode)).start()
    ids = await asyncio.to_thread(post, bridge, 200)
    await wait_until(lambda: len(results(tmp_path)[0]) >= 200, 30, "200 results")
    ok, failed = results(tmp_path)
    assert failed == []
    assert Counter(r["subject"] for r in ok) == Counter(ids)
    assert {r["subject"]: r["data"] for r in ok}["e3"] == {"n": 3}
    assert {r["subject"]: r["attempts"] for r in ok}["e7"] == 2
    if mode == "batch":
        assert fn.requests < 150, "batch mode sends several events per request"
        ct = fn.calls[0].headers["content-type"]
        assert ct.startswith("application/cloudevents-batch+json")
    assert bridge.terminate() == 0


async def test_requests_carry_traceparent_attempt_and_configured_headers(
    tmp_path, function_server, bridge_process
):
    fn = await function_server().start()
    text = config(fn.url).replace(
        "mode: binary", "mode: binary\n      headers: {X-Api-Key: sekret}"
    )
    bridge = bridge_process(text).start()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    status, _ = bridge.post_event(
        "jobs", b"plain text", {"traceparent": parent, "Content-Type": "text/plain"}
    )
    assert status == 202
    await wait_until(lambda: len(results(tmp_path)[0]) == 1, 10, "1 result")
    call = fn.calls[0]
    assert call.headers["x-bridge-attempt"] == "1"
    assert call.headers["x-api-key"] == "sekret"
    assert call.headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert call.headers["ce-type"] == "bridge.message"
    assert call.data == "plain text"
    (result,) = results(tmp_path)[0]
    assert result["traceparent"].split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
    assert bridge.terminate() == 0


async def test_a_task_past_max_age_fails_as_expired(tmp_path, function_server, bridge_process):
    fn = await function_server(lambda call: Reply(500)).start()
    text = (
        config(fn.url)
        .replace("max_age: 1h", "max_age: 300ms")
        .replace("max_backoff: 200ms", "max_backoff: 1s")
    )
    bridge = bridge_process(text).start()
    await asyncio.to_thread(post, bridge, 1)
    await wait_until(lambda: len(results(tmp_path)[1]) == 1, 15, "failure")
    (failed,) = results(tmp_path)[1]
    assert failed["data"]["error"]["kind"] == "expired"
    assert "max_age" in failed["data"]["error"]["message"]
    assert 1 < failed["attempts"] < 8
    assert bridge.terminate() == 0
