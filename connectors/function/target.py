"""``target: {type: http}``: invoke a stateless function over HTTP.

One connection pool per pipeline: the lean keep-alive client
(``connectors.function.http``) or, when tracing is on, an aiohttp session with the
OpenTelemetry instrumentation. ``invoke`` never raises for a remote failure: every
answer or exception goes through ``classify``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import aiohttp

from connectors.function import encoding
from connectors.function.classify import classify_exception, classify_response
from connectors.function.http import LeanHttpClient
from consumer_core.config.model import TargetMode, TargetSpec
from consumer_core.events import CloudEvent
from consumer_core.outcome import Outcome, OutcomeKind
from consumer_core.tls import ssl_context

__all__ = ["HttpTarget"]


class HttpTarget:
    """Posts events to ``spec.url`` in binary, structured or batch mode."""

    def __init__(
        self,
        spec: TargetSpec,
        *,
        pool_size: int,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        self.spec = spec
        self.trace_configs = list(trace_configs)
        self.ssl = ssl_context(spec.tls, path="target")  # a bad file fails at start-up
        self.url = spec.url
        self.pool_size = pool_size
        self._static = dict(spec.headers)
        self._session: aiohttp.ClientSession | None = None
        self._lean: LeanHttpClient | None = None

    async def start(self) -> None:
        if not self.trace_configs:
            self._lean = LeanHttpClient(
                self.url, pool_size=self.pool_size, timeout=self.spec.timeout, ssl_context=self.ssl
            )
            return
        connector = aiohttp.TCPConnector(
            limit=self.pool_size,
            limit_per_host=0,
            ssl=self.ssl,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.spec.timeout),
            skip_auto_headers=("User-Agent",),
            trace_configs=self.trace_configs or None,
        )

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(
        self, headers: dict[str, str], body: bytes
    ) -> tuple[int, Mapping[str, str], bytes]:
        if self._lean is not None:
            return await self._lean.post(headers, body)
        session = self._session
        assert session is not None, "invoke() before start()"
        async with session.post(self.url, data=body, headers=headers) as response:
            return response.status, response.headers, await response.read()

    def _encode(self, events: Sequence[CloudEvent]) -> tuple[dict[str, str], bytes]:
        mode = self.spec.mode
        if mode is TargetMode.BATCH:
            return encoding.batch(events)
        if mode is TargetMode.STRUCTURED:
            return encoding.structured(events[0])
        return encoding.binary(events[0])

    async def invoke(
        self, events: Sequence[CloudEvent], *, attempt: int, traceparent: str | None
    ) -> Sequence[Outcome]:
        headers, body = self._encode(events)
        headers.update(self._static)
        headers["x-bridge-attempt"] = str(attempt)
        if traceparent:
            headers["traceparent"] = traceparent
        try:
            status, answer_headers, payload = await self._post(headers, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return [classify_exception(exc, timeout=self.spec.timeout)] * len(events)
        outcome = classify_response(status, answer_headers, payload)
        if self.spec.mode is TargetMode.BATCH and outcome.kind is OutcomeKind.SUCCEEDED:
            return encoding.batch_outcomes(events, status, answer_headers, payload)
        return [outcome] * len(events)
