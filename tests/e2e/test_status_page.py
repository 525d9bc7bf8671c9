"""The status page at ``GET /``, rendered by headless Chromium against a live bridge.

The bridge runs with a token; the page gets it from ``#token=`` and must show what
``/v1/pipelines`` says (windows, in-flight, isolated and paused tenants), the counters
of ``/v1/stats`` and the latest failures. A screenshot lands in the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.support.bridge import BridgeProcess, read_jsonl
from tests.support.function_server import Call, Reply
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
TOKEN = "s3cret-page-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

# ``latency_factor`` is out of reach: acme's two 90 s calls are there to be in flight on the
# page, and must not get acme a lane of its own (only globex, for its errors).
CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{{port}}", token: "${{BRIDGE_TOKEN}}"}}
state: {{url: "sqlite:///state.db"}}
shutdown_timeout: 1s
pipelines:
  - name: orders
    source: {{type: embedded}}
    tenant: {{from: header, name: x-tenant}}
    target: {{url: "{url}", timeout: 2m}}
    concurrency: {{initial: 6, min: 1, max: 64}}
    retry: {{max_attempts: 2, initial_backoff: 50ms}}
    isolation: {{enabled: true, min_samples: 4, error_rate: 0.5, latency_factor: 100000}}
    on_success: [{{type: file, path: ok.jsonl}}]
    on_failure: [{{type: file, path: failed.jsonl}}]
"""


def behaviour(call: Call) -> Reply:
    kind = (call.data or {}).get("kind")
    if kind == "bad":
        return Reply(422, {"error": "order has no items"})
    if kind == "slow":
        return Reply(200, {"ok": True}, delay=90)
    return Reply(200, {"ok": True})


class Fields(HTMLParser):
    """Collects the text of every element that has a ``data-field`` attribute."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, dict[str, Any], list[str]]] = []
        self.found: list[tuple[dict[str, Any], str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append((tag, dict(attrs), []))

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            name, attrs, parts = self.stack.pop()
            text = "".join(parts)
            if self.stack:
                self.stack[-1][2].append(text)
            if "data-field" in attrs or name == "body":
                self.found.append((attrs, text))
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.stack:
            self.stack[-1][2].append(data)

    def texts(self, field: str, **attrs: str) -> list[str]:
        wanted = {f"data-{k}": v for k, v in attrs.items()}
        return [
            text.strip()
            for found, text in self.found
            if found.get("data-field") == field and wanted.items() <= found.items()
        ]


def chromium_command(tmp_path: Path, url: str, *args: str) -> list[str]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run scripts/services.sh"
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=6000",
        *args,
        url,
    ]


async def chromium(tmp_path: Path, url: str, *args: str) -> str:
    """Run headless Chromium once (off the event loop: the function server lives on it)."""
    command = chromium_command(tmp_path, url, *args)
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=90, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def page_and_policy(url: str) -> tuple[str, str]:
    """GET / without a token: its Content-Security-Policy and the document."""
    with urllib.request.urlopen(f"{url}/", timeout=10) as response:
        return response.headers["Content-Security-Policy"], response.read().decode()


def pipelines(bridge: BridgeProcess) -> dict[str, Any]:
    status, doc = bridge.request("GET", "/v1/pipelines", None, AUTH)
    assert status == 200, doc
    (orders,) = doc["pipelines"]
    return dict(orders)


def settled(doc: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of a pipeline, for comparing two moments."""
    return {
        "lanes": [(lane["name"], lane["window"], lane["inflight"]) for lane in doc["lanes"]],
        "inflight": doc["inflight"],
        "isolated": doc["isolated_tenants"],
        "paused": doc["paused_tenants"],
    }


async def wait_settled(bridge: BridgeProcess) -> dict[str, Any]:
    """Wait until two reads a second apart agree (no window still moving)."""
    previous = settled(pipelines(bridge))
    for _ in range(20):
        await asyncio.sleep(1.0)
        current = settled(pipelines(bridge))
        if current == previous:
            return pipelines(bridge)
        previous = current
    raise AssertionError(f"the pipeline never settled: {previous}")


