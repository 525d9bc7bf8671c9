"""The bridge's one HTTP server: admin API, metrics, health and embedded intake."""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from consumer_core.admin.page import add_routes as add_status_page
from consumer_core.config.model import ServerConfig
from consumer_core.events import CloudEvent, from_http, wrap
from consumer_core.store.base import TaskQuery
from consumer_core.tasks import TERMINAL, TaskState, task_id

if TYPE_CHECKING:
    from consumer_core.runner import Runner

__all__ = ["AdminServer"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_KEPT_HEADERS = ("traceparent", "tracestate")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class AdminServer:
    def __init__(self, runner: Runner, config: ServerConfig) -> None:
        self.runner = runner
        self.host = config.host
        self.port = config.port
        self.token = config.token
        self._site_runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        largest = max(
            (i.max_body_bytes for i in self.runner.resources.intake.values()), default=1 << 20
        )
        app = web.Application(middlewares=[self._auth], client_max_size=largest + 1)
        app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.get("/v1/pipelines", self.list_pipelines),
                web.post("/v1/pipelines/{name}/pause", self.pause),
                web.post("/v1/pipelines/{name}/resume", self.resume),
                web.post("/v1/pipelines/{name}/tenants/{tenant}/pause", self.pause_tenant),
                web.post("/v1/pipelines/{name}/tenants/{tenant}/resume", self.resume_tenant),
                web.post("/v1/pipelines/{name}/events", self.intake),
                web.get("/v1/tasks", self.list_tasks),
                web.post("/v1/tasks/cancel", self.cancel_many),
                web.post("/v1/tasks/redrive", self.redrive),
                web.post("/v1/tasks/{id:.+}/cancel", self.cancel_task),
                web.get("/v1/tasks/{id:.+}", self.get_task),
            ]
        )
        add_status_page(app, self.runner)
        return app

    async def start(self) -> None:
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.token:
            log.warning(
                "the admin API listens on %s without a token: anyone who can reach it can "
                "read tasks and control pipelines; set server.token",
                self.host,
            )
        self._site_runner = web.AppRunner(self._app(), access_log=None)
        await self._site_runner.setup()
        site = web.TCPSite(self._site_runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._site_runner is not None:
            await self._site_runner.cleanup()
            self._site_runner = None

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.path.startswith("/v1"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                return _error(401, "missing or wrong bearer token")
        return await handler(request)

    # ----------------------------------------------------------------- health

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        pipelines = self.runner.pipelines
        broken = [p.name for p in pipelines.values() if not p.healthy]
        if not self.runner.started.is_set() or broken:
            return web.json_response({"status": "not ready", "failed": broken}, status=503)
        return web.json_response({"status": "ready"})

    async def metrics(self, request: web.Request) -> web.Response:
        for pipeline in self.runner.pipelines.values():
            pipeline.status()  # refreshes the lag gauges
        body = self.runner.resources.metrics.render()
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    # ----------------------------------------------------------------- pipelines

    async def list_pipelines(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"pipelines": [p.status() for p in self.runner.pipelines.values()]}
        )

    def _pipeline(self, request: web.Request) -> Any:
        pipeline = self.runner.pipelines.get(request.match_info["name"])
        if pipeline is None:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"no pipeline {request.match_info['name']!r}"}),
                content_type="application/json",
            )
        return pipeline

    async def _set_paused(self, request: web.Request, scope: str, paused: bool) -> None:
        """Record the pause in the store (every instance follows it), then apply it here."""
        store = self.runner.resources.store
        await store.set_paused(scope, paused)
        await self.runner.apply_pauses(await store.paused_scopes())

    async def pause(self, request: web.Request) -> web.Response:
        pipeline = self._pipeline(request)
        await self._set_paused(request, pipeline.name, True)
        return web.json_response(pipeline.status())

    async def resume(self, request: web.Request) -> web.Response:
        pipeline = self._pipeline(request)
        await self._set_paused(request, pipeline.name, False)
        return web.json_response(pipeline.status())

    async def pause_tenant(self, request: web.Request) -> web.Response:
        pipeline = self._pipeline(request)
        await self._set_paused(request, f"{pipeline.name}/{request.match_info['tenant']}", True)
        return web.json_response(pipeline.status())

    async def resume_tenant(self, request: web.Request) -> web.Response:
        pipeline = self._pipeline(request)
        await self._set_paused(request, f"{pipeline.name}/{request.match_info['tenant']}", False)
        return web.json_response(pipeline.status())

    async def intake(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.runner.pipelines:
            return _error(404, f"no pipeline {name!r}")
        intake = self.runner.resources.intake.get(name)
        if intake is None:
            return _error(404, f"pipeline {name!r} has no embedded source")
        if (request.content_length or 0) > intake.max_body_bytes:
            return _error(413, f"body larger than {intake.max_body_bytes} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"body larger than {intake.max_body_bytes} bytes")
        if len(body) > intake.max_body_bytes:
            return _error(413, f"body larger than {intake.max_body_bytes} bytes")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            event: CloudEvent | None = from_http(headers, body)
        except ValueError as exc:
            return _error(400, f"malformed CloudEvent: {exc}")
        if event is None:
            event = wrap(
                body,
                event_id=str(uuid.uuid4()),
                source=f"/bridge/pipelines/{name}/events",
                content_type=request.headers.get("Content-Type"),
            )
        kept = {k: v for k, v in headers.items() if k.startswith("x-") or k in _KEPT_HEADERS}
        await intake.submit(event, kept)
        return web.json_response({"id": task_id(name, str(event.get_id()))}, status=202)

    # ----------------------------------------------------------------- tasks

    def _query(self, params: Any, *, state: TaskState | None = None) -> TaskQuery:
        """A task filter from query parameters or a JSON body (raises ValueError)."""
        given = params.get("state")
        return TaskQuery(
            pipeline=params.get("pipeline"),
            state=TaskState(given) if given else state,
            tenant=params.get("tenant"),
            received_from=float(params["from"]) if params.get("from") is not None else None,
            received_to=float(params["to"]) if params.get("to") is not None else None,
            limit=max(1, min(1000, int(params.get("limit", 100)))),
            after=params.get("after"),
        )

    async def list_tasks(self, request: web.Request) -> web.Response:
        try:
            query = self._query(request.query)
        except ValueError as exc:
            return _error(400, f"bad query: {exc}")
        records = await self.runner.resources.store.query(query)
        tasks = [r.to_json(kept=False) for r in records]  # GET /v1/tasks/{id} has the events
        cursor = records[-1].id if len(records) == query.limit else None
        return web.json_response({"tasks": tasks, "next": cursor})

    async def get_task(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]
        pipeline = self.runner.pipelines.get(tid.split(":", 1)[0])
        live = pipeline.live.get(tid) if pipeline is not None else None
        record = live.record if live is not None else await self.runner.resources.store.get(tid)
        if record is None:
            return _error(404, f"no task {tid!r}")
        return web.json_response(record.to_json())

    async def cancel_task(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]
        pipeline = self.runner.pipelines.get(tid.split(":", 1)[0])
        previous = pipeline.cancel(tid) if pipeline is not None else None
        store = self.runner.resources.store
        if previous is not None:
            await store.request_cancel([tid], at=time.time())
            return web.json_response({"id": tid, "cancelled": True, "was": previous}, status=202)
        # Still in memory but finished (its result on its way to the sinks, not yet in
        # the store) or already being cancelled: its record here is the latest.
        live = pipeline.live.get(tid) if pipeline is not None else None
        record = live.record if live is not None else await store.get(tid)
        if record is None:
            return _error(404, f"no task {tid!r}")
        if record.state in TERMINAL:
            return _error(409, f"task {tid!r} is {record.state.value}: nothing to cancel")
        # Held by another instance sharing the store: it applies the request.
        await store.request_cancel([tid], at=time.time())
        return web.json_response(
            {"id": tid, "cancelled": True, "was": record.state.value}, status=202
        )

    async def _body(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError as exc:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"body is not JSON: {exc}"}),
                content_type="application/json",
            ) from exc
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": "body must be a JSON object"}),
                content_type="application/json",
            )
        return body

    async def cancel_many(self, request: web.Request) -> web.Response:
        """Cancel every pending, paused or retrying task matching a filter."""
        body = await self._body(request)
        states = [TaskState(body["state"])] if body.get("state") else list(_CANCELLABLE)
        if any(s not in _CANCELLABLE for s in states):
            return _error(400, "only pending, paused or retrying tasks can be cancelled")
        store = self.runner.resources.store
        ids: list[str] = []
        try:
            for state in states:
                after = None
                while True:
                    query = self._query({**body, "after": after, "limit": 1000}, state=state)
                    records = await store.query(_with_state(query, state))
                    ids.extend(r.id for r in records)
                    if len(records) < 1000:
                        break
                    after = records[-1].id
        except ValueError as exc:
            return _error(400, f"bad filter: {exc}")
        # Tasks live here may be younger than their last write to the store: match them
        # in memory too. Other instances apply the requests recorded in the store.
        local = {
            task.record.id
            for pipeline in self.runner.pipelines.values()
            for task in pipeline.matching(self._query(body), states)
        }
        for tid in {*ids, *local}:
            pipeline = self.runner.pipelines.get(tid.split(":", 1)[0])
            if pipeline is not None:
                pipeline.cancel(tid)
        await store.request_cancel(sorted({*ids, *local}), at=time.time())
        return web.json_response({"cancelled": len({*ids, *local})}, status=202)

    async def redrive(self, request: web.Request) -> web.Response:
        """Run failed (or cancelled) tasks again with a fresh attempt budget."""
        body = await self._body(request)
        pipeline = self.runner.pipelines.get(body.get("pipeline", ""))
        if pipeline is None:
            return _error(400, "redrive needs the name of a running pipeline")
        state = TaskState(body.get("state", "failed"))
        if state not in (TaskState.FAILED, TaskState.CANCELLED):
            return _error(400, "only failed or cancelled tasks can be re-driven")
        try:
            query = _with_state(self._query({**body, "limit": body.get("limit", 1000)}), state)
        except ValueError as exc:
            return _error(400, f"bad filter: {exc}")
        records = await self.runner.resources.store.query(query)
        count = await pipeline.parking.redrive(records)
        return web.json_response({"redriven": count}, status=202)


_CANCELLABLE = (TaskState.PENDING, TaskState.PAUSED, TaskState.RETRYING)


def _with_state(query: TaskQuery, state: TaskState) -> TaskQuery:
    return dataclasses.replace(query, state=state)
