"""A real aiohttp function server whose behaviour the test chooses per request.

It understands the three target modes and records every call (event id, key, tenant,
attempt, headers) so tests can check ordering, retries and headers. ``behaviour`` is
called for every event and returns a ``Reply``: a status, an optional body, headers,
a delay, or ``reset=True`` to cut the connection without answering.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.support.net import free_port


@dataclass
class Call:
    event_id: str
    attempt: int
    key: str | None
    data: Any
    headers: dict[str, str]
    attributes: dict[str, Any] = field(default_factory=dict)
    """The CloudEvent's attributes (structured and batch modes)."""
    raw: bytes = b""
    """The request body as received."""
    at: float = field(default_factory=time.monotonic)


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False


Behaviour = Callable[[Call], Reply]


def echo(call: Call) -> Reply:
    return Reply(200, {"echo": call.data})


class FunctionServer:
    def __init__(self, behaviour: Behaviour = echo, *, ssl_context: Any = None) -> None:
        self.behaviour = behaviour
        self.ssl_context = ssl_context
        self.calls: list[Call] = []
        self.requests = 0
        self.port = free_port()
        scheme = "https" if ssl_context is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}/fn"
        self._runner: web.AppRunner | None = None

    async def start(self) -> FunctionServer:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self.ssl_context)
        await site.start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def calls_for(self, event_id: str) -> list[Call]:
        return [c for c in self.calls if c.event_id == event_id]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        attempt = int(headers.get("x-bridge-attempt", "0"))
        content_type = headers.get("content-type", "")
        if content_type.startswith("application/cloudevents-batch+json"):
            return await self._batch(json.loads(body), attempt, headers, request)
        if content_type.startswith("application/cloudevents+json"):
            doc = json.loads(body)
            call = Call(
                doc["id"], attempt, doc.get("partitionkey"), doc.get("data"), headers, doc, body
            )
        else:
            try:
                data: Any = json.loads(body) if body else None
            except ValueError:
                data = body.decode("utf-8", "replace")
            call = Call(
                headers.get("ce-id", ""), attempt, headers.get("ce-partitionkey"), data, headers
            )
        self.calls.append(call)
        reply = self.behaviour(call)
        return await self._answer(request, reply)

    async def _batch(
        self,
        docs: list[dict[str, Any]],
        attempt: int,
        headers: dict[str, str],
        request: web.Request,
    ) -> web.StreamResponse:
        failed: list[str] = []
        results: dict[str, Any] = {}
        delay = 0.0
        for doc in docs:
            call = Call(doc["id"], attempt, doc.get("partitionkey"), doc.get("data"), headers, doc)
            self.calls.append(call)
            reply = self.behaviour(call)
            delay = max(delay, reply.delay)
            if 200 <= reply.status < 300:
                results[call.event_id] = reply.body
            else:
                failed.append(call.event_id)
        return await self._answer(
            request, Reply(200, {"failed": failed, "results": results}, delay=delay)
        )

    async def _answer(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.reset:
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=500)
        if reply.body is None:
            return web.Response(status=reply.status, headers=reply.headers)
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)
