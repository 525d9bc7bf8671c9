"""OpenTelemetry: the exact span tree of a task, in process and over OTLP/HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from consumer_core.admin.tracing import Tracing
from consumer_core.config import load_config_text
from consumer_core.runner import Runner
from tests.support.bridge import read_jsonl
from tests.support.function_server import Call, Reply
from tests.support.net import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

CONFIG = """
version: 1
server: {{listen: "127.0.0.1:{port}"}}
state: {{url: "sqlite:///{dir}/state.db"}}
pipelines:
  - name: tr
    source: {{type: embedded}}
    target: {{url: "{url}", timeout: 5s}}
    retry: {{max_attempts: 3, initial_backoff: 20ms, max_backoff: 50ms}}
    on_success: [{{type: file, path: "{dir}/ok.jsonl"}}]
    on_failure: [{{type: file, path: "{dir}/failed.jsonl"}}]
"""

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def headers(event_id: str, traceparent: str | None = None) -> dict[str, str]:
    h = {"ce-id": event_id, "ce-source": "/t", "ce-type": "t", "ce-specversion": "1.0"}
    if traceparent:
        h["traceparent"] = traceparent
    return h


async def post(port: int, event_id: str, traceparent: str | None = None) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/v1/pipelines/tr/events",
            data=b"{}",
            headers={**headers(event_id, traceparent), "Content-Type": "application/json"},
        ) as response,
    ):
        assert response.status == 202


async def test_span_tree_for_success_retry_and_failure(tmp_path, function_server):
    def behaviour(call: Call) -> Reply:
        if call.event_id == "retry" and call.attempt == 1:
            return Reply(503)
        if call.event_id == "fail":
            return Reply(400, {"error": "no"})
        return Reply(200, {"ok": True})

    fn = await function_server(behaviour).start()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    config = load_config_text(CONFIG.format(port=port, dir=tmp_path, url=fn.url))
    runner = Runner(config, base_dir=tmp_path, tracing=Tracing(provider))
    running = asyncio.create_task(runner.run(install_signals=False))
    await asyncio.wait_for(runner.started.wait(), 10)
    try:
        await post(port, "ok", PARENT)
        await post(port, "retry")
        await post(port, "fail")

        def done():
            return len(read_jsonl(tmp_path / "ok.jsonl")) + len(
                read_jsonl(tmp_path / "failed.jsonl")
            )

        await wait_until(lambda: done() == 3, 15, "3 results")
        await wait_until(
            lambda: sum(s.name.startswith("process") for s in exporter.get_finished_spans()) == 3,
            10,
            "3 consumer spans ended",
        )
    finally:
        runner.stop()
        await running

    spans = exporter.get_finished_spans()
    consumers = {
        s.attributes["messaging.message.id"]: s for s in spans if s.kind is SpanKind.CONSUMER
    }
    children = defaultdict(list)
    for span in spans:
        if span.parent is not None:
            children[span.parent.span_id].append(span)

    def tree(event_id: str) -> list[tuple[str, SpanKind]]:
        root = consumers[event_id]
        return sorted((c.name, c.kind) for c in children[root.context.span_id])

    ok = consumers["ok"]
    assert ok.name == "process tr"
    assert ok.parent.span_id == int("00f067aa0ba902b7", 16), (
        "the incoming traceparent is the parent"
    )
    assert ok.context.trace_id == int("4bf92f3577b34da6a3ce929d0e0e4736", 16)
    assert ok.attributes["messaging.operation.type"] == "process"
    assert tree("ok") == [
        ("POST", SpanKind.CLIENT),
        ("send pipelines[0].on_success[0]", SpanKind.PRODUCER),
    ]
    assert tree("retry") == [
        ("POST", SpanKind.CLIENT),
        ("POST", SpanKind.CLIENT),
        ("retry wait", SpanKind.INTERNAL),
        ("send pipelines[0].on_success[0]", SpanKind.PRODUCER),
    ]
    attempts = sorted(
        (c.attributes["bridge.attempt"], c.attributes["http.response.status_code"])
        for c in children[consumers["retry"].context.span_id]
        if c.kind is SpanKind.CLIENT
    )
    assert attempts == [(1, 503), (2, 200)]
    assert tree("fail") == [
        ("POST", SpanKind.CLIENT),
        ("send pipelines[0].on_failure[0]", SpanKind.PRODUCER),
    ]
    assert consumers["fail"].status.status_code is StatusCode.ERROR
    assert consumers["ok"].status.status_code is not StatusCode.ERROR
    # the function saw the client span as parent, and the result event carries the task's trace
    (ok_call,) = fn.calls_for("ok")
    client = next(c for c in children[ok.context.span_id] if c.kind is SpanKind.CLIENT)
    assert (
        ok_call.headers["traceparent"]
        == f"00-{ok.context.trace_id:032x}-{client.context.span_id:016x}-01"
    )
    (result,) = [r for r in read_jsonl(tmp_path / "ok.jsonl") if r["subject"] == "ok"]
    assert result["traceparent"] == f"00-{ok.context.trace_id:032x}-{ok.context.span_id:016x}-01"


class OtlpReceiver:
    """A tiny OTLP/HTTP (protobuf) trace receiver."""

    def __init__(self) -> None:
        self.spans: list = []
        self.resources: list = []
        self.port = free_port()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            self.resources.append(resource_spans.resource)
            for scope in resource_spans.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()


async def test_spans_are_exported_over_otlp_http(tmp_path, function_server, bridge_process):
    receiver = OtlpReceiver()
    await receiver.start()
    fn = await function_server().start()
    config = CONFIG.format(port="{port}", dir=tmp_path, url=fn.url)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    bridge = bridge_process(config, env=env).start()
    try:
        status, _ = bridge.post_event(
            "tr", b"{}", {**headers("otlp", PARENT), "Content-Type": "application/json"}
        )
        assert status == 202
        await wait_until(
            lambda: any(s.name == "process tr" for s in receiver.spans), 20, "spans exported"
        )
        await wait_until(lambda: len(receiver.spans) >= 3, 10, "all three spans")
    finally:
        assert bridge.terminate() == 0
        assert receiver.runner is not None
        with contextlib.suppress(Exception):
            await receiver.runner.cleanup()
    by_name = {s.name: s for s in receiver.spans}
    consumer = by_name["process tr"]
    assert consumer.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert consumer.parent_span_id.hex() == "00f067aa0ba902b7"
    assert by_name["POST"].parent_span_id == consumer.span_id
    assert by_name["send pipelines[0].on_success[0]"].parent_span_id == consumer.span_id
    service = {a.key: a.value.string_value for r in receiver.resources for a in r.attributes}
    assert service["service.name"] == "bridge"


async def test_no_exporter_configured_means_no_spans(tmp_path):
    from consumer_core.admin.tracing import tracing_from_env

    assert tracing_from_env({}).enabled is False
    assert (
        tracing_from_env(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"}
        ).enabled
        is False
    )
    assert (
        tracing_from_env(
            {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x"}
        ).enabled
        is False
    )
    tracing = tracing_from_env({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.enabled is True
    tracing.shutdown()
