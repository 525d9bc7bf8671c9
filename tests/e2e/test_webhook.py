"""The webhook sink: structured and binary CloudEvents, HMAC signatures a receiver can verify."""

from __future__ import annotations

import pytest

from sinks.signing import sign, verify
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
