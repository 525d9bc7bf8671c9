"""Fuzzing the two places untrusted input comes in: the intake route and the config
loader. Whatever arrives, the answer is a clear 4xx or a ConfigError: never a crash,
never a hang, never a 5xx."""

from __future__ import annotations

import json
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from consumer_core.config import load_config_text
from consumer_core.errors import ConfigError
from tests.support.bridge import ROOT
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {listen: "127.0.0.1:PORT"}
state: {url: "sqlite:///state.db"}
pipelines:
  - name: fz
    source: {type: embedded, max_body_bytes: 2048}
    target: {url: "http://127.0.0.1:9/nowhere", timeout: 1s}
    retry: {max_attempts: 1}
"""


@pytest.fixture(scope="module")
def bridge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    (folder / "bridge.yaml").write_text(CONFIG.replace("PORT", str(port)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "consumer_core", "run", "bridge.yaml"],
        cwd=folder,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    yield url
    proc.kill()
    proc.wait(10)


header_names = st.sampled_from(
    ["ce-id", "ce-source", "ce-type", "ce-specversion", "ce-time", "ce-partitionkey",
     "ce-data", "ce-", "ce-x", "content-type", "x-tenant", "traceparent"]
)  # fmt: skip
header_values = st.text(alphabet=string.printable.strip() + " é", max_size=40).map(
    lambda v: v.replace("\r", "").replace("\n", "")
)
content_types = st.sampled_from(
    ["application/json", "application/cloudevents+json",
     "application/cloudevents+json; charset=utf-8", "text/plain", "application/octet-stream", ""]
)  # fmt: skip
structured = st.fixed_dictionaries(
    {},
    optional={
        "specversion": st.sampled_from(["1.0", "0.3", "2", 1]),
        "id": st.one_of(st.text(max_size=10), st.integers(), st.none()),
        "source": st.one_of(st.text(max_size=10), st.none()),
        "type": st.one_of(st.text(max_size=10), st.lists(st.integers())),
        "time": st.one_of(st.text(max_size=25), st.just("2026-01-01T00:00:00Z")),
        "data": st.recursive(
            st.none() | st.integers() | st.text(max_size=5), st.lists, max_leaves=5
        ),
        "data_base64": st.text(max_size=12),
        "datacontenttype": st.text(max_size=12),
    },
).map(lambda d: json.dumps(d).encode())
bodies = st.one_of(st.binary(max_size=3000), structured)


@settings(
    max_examples=150, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    headers=st.dictionaries(header_names, header_values, max_size=6),
    ctype=content_types,
    body=bodies,
)
def test_intake_answers_202_or_a_clear_4xx(bridge_url, headers, ctype, body):
    if ctype:
        headers = {**headers, "content-type": ctype}
    request = urllib.request.Request(
        bridge_url + "/v1/pipelines/fz/events", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, answer = response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, json.loads(exc.read())
    event(f"status {status}")
    assert status in (202, 400, 413), (status, answer)
    if status == 202:
        assert answer["id"].startswith("fz:")
    else:
        assert answer["error"]
    if len(body) > 2048:
        assert status == 413


yaml_scalars = st.one_of(
    st.text(alphabet=string.printable, max_size=20),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
KEYS = st.sampled_from(
    ["version", "pipelines", "name", "source", "type", "target", "url", "timeout", "server",
     "listen", "state", "retry", "concurrency", "on_success", "tenant", "from", "x"]
)  # fmt: skip
documents = st.recursive(
    yaml_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=2000)
@given(document=documents)
def test_config_loader_never_crashes_on_structured_garbage(document):
    text = json.dumps(document)  # JSON is YAML: any shape the schema can meet
    problems = _problems(text, {})
    assert all(str(p).startswith("<string>") for p in problems)


@settings(max_examples=300, deadline=2000)
@given(text=st.text(alphabet=string.printable + "${}:-é\t", max_size=300))
def test_config_loader_never_crashes_on_text_garbage(text):
    _problems(text, {"A": "1"})


def _problems(text: str, env: dict[str, str]) -> list[object]:
    """Load ``text``: either a config, or a ConfigError that names what is wrong."""
    try:
        load_config_text(text, env=env)
    except ConfigError as exc:
        problems = list(exc.problems)
        assert problems, "a ConfigError must carry its problems"
        return problems
    return []
