"""The intake route, the token, and the admin API of a running bridge."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from tests.support.bridge import ROOT, read_jsonl
from tests.support.function_server import Reply
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}", token: "${{BRIDGE_TOKEN:-}}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: jobs
    source: {{type: embedded, max_body_bytes: 1000}}
    target: {{url: "{url}", timeout: 5s}}
    on_success: [{{type: file, path: ok.jsonl}}]
"""

AUTH = {"Authorization": "Bearer t0ken"}


async def cli(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, args, **kwargs)  # type: ignore[call-overload]


async def test_intake_answers_4xx_for_bad_requests(tmp_path, function_server, bridge_process):
    fn = await function_server().start()
    bridge = bridge_process(CONFIG.format(url=fn.url)).start()
    status, doc = bridge.post_event("nope", b"{}")
    assert (status, doc["error"]) == (404, "no pipeline 'nope'")
    status, doc = bridge.post_event("jobs", b"x" * 1001, {"Content-Type": "text/plain"})
    assert status == 413
    status, doc = bridge.post_event(
        "jobs", b'{"id": "1"}', {"Content-Type": "application/cloudevents+json"}
    )
    assert status == 400
    assert doc["error"].startswith("malformed CloudEvent")
    status, doc = bridge.post_event("jobs", b"{}", {"ce-id": "x", "ce-specversion": "1.0"})
    assert status == 400
    status, doc = bridge.post_event("jobs", b"x" * 1000, {"Content-Type": "text/plain"})
    assert status == 202
    await wait_until(lambda: len(read_jsonl(tmp_path / "ok.jsonl")) == 1, 10, "the valid one")
    assert len(fn.calls) == 1
    assert bridge.terminate() == 0


async def test_token_guards_every_v1_route(tmp_path, function_server, bridge_process):
    fn = await function_server().start()
    bridge = bridge_process(CONFIG.format(url=fn.url), env={"BRIDGE_TOKEN": "t0ken"}).start()
    for method, path in (
        ("GET", "/v1/pipelines"),
        ("GET", "/v1/tasks"),
        ("POST", "/v1/pipelines/jobs/events"),
        ("POST", "/v1/pipelines/jobs/pause"),
        ("GET", "/v1/tasks/jobs:x"),
    ):
        status, _ = bridge.request(method, path, b"{}" if method == "POST" else None)
        assert status == 401, path
        status, _ = bridge.request(method, path, None, {"Authorization": "Bearer wrong"})
        assert status == 401, path
    assert bridge.get("/healthz")[0] == 200
    assert bridge.get("/metrics")[0] == 200
    status, doc = bridge.post_event("jobs", b"{}", {**AUTH, "Content-Type": "application/json"})
    assert status == 202
    status, _ = bridge.request("GET", f"/v1/tasks/{doc['id']}", None, AUTH)
    assert status in (200, 404)  # may not be stored yet; never 401
    assert "t0ken" not in bridge.log()
    assert bridge.terminate() == 0


async def test_pause_holds_work_and_resume_releases_it(tmp_path, function_server, bridge_process):
    fn = await function_server().start()
    bridge = bridge_process(CONFIG.format(url=fn.url)).start()
    status, doc = bridge.request("POST", "/v1/pipelines/jobs/pause")
    assert (status, doc["state"]) == (200, "paused")
    for i in range(20):
        assert bridge.post_event("jobs", json.dumps({"i": i}).encode())[0] == 202
    await asyncio.sleep(0.5)
    assert fn.calls == []
    assert bridge.get("/v1/pipelines")[1]["pipelines"][0]["lag"]["queue"] == 20
    status, doc = bridge.request("POST", "/v1/pipelines/jobs/resume")
    assert (status, doc["state"]) == (200, "running")
    await wait_until(lambda: len(read_jsonl(tmp_path / "ok.jsonl")) == 20, 10, "20 results")
    assert len(fn.calls) == 20
    assert bridge.request("POST", "/v1/pipelines/nope/pause")[0] == 404
    assert bridge.terminate() == 0


