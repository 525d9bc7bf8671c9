"""The fault suite's measuring tools: load, result bookkeeping, memory and the report row.

Blocking clients (confluent-kafka, pika, boto3) run in threads: a ``Feeder`` publishes
at a steady rate for the whole scenario, a collector thread reads the result sinks as
they fill. The function server and webhooks live on the test's event loop, so the
test itself only ever waits through ``asyncio.to_thread`` or ``asyncio.sleep``.

Every result event names its original message in ``subject``; ``Results`` counts them
by subject, which is what "exactly one final result per accepted message" is checked
against.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.report import MEMORY_MARGIN_MB, Row
from tests.support.bridge import BridgeProcess
from tests.support.function_server import Call, FunctionServer, Reply

# --------------------------------------------------------------------------- results


@dataclass
class Results:
    """Final results seen at the sinks, by subject (the original event's id).

    Thread-safe: collector threads and webhook handlers ``add`` while the test reads.
    """

    counts: Counter[str] = field(default_factory=Counter)
    errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``data.error`` (kind, message, status) per subject of a failed result."""
    first_at: dict[str, float] = field(default_factory=dict)
    """When each subject's first result arrived (``time.monotonic``)."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, subject: str, event_type: str, data: Any = None) -> None:
        """One result event: its subject, type and (for a failure) its data."""
        now = time.monotonic()
        with self._lock:
            self.counts[subject] += 1
            self.first_at.setdefault(subject, now)
            if event_type != "bridge.task.succeeded":
                error = data.get("error") if isinstance(data, dict) else None
                self.errors[subject] = error or {"kind": f"? ({event_type})"}

    @property
    def kinds(self) -> dict[str, str]:
        """Failure kind per subject of a failed result."""
        with self._lock:
            return {s: str(e.get("kind")) for s, e in self.errors.items()}

    def missing(self, ids: Sequence[str]) -> list[str]:
        with self._lock:
            return [i for i in ids if i not in self.counts]

    def has_all(self, ids: Sequence[str]) -> bool:
        return not self.missing(ids)

    def duplicates(self) -> int:
        with self._lock:
            return sum(n - 1 for n in self.counts.values())

    def unexpected(self, ids: Sequence[str]) -> list[str]:
        """Subjects that are no accepted message (would mean a wrong subject)."""
        known = set(ids)
        with self._lock:
            return [s for s in self.counts if s not in known]

    def first_after(self, moment: float) -> float | None:
        """Seconds from ``moment`` to the first result that arrived after it."""
        with self._lock:
            later = [t for t in self.first_at.values() if t >= moment]
        return min(later) - moment if later else None

    def completed_after(self, ids: Sequence[str], moment: float) -> float | None:
        """Seconds from ``moment`` until every id in ``ids`` had its first result."""
        with self._lock:
            times = [self.first_at.get(i) for i in ids]
        if not times or any(t is None for t in times):
            return None
        return max(0.0, max(t for t in times if t is not None) - moment)


class Webhook:
    """Behaviour of a ``FunctionServer`` acting as the result webhook (structured mode):
    records what it accepts into ``results``; answers 503 while ``refusing``."""

    def __init__(self, results: Results) -> None:
        self.results = results
        self.refusing = False
        self.refused = 0

    def __call__(self, call: Call) -> Reply:
        if self.refusing:
            self.refused += 1
            return Reply(503)
        attributes = call.attributes
        self.results.add(str(attributes.get("subject")), str(attributes.get("type")), call.data)
        return Reply(200)

    @staticmethod
    def sink(server: FunctionServer) -> dict[str, str]:
        """The sink entry of a pipeline file for ``server``."""
        return {"type": "webhook", "url": server.url, "mode": "structured"}


# --------------------------------------------------------------------------- load


class Feeder:
    """Publishes ``total`` messages in batches at about ``rate`` per second, in a thread.

    ``send(start, count)`` publishes messages ``start .. start+count-1`` and returns
    the ids of those the broker accepted (for Kafka: after the delivery report).
    ``finish()`` (optional) is called once at the end, e.g. to flush a producer, and
    returns ids accepted late.
    """

    def __init__(
        self,
        send: Callable[[int, int], list[str]],
        *,
        total: int,
        rate: float,
        batch: int = 50,
        finish: Callable[[], list[str]] | None = None,
    ) -> None:
        self.send = send
        self.total = total
        self.rate = rate
        self.batch = batch
        self.finish = finish
        self.accepted_at: dict[str, float] = {}
        """The accepted ids, in order, with when they were accepted (``time.monotonic``,
        per batch; an id reported twice keeps its first time)."""
        self.sent = 0
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fault-feeder", daemon=True)
        self._go = threading.Event()
        self._go.set()
        self._parked = threading.Event()

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            started = time.monotonic()
            while self.sent < self.total:
                if not self._go.is_set():
                    paused = time.monotonic()
                    self._parked.set()
                    self._go.wait()
                    started += time.monotonic() - paused  # no catching up afterwards
                due = started + self.sent / self.rate
                if (wait := due - time.monotonic()) > 0:
                    time.sleep(wait)
                count = min(self.batch, self.total - self.sent)
                self.accept(self.send(self.sent, count))
                self.sent += count
            if self.finish is not None:
                self.accept(self.finish())
        except BaseException as exc:  # reported by join(), never lost in the thread
            self.error = exc

    def accept(self, ids: list[str]) -> None:
        """Count ``ids`` as accepted now (the feeder's own, or sent beside it)."""
        now = time.monotonic()
        with self._lock:
            for event_id in ids:
                self.accepted_at.setdefault(event_id, now)

    def latency(self, results: Results, ids: Sequence[str]) -> float:
        """The longest time from acceptance to first result among ``ids``."""
        with self._lock:
            accepted = dict(self.accepted_at)
        return max(
            (results.first_at[i] - accepted[i] for i in ids if i in results.first_at),
            default=0.0,
        )

    def accepted_before(self, moment: float) -> list[str]:
        with self._lock:
            return [i for i, at in self.accepted_at.items() if at <= moment]

    def ids(self) -> list[str]:
        with self._lock:
            return list(self.accepted_at)

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    async def pause(self) -> None:
        """Stop publishing; returns once no batch is being sent."""
        self._go.clear()
        if self._thread.is_alive():
            await asyncio.to_thread(self._parked.wait, 10)

    def resume(self) -> None:
        self._parked.clear()
        self._go.set()

    async def join(self, timeout: float = 120.0) -> list[str]:
        await asyncio.to_thread(self._thread.join, timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the feeder did not finish within {timeout}s")
        if self.error is not None:
            raise AssertionError(f"the feeder failed: {self.error!r}") from self.error
        return self.ids()


class Collector:
    """Runs ``poll()`` in a thread until stopped; ``poll`` feeds a ``Results``."""

    def __init__(self, poll: Callable[[], None], close: Callable[[], None] | None = None) -> None:
        self.poll = poll
        self.close = close
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-collector", daemon=True)

    def start(self) -> Collector:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.poll()
        except BaseException as exc:
            self.error = exc
        finally:
            if self.close is not None:
                self.close()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the result collector failed: {self.error!r}") from self.error

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 30)
        self.check()


# --------------------------------------------------------------------------- bridge


def rss_mb(pid: int) -> float:
    """Resident set size of a process now (``VmRSS`` in ``/proc/<pid>/status``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def bridge_rss(bridge: BridgeProcess) -> float:
    assert bridge.proc is not None, "the bridge was never started"
    assert bridge.proc.poll() is None, "the bridge is not running"
    return rss_mb(bridge.proc.pid)


def pipeline_status(bridge: BridgeProcess, name: str) -> dict[str, Any]:
    status, doc = bridge.get("/v1/pipelines")
    assert status == 200, doc
    (pipeline,) = [p for p in doc["pipelines"] if p["name"] == name]
    return dict(pipeline)


def in_memory(bridge: BridgeProcess, name: str) -> int:
    """Tasks the pipeline holds (received, not yet settled): what a crash can repeat."""
    try:
        return int(pipeline_status(bridge, name)["tasks"])
    except (OSError, AssertionError):
        return 0


async def holding_work(bridge: BridgeProcess, name: str, timeout: float = 10.0) -> int:
    """Wait until the pipeline holds tasks (so a fault injected right after lands on work
    in flight); return how many it held."""
    deadline = time.monotonic() + timeout
    while (held := await asyncio.to_thread(in_memory, bridge, name)) == 0:
        if time.monotonic() > deadline:
            raise AssertionError(f"pipeline {name} held no work for {timeout:g}s")
        await asyncio.sleep(0.02)
    return held


async def wait_for(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    bridge: BridgeProcess | None = None,
    pipeline: str | None = None,
    collector: Collector | None = None,
    interval: float = 0.1,
) -> float:
    """Poll ``check`` (cheap, synchronous) until true; return the seconds it took.

    Fails at ``timeout``, or as soon as the bridge exited, ``pipeline`` (checked once
    a second) failed for good, or the collector failed."""
    started = time.monotonic()
    looked = started
    while not check():
        if collector is not None:
            collector.check()
        if bridge is not None and bridge.proc is not None and bridge.proc.poll() is not None:
            raise AssertionError(
                f"bridge exited with {bridge.proc.returncode} while waiting for {what}:\n"
                + bridge.log()[-4000:]
            )
        now = time.monotonic()
        if bridge is not None and pipeline is not None and now - looked >= 1.0:
            looked = now
            status = await asyncio.to_thread(pipeline_status, bridge, pipeline)
            if status["state"] == "failed" or status["error"]:
                raise AssertionError(
                    f"pipeline {pipeline} failed for good while waiting for {what}: "
                    f"{status['error']}\n{_describe(bridge)}"
                )
        if now - started > timeout:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}\n{_describe(bridge)}"
            )
        await asyncio.sleep(interval)
    return time.monotonic() - started


def _describe(bridge: BridgeProcess | None) -> str:
    """The bridge's pipelines and log tail, for a failure message."""
    if bridge is None:
        return ""
    try:
        _, pipelines = bridge.get("/v1/pipelines")
    except OSError as exc:
        pipelines = repr(exc)
    return f"pipelines: {pipelines}\nlog:\n{bridge.log()[-4000:]}"


async def finish(
    *,
    scenario: str,
    broker: str,
    name: str,
    bridge: BridgeProcess,
    feeder: Feeder,
    results: Results,
    collector: Collector | None,
    fault_end: float,
    bound: int,
    rss_base: float,
    report: list[Row],
    note: str | Callable[[], str] = "",
    timeout: float = 120.0,
) -> Row:
    """The common end of a scenario: wait until every accepted message has a result and
    the pipeline holds nothing, read the RSS, stop the bridge with SIGTERM (exit 0),
    add the row to the report and check it (``assert_settled``).

    ``resume_s``: from ``fault_end`` to the first result after it. ``recovery_s``: from
    ``fault_end`` until every message accepted before it had its result (the backlog
    the fault left was cleared). ``note`` may be a callable, read once all is settled."""
    ids = await feeder.join()
    unsettled: AssertionError | None = None
    try:
        await wait_for(
            lambda: results.has_all(ids),
            timeout=timeout,
            what=f"a result for each of {len(ids)} messages",
            bridge=bridge,
            pipeline=name,
            collector=collector,
        )
        await wait_for(
            lambda: pipeline_status(bridge, name)["tasks"] == 0,
            timeout=30,
            what="the pipeline to drain",
        )
    except AssertionError as exc:
        unsettled = exc  # the row still goes into the table, with what was lost
    running = bridge.proc is not None and bridge.proc.poll() is None
    rss_end = bridge_rss(bridge) if running else float("nan")
    await asyncio.sleep(1.0)  # a straggling duplicate would land now
    if collector is not None:
        await collector.stop()
    code = await asyncio.to_thread(bridge.terminate) if running else bridge.proc.returncode  # type: ignore[union-attr]
    row = Row(
        scenario=scenario,
        broker=broker,
        messages=len(ids),
        lost=len(results.missing(ids)),
        duplicates=results.duplicates(),
        bound=bound,
        resume_s=results.first_after(fault_end),
        recovery_s=results.completed_after(feeder.accepted_before(fault_end), fault_end),
        rss_base_mb=rss_base,
        rss_end_mb=rss_end,
        failures=len(results.kinds),
        note=note() if callable(note) else note,
    )
    report.append(row)
    if unsettled is not None:
        missing = results.missing(ids)
        raise AssertionError(
            f"{scenario}: {len(missing)} of {len(ids)} accepted messages have no result "
            f"(first: {missing[:3]})"
        ) from unsettled
    assert_settled(row, results, ids)
    assert code == 0, f"bridge exited with {code} on SIGTERM:\n{bridge.log()[-3000:]}"
    return row


def assert_settled(row: Row, results: Results, ids: Sequence[str]) -> None:
    """The checks every scenario ends with (after its own): print the row first so a
    failing run still shows its numbers."""
    print(
        f"\n{row.scenario} [{row.broker}]: {row.messages} messages, {row.lost} lost, "
        f"{row.duplicates} duplicates (bound {row.bound}), {row.failures} failed, "
        f"resume {row.resume_s}s, recovery {row.recovery_s}s, "
        f"RSS {row.rss_base_mb:.1f} MB -> {row.rss_end_mb:.1f} MB"
    )
    missing = results.missing(ids)
    assert row.lost == len(missing)
    assert not missing, f"{len(missing)} accepted messages have no result: {missing[:5]}"
    unexpected = results.unexpected(ids)
    assert not unexpected, f"results for messages never accepted: {unexpected[:5]}"
    assert row.duplicates <= row.bound, (
        f"{row.duplicates} duplicate results, more than the {row.bound} in flight at the faults"
    )
    assert row.rss_end_mb < row.rss_base_mb + MEMORY_MARGIN_MB, (
        f"bridge RSS {row.rss_end_mb:.1f} MB after draining, baseline {row.rss_base_mb:.1f} MB"
    )
