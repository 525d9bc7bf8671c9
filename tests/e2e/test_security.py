"""Security: HTTPS targets with a custom CA, secrets kept out of every output."""

from __future__ import annotations

import asyncio
import json

import pytest

from sinks.signing import SIGNATURE_HEADER
from tests.support.bridge import read_jsonl
from tests.support.certs import make_certs
from tests.support.function_server import Call, Reply
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}", token: "${{BRIDGE_TOKEN}}"}}
state: {{url: "sqlite:///state.db"}}
pipelines:
  - name: sec
    source: {{type: embedded}}
    target:
      url: "{url}"
      headers: {{Authorization: "Bearer ${{FN_TOKEN}}"}}
      {tls}
    retry: {{max_attempts: 2, initial_backoff: 10ms}}
    on_success: [{{type: webhook, url: "{hook}", secret: "${{HOOK_SECRET}}"}}]
    on_failure: [{{type: file, path: failed.jsonl}}]
"""

SECRETS = {"BRIDGE_TOKEN": "tok-AAA111", "FN_TOKEN": "fn-BBB222", "HOOK_SECRET": "hook-CCC333"}
AUTH = {"Authorization": f"Bearer {SECRETS['BRIDGE_TOKEN']}"}


async def test_https_target_with_a_custom_ca(tmp_path, function_server, bridge_process):
    _, server_context = make_certs(tmp_path)
    fn = await function_server(ssl_context=server_context).start()
    hook = await function_server().start()
    text = CONFIG.format(url=fn.url, hook=hook.url, tls="tls: {ca_file: ca.pem}")
    bridge = bridge_process(text, env=SECRETS).start()
    assert bridge.post_event("sec", b"{}", {**AUTH, "Content-Type": "application/json"})[0] == 202
    await wait_until(lambda: len(hook.calls) == 1, 10, "result delivered")
    assert fn.calls[0].headers["authorization"] == f"Bearer {SECRETS['FN_TOKEN']}"
    assert bridge.terminate() == 0


async def test_without_the_ca_the_target_fails_with_a_clear_reason(
    tmp_path, function_server, bridge_process
):
    _, server_context = make_certs(tmp_path)
    fn = await function_server(ssl_context=server_context).start()
    hook = await function_server().start()
    bridge = bridge_process(CONFIG.format(url=fn.url, hook=hook.url, tls=""), env=SECRETS).start()
    assert bridge.post_event("sec", b"{}", {**AUTH, "Content-Type": "application/json"})[0] == 202
    await wait_until(lambda: len(read_jsonl(tmp_path / "failed.jsonl")) == 1, 10, "failure")
    (failed,) = read_jsonl(tmp_path / "failed.jsonl")
    assert failed["data"]["error"]["kind"] == "connection_error"
    assert "certificate" in failed["data"]["error"]["message"].lower()
    assert fn.calls == []
    assert bridge.terminate() == 0


async def test_secrets_never_appear_in_logs_metrics_status_or_errors(
    tmp_path, function_server, bridge_process
):
    def failing(call: Call) -> Reply:
        return Reply(500, {"error": "down"})

    fn = await function_server(failing).start()
    hook = await function_server().start()
    text = CONFIG.format(url=fn.url, hook=hook.url, tls="")
    bridge = bridge_process(text, env=SECRETS)
    bridge.env["BRIDGE_LOG_LEVEL"] = "debug"
    bridge.start()
    assert bridge.post_event("sec", b"{}", {**AUTH, "Content-Type": "application/json"})[0] == 202
    await wait_until(lambda: len(read_jsonl(tmp_path / "failed.jsonl")) == 1, 10, "failure")
    outputs = [
        bridge.log(),
        (tmp_path / "failed.jsonl").read_text(),
        str(bridge.request("GET", "/metrics")[1]),
        str(bridge.request("GET", "/v1/pipelines", headers=AUTH)[1]),
        str(bridge.request("GET", "/v1/tasks?state=failed", headers=AUTH)[1]),
        str(bridge.request("GET", "/", headers=AUTH)[1]),
        str(bridge.request("GET", "/v1/pipelines")[1]),  # the 401 answer
    ]
    assert await asyncio.to_thread(bridge.terminate) == 0
    outputs.append(bridge.log())
    for secret in SECRETS.values():
        for output in outputs:
            assert secret not in output


def test_an_unreadable_ca_file_is_a_configuration_error(tmp_path):
    import subprocess
    import sys

    from tests.support.bridge import ROOT

    config = tmp_path / "bridge.yaml"
    config.write_text(
        CONFIG.format(
            url="https://127.0.0.1:1/fn",
            hook="http://127.0.0.1:1/h",
            tls="tls: {ca_file: nope.pem}",
        ).replace("{port}", "8097")
    )
    run = subprocess.run(
        [sys.executable, "-m", "consumer_core", "run", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **SECRETS},
        timeout=60,
    )
    assert run.returncode == 2
    assert "target.tls" in run.stderr
    assert "No such file" in run.stderr


async def test_https_webhook_with_a_custom_ca_gets_signed_results(
    tmp_path, function_server, bridge_process
):
    """The webhook sink speaks TLS with the CA of its ``tls:`` block, and signs."""
    _, server_context = make_certs(tmp_path)
    fn = await function_server().start()
    hook = await function_server(ssl_context=server_context).start()
    text = CONFIG.format(url=fn.url, hook=hook.url, tls="").replace(
        'secret: "${HOOK_SECRET}"}', 'secret: "${HOOK_SECRET}", tls: {ca_file: ca.pem}}'
    )
    assert "tls: {ca_file: ca.pem}" in text
    bridge = bridge_process(text, env=SECRETS).start()
    for n in range(3):
        body = json.dumps({"n": n}).encode()
        status, _ = bridge.post_event("sec", body, {**AUTH, "Content-Type": "application/json"})
        assert status == 202
    await wait_until(lambda: len(hook.calls) == 3, 10, "results delivered over TLS")
    assert bridge.terminate() == 0
    assert hook.url.startswith("https://")
    for call in hook.calls:
        assert call.headers["content-type"] == "application/cloudevents+json"
        assert call.headers[SIGNATURE_HEADER.lower()]
    assert [c.attributes["type"] for c in hook.calls] == ["bridge.task.succeeded"] * 3
