"""Tenant isolation: moving a misbehaving tenant to a lane of its own, parking its
backlog, and merging it back once it is idle (see docs/concepts.md).

``Tenancy`` works on its pipeline's state (lanes, gates, live tasks) from the
pipeline's housekeeping loop; the decisions themselves are ``consumer_core.isolation``'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Set
from typing import TYPE_CHECKING

from consumer_core.flow import AimdWindow
from consumer_core.lanes import Lane
from consumer_core.tasks import TaskState

if TYPE_CHECKING:
    from consumer_core.pipeline import Pipeline, Task

__all__ = ["RUNNING_ANCHOR_AFTER", "SPILL_WAIT", "Tenancy"]

log = logging.getLogger("consumer_core.pipeline")

SPILL_WAIT = 1.0
"""Seconds an isolated tenant's task may wait before its backlog is parked in the store."""
RUNNING_ANCHOR_AFTER = 1.0
"""Seconds a call of a spilling tenant may be in flight before its task is anchored in the
store, so that its message no longer holds back the source's commits (a slow tenant's
calls would otherwise hold them for as long as each call takes)."""

_WAITING = (TaskState.PENDING, TaskState.PAUSED, TaskState.RETRYING)


class Tenancy:
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._flooded: set[str] = set()
        """Tenants the flood guard set spilling whose waiting tasks are not parked yet."""

    def isolate(self, now: float) -> None:
        p = self.pipeline
        # Every tenant with work in the shared lane: queued, running, retrying or
        # waiting behind its key.
        shared_tenants = {t for t in p.tenant_live if t not in p.lanes}
        if self._isolate_flood(shared_tenants) is not None:
            return
        oldest: dict[str, float] = {}  # per tenant, how long its oldest call has run
        for began, task in p.in_flight():
            tenant = task.record.tenant
            if tenant in shared_tenants and now - began > oldest.get(tenant, 0.0):
                oldest[tenant] = now - began
        if len(shared_tenants) < 2 and not any(
            p.detector.verdict(t, now=now, inflight={}, backlog={}, oldest_call=oldest)
            for t in shared_tenants
        ):
            return
        inflight = {t: p.tenant_inflight[t] for t in shared_tenants}
        backlog = {t: p.tenant_live[t] - p.tenant_inflight[t] for t in shared_tenants}
        for tenant in shared_tenants:
            reason = p.detector.verdict(
                tenant, now=now, inflight=inflight, backlog=backlog, oldest_call=oldest
            )
            if reason is not None:
                self._promote(tenant, reason)

    async def buffer_full(self) -> None:
        """Called by the receive loop when the buffer is full: a tenant flooding it is
        isolated and spilled at once, not at the next housekeeping round, since every
        moment the source is stopped delays the tenants queued behind the flood."""
        p = self.pipeline
        flooding = self._isolate_flood({t for t in p.tenant_live if t not in p.lanes})
        if flooding is not None:
            await self.spill(now={flooding})

    def flood_guard(self, counts: Mapping[str, int], size: int) -> None:
        """Called by a source that spills by reference with the tenants of a read that
        brought all it asked for, before it decodes them. The tenant that brought the
        most of the read, if that is ``backlog_share`` of it and it would then hold
        ``backlog_share`` of the buffer, is isolated, and spills by reference from this
        read on (one per read, as ``buffer_full`` isolates one). Otherwise a buffer-full
        of the flood would be decoded, admitted and parked before ``buffer_full`` saw
        it, while the tenants queued behind the flood wait (docs/isolation.md)."""
        p = self.pipeline
        # The read's messages that will be decoded (those of spilling tenants will not;
        # those whose tenant cannot be told raw will).
        total = size - sum(n for t, n in counts.items() if t in p.parking.spilling)
        # Isolating the only tenant protects nobody: others must be about (working now,
        # or seen within the detector's window).
        present = {t for t, n in p.tenant_live.items() if n} | set(counts) | p.detector.seen()
        if total <= 0 or len(present) < 2:
            return
        decoded = {t: n for t, n in counts.items() if t not in p.parking.spilling}
        if not decoded:
            return
        tenant = max(decoded, key=decoded.__getitem__)
        n, share, capacity = decoded[tenant], p.thresholds.backlog_share, p.capacity()
        held = p.tenant_live[tenant] + n
        if n < share * total or held < share * capacity:
            return
        if tenant not in p.lanes:
            self._promote(
                tenant,
                f"floods: {n} of the {total} messages of one read, "
                f"{held} of a {capacity}-message buffer",
            )
        p.parking.spilling.add(tenant)
        self._flooded.add(tenant)

    async def park_flooded(self) -> None:
        """Park what tenants the flood guard set spilling had waiting in memory, before
        the read that set them is admitted: their new messages come as references and
        are parked behind these (per-key order), and their backlog no longer holds the
        buffer or the source's commits (as ``spill`` does for any other spilling tenant)."""
        p = self.pipeline
        flooded, self._flooded = self._flooded, set()
        for tenant in sorted(flooded):
            lane = p.lanes.get(tenant)
            if lane is None or p.tenant_live[tenant] - p.tenant_inflight[tenant] <= 0:
                continue
            await self._park_waiting(tenant, lane)

    def _isolate_flood(self, shared_tenants: set[str]) -> str | None:
        """A full buffer stops the source, so tenants queued behind the flood in the
        source cannot even be seen: isolate the tenant that fills it (returned)."""
        p = self.pipeline
        if not shared_tenants or len(p.live) < 0.9 * p.capacity():
            return None
        tenant = max(shared_tenants, key=lambda t: p.tenant_live[t])
        share = p.tenant_live[tenant] / len(p.live)
        if share < p.thresholds.backlog_share:
            return None
        self._promote(tenant, f"holds {share:.0%} of a full buffer")
        return tenant

    def _promote(self, tenant: str, reason: str) -> None:
        p = self.pipeline
        c = p.config.concurrency
        cap = max(1, int(p.thresholds.max_share * c.max))
        initial = max(c.min, min(cap, p.shared.window.limit))
        lane: Lane[Task] = Lane(
            f"tenant:{tenant}",
            AimdWindow(initial=initial, minimum=min(c.min, cap), maximum=cap),
            tenant=tenant,
            cap=cap,
        )
        for task in p.shared.queue.take_tenant(tenant):
            lane.queue.push(tenant, task)
        p.lanes[tenant] = lane
        p.m_isolated.set(len(p.lanes))
        p.res.metrics.isolation_moves.labels(p.name, "promoted").inc()
        p._show_lane(lane)
        log.warning("pipeline %s: tenant %s isolated: %s", p.name, tenant, reason, extra=p._ctx)

    async def spill(self, now: Set[str] = frozenset()) -> None:
        """Park an isolated tenant's waiting work once it is more than ``spill_after``
        tasks, or once any of it has waited ``SPILL_WAIT`` seconds: either way the lane
        is not keeping up, and its messages would hold back the source's commits.
        Tenants in ``now`` spill without waiting for either."""
        p = self.pipeline
        limit = p.thresholds.spill_after
        horizon = time.time() - SPILL_WAIT
        for tenant, lane in list(p.lanes.items()):
            if tenant in p.parking.spilling:
                await p.parking.anchor(self._holding_source(tenant, time.monotonic()))
                continue
            waiting = p.tenant_live[tenant] - p.tenant_inflight[tenant]
            if waiting <= 0:
                continue
            if tenant not in now and waiting <= limit and not self._waited_since(tenant, horizon):
                continue
            p.parking.spilling.add(tenant)
            await self._park_waiting(tenant, lane)

    async def _park_waiting(self, tenant: str, lane: Lane[Task]) -> None:
        """Park every waiting task of ``tenant`` (see ``_take_waiting``)."""
        tasks = self._take_waiting(tenant, lane)
        log.info(
            "pipeline %s: tenant %s spills %d waiting tasks to the store",
            self.pipeline.name,
            tenant,
            len(tasks),
        )
        await self.pipeline.parking.park(tasks)

    def _holding_source(self, tenant: str, now: float) -> list[Task]:
        """Tasks of a spilling tenant that still hold their source message: those waiting
        for a retry (they were running when the tenant began to spill), and those whose
        call has been in flight for ``RUNNING_ANCHOR_AFTER`` at ``now`` (monotonic).
        Parking them would let tasks behind their key overtake them, so they are anchored
        instead: a copy goes to the store and the message is settled."""
        p = self.pipeline
        retrying = [
            t for t in p.live.values() if t.record.tenant == tenant and t.retry_handle is not None
        ]
        in_long_calls = [
            t
            for began, t in p.in_flight()
            if t.record.tenant == tenant and now - began >= RUNNING_ANCHOR_AFTER
        ]
        return [t for t in retrying + in_long_calls if self.holds_source(t)]

    def holds_source(self, task: Task) -> bool:
        """Whether ``task`` (not cancelled, not being parked) still holds a source message
        that no parked row stands for."""
        p = self.pipeline
        return (
            not task.cancelled
            and task.record.id not in p.parking.parking_ids
            and any(d.settled is None and not p.parking.is_parked(d) for d in task.deliveries)
        )

    def _waited_since(self, tenant: str, horizon: float) -> bool:
        """Whether a waiting task of ``tenant`` was received before ``horizon``."""
        p = self.pipeline
        return any(
            t.record.tenant == tenant
            and t.record.state in _WAITING
            and t.lane is None
            and (t.record.received or 0.0) < horizon
            for t in p.live.values()
        )

    def _take_waiting(self, tenant: str, lane: Lane[Task]) -> list[Task]:
        """Take every waiting task of ``tenant`` out of its lane, key gate or retry timer.

        Tasks waiting behind a key are removed from the gates first, so that releasing
        the keys the others held cannot hand a key to a task that is leaving too.
        """
        p = self.pipeline
        queued = lane.queue.take_tenant(tenant)
        retrying = [
            t
            for t in p.live.values()
            if t.record.tenant == tenant and t.retry_handle is not None and not t.cancelled
        ]
        behind_keys = [
            t
            for t in p.live.values()
            if t.record.tenant == tenant
            and t.record.state in _WAITING
            and t.retry_handle is None
            and t.lane is None
            and p.gates.remove(t.gate, t)
        ]
        for task in retrying:
            assert task.retry_handle is not None
            task.retry_handle.cancel()
            task.retry_handle = None
        for task in [*queued, *retrying]:
            following = p.gates.release(task.gate)
            if following is not None:
                p._enqueue(following)
        return [*queued, *retrying, *behind_keys]

    def reclaim(self, now: float) -> None:
        p = self.pipeline
        for tenant, lane in list(p.lanes.items()):
            idle = not lane.busy and not p.tenant_live[tenant] and not p.parking.counts[tenant]
            if not idle:
                lane.idle_since = None
                continue
            if lane.idle_since is None:
                lane.idle_since = now
            elif now - lane.idle_since >= p.thresholds.idle_reclaim:
                del p.lanes[tenant]
                p.detector.forget(tenant)
                p._lane_gauges.pop(lane.name, None)
                p.res.metrics.inflight.remove(p.name, lane.name)
                p.res.metrics.concurrency_limit.remove(p.name, lane.name)
                p.m_isolated.set(len(p.lanes))
                p.res.metrics.isolation_moves.labels(p.name, "reclaimed").inc()
                log.warning(
                    "pipeline %s: tenant %s reclaimed into the shared lane after %.0fs idle",
                    p.name,
                    tenant,
                    now - lane.idle_since,
                )
