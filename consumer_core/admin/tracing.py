"""OpenTelemetry spans for tasks; span names and attributes live here and nowhere else.

One trace per task (SPEC section 8):

* a CONSUMER span ``process {pipeline}`` from receipt until the source message is
  settled (messaging semantic conventions), the parent of everything below; its parent
  is the message's incoming ``traceparent``, when it had one;
* a CLIENT span per invocation attempt, made by the OpenTelemetry aiohttp client
  instrumentation (HTTP semantic conventions) plus ``bridge.attempt``; in batch mode
  the request's span is a child of the batch's first task;
* an INTERNAL span ``retry wait`` for each backoff between attempts;
* a PRODUCER span ``send {sink}`` per sink delivery of the task's result event.

Tracing is configured by the standard ``OTEL_*`` variables and is off unless an
exporter is configured (``OTEL_TRACES_EXPORTER`` or an OTLP endpoint). When off, no
span object is ever created: every method below returns at its first line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import aiohttp
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["Tracing", "tracing_from_env"]

_PROPAGATOR = TraceContextTextMapPropagator()


def tracing_from_env(env: Mapping[str, str] | None = None) -> Tracing:
    """Tracing as the ``OTEL_*`` environment asks: off unless an exporter is set."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return Tracing(None)
    exporter_name = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter_name == "none" or (not exporter_name and not endpoint):
        return Tracing(None)
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "bridge"}
    provider = TracerProvider(resource=Resource.create(attributes))
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return Tracing(provider)


def _attempt_hook(span: Span, params: Any) -> None:
    attempt = params.headers.get("x-bridge-attempt") if params.headers else None
    if attempt and span.is_recording():
        span.set_attribute("bridge.attempt", int(attempt))


class Tracing:
    """Creates the task spans; ``Tracing(None)`` is the free no-op."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self._tracer = provider.get_tracer("bridge") if provider is not None else None

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()

    def client_trace_configs(self) -> list[aiohttp.TraceConfig]:
        if self.provider is None:
            return []
        from opentelemetry.instrumentation._semconv import _StabilityMode
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config

        # The stable HTTP conventions (http.request.method, http.response.status_code...).
        return [
            create_trace_config(
                request_hook=_attempt_hook,
                tracer_provider=self.provider,
                sem_conv_opt_in_mode=_StabilityMode.HTTP,
            )
        ]

    def consume(
        self,
        *,
        pipeline: str,
        source_type: str,
        message_id: str,
        parent: str | None,
        facts: Mapping[str, Any],
    ) -> Span | None:
        """Start a task's CONSUMER span (ended by ``finish``)."""
        if self._tracer is None:
            return None
        context = _PROPAGATOR.extract({"traceparent": parent}) if parent else None
        attributes: dict[str, Any] = {
            "messaging.system": facts.get("messaging.system", source_type),
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": facts.get("messaging.destination.name", pipeline),
            "messaging.message.id": message_id,
            "bridge.pipeline": pipeline,
        }
        for key, value in facts.items():
            if key.startswith("messaging.") and isinstance(value, str | int | float | bool):
                attributes[key] = value
        return self._tracer.start_span(
            f"process {pipeline}", context=context, kind=SpanKind.CONSUMER, attributes=attributes
        )

    @staticmethod
    def traceparent(span: Span | None) -> str | None:
        if span is None:
            return None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        return carrier.get("traceparent")

    @staticmethod
    @contextlib.contextmanager
    def active(span: Span | None) -> Iterator[None]:
        """Make ``span`` the parent of spans started inside (the HTTP client span)."""
        if span is None:
            yield
            return
        with trace.use_span(span, end_on_exit=False):
            yield

    def retry_wait(self, parent: Span | None, *, attempt: int, delay: float) -> Span | None:
        if self._tracer is None or parent is None:
            return None
        return self._tracer.start_span(
            "retry wait",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            attributes={"bridge.attempt": attempt, "bridge.retry.delay_s": delay},
        )

    def send(self, sink: str, parents: Sequence[Span | None]) -> list[Span]:
        """Start one PRODUCER span per task whose result goes to ``sink``."""
        if self._tracer is None:
            return []
        return [
            self._tracer.start_span(
                f"send {sink}",
                context=trace.set_span_in_context(parent),
                kind=SpanKind.PRODUCER,
                attributes={"messaging.operation.type": "send", "bridge.sink": sink},
            )
            for parent in parents
            if parent is not None
        ]

    @staticmethod
    def end(span: Span | None, *, error: str | None = None, **attributes: Any) -> None:
        if span is None:
            return
        for key, value in attributes.items():
            span.set_attribute(f"bridge.{key}", value)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
