"""The webhook sink: structured and binary CloudEvents, HMAC signatures a receiver can verify."""

from __future__ import annotations

import pytest

from sinks.signing import sign, verify
from tests.support.function_server import Reply
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: wh
    source: {{type: embedded}}
    target: {{url: "{url}"}}
    on_success:
      - {{type: webhook, url: "{structured}", secret: "${{HOOK_SECRET}}",
         headers: {{X-Team: blue}}}}
      - {{type: webhook, url: "{binary}", mode: binary}}
"""


async def test_webhooks_deliver_signed_structured_and_binary_events(
    function_server, bridge_process
):
    fn = await function_server().start()
    structured = await function_server().start()
    binary = await function_server().start()
    text = CONFIG.format(url=fn.url, structured=structured.url, binary=binary.url)
    bridge = bridge_process(text, env={"HOOK_SECRET": "s3cret"}).start()
    headers = {
        "ce-id": "w1",
        "ce-source": "/t",
        "ce-type": "t",
        "ce-specversion": "1.0",
        "Content-Type": "application/json",
    }
    assert bridge.post_event("wh", b'{"n": 1}', headers)[0] == 202
    await wait_until(lambda: structured.calls and binary.calls, 10, "both webhooks")
    (signed,) = structured.calls
    assert signed.headers["content-type"] == "application/cloudevents+json"
    assert signed.headers["x-team"] == "blue"
    assert signed.attributes["type"] == "bridge.task.succeeded"
    assert signed.attributes["subject"] == "w1"
    assert verify("s3cret", signed.raw, signed.headers["x-bridge-signature"])
    assert not verify("wrong", signed.raw, signed.headers["x-bridge-signature"])
    (plain,) = binary.calls
    assert plain.headers["ce-type"] == "bridge.task.succeeded"
    assert plain.headers["ce-subject"] == "w1"
    assert plain.data == {"echo": {"n": 1}}
    assert "x-bridge-signature" not in plain.headers
    assert bridge.terminate() == 0


def test_signatures_verify_and_reject_tampering_and_replays():
    body = b'{"specversion":"1.0"}'
    header = sign("k", body)
    assert verify("k", body, header)
    assert not verify("k", body + b" ", header)
    assert not verify("other", body, header)
    assert not verify("k", body, sign("k", body, timestamp=1_000_000_000))
    assert not verify("k", body, "garbage")


async def test_a_webhook_that_answers_413_gets_a_reduced_copy(function_server, bridge_process):
    """A receiver that refuses a result as too large (413) gets the same result without
    its data and with a ``dataref``; the task keeps the whole answer."""
    fn = await function_server(
        lambda call: Reply(200, {"blob": "y" * 100_000} if call.data.get("big") else {"n": 1})
    ).start()
    hook = await function_server(
        lambda call: Reply(413, {}) if len(call.raw) > 65_536 else Reply(200, {})
    ).start()
    text = CONFIG_413.format(url=fn.url, hook=hook.url)
    bridge = bridge_process(text).start()
    for event_id, body in (("small", b'{"n": 1}'), ("big", b'{"big": true}')):
        headers = {
            "ce-id": event_id,
            "ce-source": "/t",
            "ce-type": "t",
            "ce-specversion": "1.0",
            "Content-Type": "application/json",
        }
        assert bridge.post_event("wh", body, headers)[0] == 202
    await wait_until(lambda: len(hook.calls) >= 3, 10, "the small result, the big one twice")
    by_subject: dict[str, list] = {}
    for call in hook.calls:
        by_subject.setdefault(call.attributes["subject"], []).append(call)
    assert len(by_subject["small"]) == 1
    assert "dataref" not in by_subject["small"][0].attributes
    refused, copy = by_subject["big"]
    assert len(refused.raw) > 100_000
    assert copy.attributes["id"] == refused.attributes["id"]
    assert copy.attributes["dataref"] == "/v1/tasks/wh:big"
    assert copy.attributes["dataomitted"] >= 100_000
    assert "data" not in copy.attributes
    assert copy.data is None
    await wait_until(
        lambda: bridge.get("/v1/tasks/wh:big")[1]["timestamps"]["delivered"], 10, "delivered"
    )
    status, task = bridge.get("/v1/tasks/wh:big")
    assert status == 200
    assert task["result"]["data"] == {"blob": "y" * 100_000}
    assert bridge.terminate() == 0


CONFIG_413 = """
version: 1
server: {{listen: "127.0.0.1:{{port}}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: wh
    source: {{type: embedded}}
    target: {{url: "{url}"}}
    on_success: [{{type: webhook, url: "{hook}"}}]
"""
