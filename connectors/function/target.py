"""``target: {type: http}``: invoke a stateless function over HTTP.

One shared aiohttp session (one connection pool) per pipeline. ``invoke`` never raises
for a remote failure: every answer or exception goes through ``classify``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import aiohttp

from connectors.function import encoding
from connectors.function.classify import classify_exception, classify_response
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

    async def start(self) -> None:
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
        if self._session is not None:
            await self._session.close()
            self._session = None

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
        session = self._session
        assert session is not None, "invoke() before start()"
        headers, body = self._encode(events)
        headers.update(self._static)
        headers["x-bridge-attempt"] = str(attempt)
        if traceparent:
            headers["traceparent"] = traceparent
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                payload = await response.read()
                status, answer_headers = response.status, response.headers
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return [classify_exception(exc, timeout=self.spec.timeout)] * len(events)
        outcome = classify_response(status, answer_headers, payload)
        if self.spec.mode is TargetMode.BATCH and outcome.kind is OutcomeKind.SUCCEEDED:
            return encoding.batch_outcomes(events, status, answer_headers, payload)
        return [outcome] * len(events)
