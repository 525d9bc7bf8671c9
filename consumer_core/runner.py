"""All pipelines of one file, their shared resources, the server, and shutdown.

Shutdown (SIGTERM/SIGINT, or ``stop()``): every pipeline stops taking messages, drains
in-flight work within ``shutdown_timeout``, hands back what did not finish, commits
what did; then the server stops and the store is flushed and closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectors import load_source
from connectors.function import HttpTarget
from consumer_core.admin.app import AdminServer
from consumer_core.admin.metrics import Metrics
from consumer_core.admin.tracing import Tracing, tracing_from_env
from consumer_core.config.model import BridgeConfig, PipelineConfig
from consumer_core.contracts import Resources, Sink
from consumer_core.pipeline import Pipeline, run_pipeline
from consumer_core.store.base import open_store
from consumer_core.store.sqlite import SqliteDatabases
from sinks import load_sink

__all__ = ["Runner"]

log = logging.getLogger(__name__)


class Runner:
    """Builds and runs everything a ``BridgeConfig`` describes."""

    def __init__(
        self, config: BridgeConfig, *, base_dir: Path | None = None, tracing: Tracing | None = None
    ) -> None:
        self.config = config
        self.base_dir = base_dir or Path.cwd()
        databases = SqliteDatabases()
        self.resources = Resources(
            metrics=Metrics(),
            store=open_store(config.state.url, self.base_dir, databases),
            base_dir=self.base_dir,
            state_url=config.state.url,
            databases=databases,
            tracing=tracing if tracing is not None else tracing_from_env(),
        )
        self.server = AdminServer(self, config.server)
        self.instance = config.state.instance or f"{socket.gethostname()}:{config.server.port}"
        # Built now, so that what only a component can check (a TLS file, a missing
        # client library) is a configuration error before anything starts.
        self.pipelines: dict[str, Pipeline] = {pc.name: self._build(pc) for pc in config.pipelines}
        self.started = asyncio.Event()
        self._stop = asyncio.Event()

    def _build(self, pc: PipelineConfig) -> Pipeline:
        res = self.resources
        source_cls = load_source(pc.source.type, f"pipelines[{pc.name}].source")
        source = source_cls.from_config(pc.name, pc.source, res)

        def sinks(specs: Sequence[Any]) -> list[Sink]:
            return [load_sink(s.type, s.path).from_config(s, res) for s in specs]

        return Pipeline(
            pc,
            source=source,
            target=HttpTarget(
                pc.target,
                pool_size=pc.concurrency.max,
                trace_configs=res.tracing.client_trace_configs(),
            ),
            on_success=sinks(pc.on_success),
            on_failure=sinks(pc.on_failure),
            resources=res,
            shutdown_timeout=self.config.shutdown_timeout,
            dedup_window=self.config.state.dedup_window,
            instance=self.instance,
        )

    def stop(self) -> None:
        self._stop.set()

    async def run(self, *, install_signals: bool = True) -> None:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
        await self.resources.store.open()
        await self.server.start()
        try:
            async with asyncio.TaskGroup() as group:
                for pipeline in self.pipelines.values():
                    group.create_task(run_pipeline(pipeline), name=f"pipeline:{pipeline.name}")
                control = group.create_task(self._control_loop(), name="control")
                self.started.set()
                log.info(
                    "bridge running %d pipeline(s); admin API on http://%s:%d",
                    len(self.pipelines),
                    self.server.host,
                    self.server.port,
                )
                await self._stop.wait()
                log.info("shutting down: draining in-flight work")
                control.cancel()
                for pipeline in self.pipelines.values():
                    pipeline.stop()
        finally:
            await self.server.stop()
            await self.resources.store.close()
            self.resources.tracing.shutdown()
            if install_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
        log.info("bridge stopped")

    async def _control_loop(self) -> None:
        """Apply operator state shared through the store (pauses, cancel requests, made
        on any instance) and purge old tasks."""
        store = self.resources.store
        seen_cancels = time.time() - 5.0
        last_purge = 0.0
        while True:
            await asyncio.sleep(0.5)
            try:
                await self.apply_pauses(await store.paused_scopes())
                now = time.time()
                for tid, _ in await store.cancel_requests(since=seen_cancels - 2.0):
                    pipeline = self.pipelines.get(tid.split(":", 1)[0])
                    if pipeline is not None:
                        pipeline.cancel(tid)
                seen_cancels = now
                if now - last_purge > 300.0:
                    last_purge = now
                    purged = await store.purge(finished_before=now - self.config.state.retention)
                    if purged:
                        log.info("purged %d finished tasks older than the retention", purged)
            except Exception as exc:
                log.warning("reading operator state from the store failed: %s", exc)

    async def apply_pauses(self, scopes: set[str]) -> None:
        for name, pipeline in self.pipelines.items():
            if name in scopes:
                await pipeline.pause()
            else:
                await pipeline.resume()
            tenants = {s.split("/", 1)[1] for s in scopes if s.startswith(f"{name}/")}
            for tenant in tenants - pipeline.paused_tenants:
                pipeline.pause_tenant(tenant)
            for tenant in pipeline.paused_tenants - tenants:
                pipeline.resume_tenant(tenant)
