"""Two ``bridge run`` processes sharing one PostgreSQL store behave as one service."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.support.bridge import read_jsonl
from tests.support.function_server import Call, Reply
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "{store}"}}
pipelines:
  - name: shared
    source: {{type: embedded}}
    tenant: {{from: header, name: x-tenant}}
    target: {{url: "{url}", timeout: 5s}}
    retry: {{max_attempts: 50, initial_backoff: 200ms, max_backoff: 1s}}
    on_success: [{{type: file, path: ok.jsonl}}]
    on_failure: [{{type: file, path: failed.jsonl}}]
"""


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    name = f"bridge_instances_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect("postgresql://postgres@127.0.0.1:5432/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def event(event_id: str, tenant: str = "t") -> tuple[bytes, dict[str, str]]:
    headers = {
        "ce-id": event_id,
        "ce-source": "/t",
        "ce-type": "t",
        "ce-specversion": "1.0",
        "x-tenant": tenant,
        "Content-Type": "application/json",
    }
    return json.dumps({"id": event_id}).encode(), headers


async def test_two_instances_share_tasks_pauses_cancels_and_dedup(
    tmp_path, function_server, bridge_process, postgres_url
):
    stuck: set[str] = set()

    def behaviour(call: Call) -> Reply:
        if call.event_id in stuck:
            return Reply(503)
        return Reply(200, {"ok": call.event_id})

    fn = await function_server(behaviour).start()
    config = CONFIG.format(store=postgres_url, url=fn.url)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = bridge_process(config, workdir=tmp_path / "a").start()
    second = bridge_process(config, workdir=tmp_path / "b").start()

    # the API of either instance shows every task
    for i in range(5):
        assert first.post_event("shared", *event(f"a{i}"))[0] == 202
        assert second.post_event("shared", *event(f"b{i}"))[0] == 202
    await wait_until(
        lambda: (
            len(read_jsonl(tmp_path / "a/ok.jsonl")) == 5
            and len(read_jsonl(tmp_path / "b/ok.jsonl")) == 5
        ),
        15,
        "both instances done",
    )
    for bridge in (first, second):
        _, listing = bridge.get("/v1/tasks?pipeline=shared&state=succeeded")
        assert {t["id"] for t in listing["tasks"]} == {
            f"shared:{x}{i}" for x in "ab" for i in range(5)
        }

    # dedup holds across instances: an id finished on the first is not run by the second
    calls = len(fn.calls)
    assert second.post_event("shared", *event("a3"))[0] == 202
    await asyncio.sleep(1.0)
    assert len(fn.calls) == calls
    assert len(read_jsonl(tmp_path / "b/ok.jsonl")) == 5

    # a pause asked of one instance reaches the other
    assert first.request("POST", "/v1/pipelines/shared/pause")[0] == 200
    await wait_until(
        lambda: second.get("/v1/pipelines")[1]["pipelines"][0]["state"] == "paused", 5, "paused"
    )
    assert second.post_event("shared", *event("held"))[0] == 202
    await asyncio.sleep(0.7)
    assert not fn.calls_for("held")
    assert second.request("POST", "/v1/pipelines/shared/resume")[0] == 200
    await wait_until(lambda: bool(fn.calls_for("held")), 5, "resumed on both")
    await wait_until(
        lambda: first.get("/v1/pipelines")[1]["pipelines"][0]["state"] == "running", 5, "resumed"
    )

    # a cancel asked of one instance reaches the instance that holds the task
    stuck.add("c1")
    assert second.post_event("shared", *event("c1"))[0] == 202
    await wait_until(
        lambda: first.get("/v1/tasks/shared:c1")[1].get("state") == "retrying", 10, "retrying"
    )
    status, doc = first.request("POST", "/v1/tasks/shared:c1/cancel")
    assert status == 202
    assert doc["was"] == "retrying"
    await wait_until(lambda: len(read_jsonl(tmp_path / "b/failed.jsonl")) == 1, 10, "cancelled")
    (failed,) = read_jsonl(tmp_path / "b/failed.jsonl")
    assert failed["data"]["error"]["kind"] == "cancelled"
    assert first.get("/v1/tasks/shared:c1")[1]["state"] == "cancelled"
    assert first.terminate() == 0
    assert second.terminate() == 0
