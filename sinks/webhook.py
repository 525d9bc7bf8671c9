"""``type: webhook``: POST each result event to a URL.

Structured mode (default) posts one ``application/cloudevents+json`` document;
``binary`` posts ``ce-*`` headers with the data as the body (the SDK's HTTP binding).
With ``secret`` every request is signed (``sinks.signing``). Any non-2xx answer or
connection error fails the event; the core retries it, and the source message stays
unacked meanwhile. Events sharing a ``partitionkey`` are posted one after the other,
in order; different keys are posted concurrently.

Requests go through the function target's lean HTTP/1.1 client (keep-alive pool of 64
connections, ``httptools`` parser): a result POST costs about a third of aiohttp's CPU,
and a busy pipeline posts one per task. Redirects are not followed: a 3xx answer fails
the event like any other non-2xx (a signed result is not re-sent to another address).
A 413 (Payload Too Large) reports the event as too large: the core posts a reduced
copy of it instead (docs/sinks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final, Self

from cloudevents.core.bindings import http as ce_http

from connectors.function.http import LeanHttpClient
from consumer_core.config.model import ComponentSpec, TlsSpec
from consumer_core.contracts import Resources
from consumer_core.errors import PartialFailure, SinkError
from consumer_core.events import JSON_FORMAT, CloudEvent, partition_key, structured_bytes
from consumer_core.tls import ssl_context
from sinks.signing import SIGNATURE_HEADER, sign

TOO_LARGE: Final = "HTTP 413"

__all__ = ["WebhookSink"]

POOL_SIZE = 64
"""Connections to the webhook at most (events of different keys are posted at once)."""


class WebhookSink:
    def __init__(
        self,
        *,
        name: str,
        url: str,
        mode: str = "structured",
        headers: dict[str, str] | None = None,
        secret: str | None = None,
        timeout: float = 10.0,
        tls: TlsSpec | None = None,
    ) -> None:
        self.ssl = ssl_context(tls or TlsSpec(), path=name)
        self.name = name
        self.url = url
        self.mode = mode
        self.headers = dict(headers or {})
        self.secret = secret or None
        self.timeout = timeout
        self._client: LeanHttpClient | None = None

    @classmethod
    def from_config(cls, spec: ComponentSpec, res: Resources) -> Self:
        o = spec.options
        return cls(
            name=spec.path,
            url=o["url"],
            mode=o.get("mode", "structured"),
            headers=dict(o.get("headers", {})),
            secret=o.get("secret"),
            timeout=float(o.get("timeout", 10.0)),
            tls=o.get("tls"),
        )

    def __repr__(self) -> str:
        return f"WebhookSink(url={self.url!r}, mode={self.mode!r}, secret=<redacted>)"

    async def connect(self) -> None:
        self._client = LeanHttpClient(
            self.url, pool_size=POOL_SIZE, timeout=self.timeout, ssl_context=self.ssl
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _encode(self, event: CloudEvent) -> tuple[dict[str, str], bytes]:
        if self.mode == "binary":
            message = ce_http.to_binary(event, JSON_FORMAT)
            headers, body = dict(message.headers), message.body
        else:
            headers, body = (
                {"Content-Type": "application/cloudevents+json"},
                structured_bytes(event),
            )
        headers.update(self.headers)
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, body)
        return headers, body

    async def _post(self, event: CloudEvent) -> str | None:
        """Post one event; return why it failed, or ``None``."""
        assert self._client is not None, "emit() before connect()"
        headers, body = self._encode(event)
        try:
            status, _, _ = await self._client.post(headers, body)
        except asyncio.CancelledError:
            raise
        except OSError as exc:  # connect, reset, not HTTP, no answer in time (TimeoutError)
            return f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return None
        return f"HTTP {status}"

    async def _post_chain(
        self, chain: list[CloudEvent], failures: dict[str, str], too_large: set[str]
    ) -> None:
        for index, event in enumerate(chain):
            error = await self._post(event)
            if error is not None:
                if error == TOO_LARGE:
                    too_large.add(str(event.get_id()))
                # Later events of the same key must not overtake this one.
                for rest in chain[index:]:
                    failures[str(rest.get_id())] = error
                return

    async def emit(self, events: Sequence[CloudEvent]) -> None:
        chains: dict[object, list[CloudEvent]] = {}
        for event in events:
            key = partition_key(event)
            chains.setdefault(key if key is not None else object(), []).append(event)
        failures: dict[str, str] = {}
        too_large: set[str] = set()
        await asyncio.gather(
            *(self._post_chain(chain, failures, too_large) for chain in chains.values())
        )
        if not failures:
            return
        first = next(iter(failures.values()))
        if len(failures) == len(events) and not too_large:
            raise SinkError(f"webhook {self.url}: {first}")
        raise PartialFailure(
            f"webhook {self.url}: {len(failures)} failed ({first})",
            [i for i in failures if i not in too_large],
            too_large_ids=too_large,
        )