async def test_cancel_a_retrying_task_fails_it_with_kind_cancelled(
    tmp_path, function_server, bridge_process
):
    fn = await function_server(lambda call: Reply(503, headers={"Retry-After": "30"})).start()
    text = CONFIG.format(url=fn.url) + "    on_failure: [{type: file, path: failed.jsonl}]\n"
    bridge = bridge_process(text).start()
    status, doc = bridge.post_event(
        "jobs", b"{}", {"ce-id": "c1", "ce-source": "/t", "ce-type": "t", "ce-specversion": "1.0"}
    )
    assert (status, doc["id"]) == (202, "jobs:c1")
    await wait_until(lambda: len(fn.calls) == 1, 10, "first attempt")
    await wait_until(
        lambda: bridge.get("/v1/tasks/jobs:c1")[1].get("state") == "retrying", 10, "retrying"
    )
    status, doc = bridge.request("POST", "/v1/tasks/jobs:c1/cancel")
    assert (status, doc["was"]) == (202, "retrying")
    await wait_until(lambda: len(read_jsonl(tmp_path / "failed.jsonl")) == 1, 10, "cancel result")
    (failed,) = read_jsonl(tmp_path / "failed.jsonl")
    assert failed["data"]["error"]["kind"] == "cancelled"
    assert bridge.get("/v1/tasks/jobs:c1")[1]["state"] == "cancelled"
    assert bridge.request("POST", "/v1/tasks/jobs:c1/cancel")[0] == 409
    assert bridge.request("POST", "/v1/tasks/jobs:zzz/cancel")[0] == 404
    assert len(fn.calls) == 1
    assert bridge.terminate() == 0


async def test_tasks_list_filters_and_pages(tmp_path, function_server, bridge_process):
    fn = await function_server().start()
    bridge = bridge_process(CONFIG.format(url=fn.url)).start()
    for i in range(7):
        bridge.post_event(
            "jobs", json.dumps({"i": i}).encode(), {"Content-Type": "application/json"}
        )
    await wait_until(lambda: len(read_jsonl(tmp_path / "ok.jsonl")) == 7, 10, "7 results")
    _, page1 = bridge.get("/v1/tasks?pipeline=jobs&state=succeeded&limit=4")
    assert len(page1["tasks"]) == 4
    _, page2 = bridge.get(f"/v1/tasks?pipeline=jobs&state=succeeded&limit=4&after={page1['next']}")
    assert len(page2["tasks"]) == 3
    assert page2["next"] is None
    ids = [t["id"] for t in page1["tasks"] + page2["tasks"]]
    assert len(set(ids)) == 7
    _, none = bridge.get("/v1/tasks?state=failed")
    assert none["tasks"] == []
    assert bridge.get("/v1/tasks?state=bogus")[0] == 400
    # the CLI client shows the same
    listing = await cli(
        [sys.executable, "-m", "consumer_core", "tasks", "list", "--url", bridge.url, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert len(json.loads(listing.stdout)["tasks"]) == 7
    shown = await cli(
        [sys.executable, "-m", "consumer_core", "pipelines", "list", "--url", bridge.url],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    table = shown.stdout
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATE", "SOURCE"]
    assert "jobs" in table
    assert bridge.terminate() == 0


def test_validate_exits_0_or_2_with_file_line_and_path(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(CONFIG.format(url="http://127.0.0.1:1/fn").replace("{port}", "8099"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        CONFIG.format(url="http://127.0.0.1:1/fn")
        .replace("timeout: 5s", "timeout: 3 parsecs")
        .replace("{port}", "8099")
    )
    run = [sys.executable, "-m", "consumer_core", "validate"]
    ok = subprocess.run([*run, str(good)], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    fail = subprocess.run([*run, str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert fail.returncode == 2
    assert (
        fail.stderr.strip()
        == f"{bad}:8: pipelines[0].target.timeout: '3 parsecs' is not a duration"
    )
    started = subprocess.run(
        [sys.executable, "-m", "consumer_core", "run", str(bad)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert started.returncode == 2
    assert "is not a duration" in started.stderr