def post(bridge: BridgeProcess, tenant: str, body: dict[str, Any]) -> None:
    headers = {**AUTH, "Content-Type": "application/json", "x-tenant": tenant}
    status, doc = bridge.post_event("orders", json.dumps(body).encode(), headers)
    assert status == 202, doc


async def test_status_page_shows_what_the_admin_api_says(tmp_path, function_server, bridge_process):
    fn = await function_server(behaviour).start()
    bridge = bridge_process(CONFIG.format(url=fn.url), env={"BRIDGE_TOKEN": TOKEN}).start()
    # the page is public and holds no data; the figures are not
    csp, html = page_and_policy(bridge.url)
    assert "Bridge status" in html
    assert TOKEN not in html
    assert "script-src 'sha256-" in csp
    assert "connect-src 'self'" in csp
    assert bridge.get("/v1/stats")[0] == 401
    assert (
        bridge.request("POST", "/v1/pipelines/orders/tenants/initech/pause", None, AUTH)[0] == 200
    )

    for i in range(30):  # in three bursts, so the charts have a shape
        post(bridge, "acme" if i % 2 else "umbrella", {"kind": "ok", "i": i})
        if i % 10 == 9:
            await asyncio.sleep(1.0)
    for i in range(6):
        post(bridge, "globex", {"kind": "bad", "i": i})
    post(bridge, "initech", {"kind": "ok", "i": 99})  # held: its tenant is paused
    await wait_until(lambda: len(read_jsonl(tmp_path / "ok.jsonl")) == 30, 30, "30 successes")
    await wait_until(lambda: len(read_jsonl(tmp_path / "failed.jsonl")) == 6, 30, "6 failures")
    # globex failed every time: its next (slow) task gets it a lane of its own
    post(bridge, "globex", {"kind": "slow", "i": 6})
    for i in range(2):
        post(bridge, "acme", {"kind": "slow", "i": i})
    await wait_until(lambda: pipelines(bridge)["inflight"] == 3, 30, "the slow three in flight")
    await wait_until(
        lambda: pipelines(bridge)["isolated_tenants"] == ["globex"], 30, "globex isolated"
    )
    expected = await wait_settled(bridge)
    status, stats = bridge.request("GET", "/v1/stats?failures=10", None, AUTH)
    assert status == 200
    (counts,) = stats["pipelines"]
    assert counts["finished"] == {"succeeded": 30.0, "failed": 6.0, "cancelled": 0.0}
    assert [f["error"]["kind"] for f in counts["recent_failures"]] == ["client_error"] * 6
    assert len(counts["history"]) >= 2

    url = f"{bridge.url}/#token={TOKEN}"
    dom = await chromium(tmp_path, url, "--dump-dom")
    assert settled(pipelines(bridge)) == settled(expected), "moved while the page was read"
    page = Fields()
    page.feed(dom)
    body = page.texts("name")
    assert body == ["orders"], dom[-3000:]
    assert 'data-loaded="yes"' in dom
    assert TOKEN not in dom
    for lane in expected["lanes"]:
        assert page.texts("window", lane=lane["name"]) == [str(lane["window"])], lane
        assert page.texts("lane-inflight", lane=lane["name"]) == [str(lane["inflight"])], lane
    assert page.texts("inflight") == [str(expected["inflight"])] == ["3"]
    assert page.texts("state") == [expected["state"]] == ["running"]
    assert page.texts("succeeded") == ["30"]
    assert page.texts("failed") == ["6"]
    assert page.texts("lag") == [str(sum(expected["lag"].values()))]
    assert page.texts("error-kind") == ["client_error"] * 6
    assert all("HTTP 422" in m for m in page.texts("error-message"))
    paused = page.texts("paused")[0]
    assert "initech" in paused
    assert "globex" in page.texts("isolated")[0]
    assert len(expected["lanes"]) == 2

    # without the token the page shows no figure, only how to give it one
    bare = Fields()
    bare.feed(await chromium(tmp_path, f"{bridge.url}/", "--dump-dom"))
    assert bare.texts("name") == []
    assert "/#token=" in bare.texts("banner")[0]

    shot = tmp_path / "status.png"
    await chromium(tmp_path, url, f"--screenshot={shot}", "--window-size=1280,900")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000
    assert bridge.terminate() == 0
