"""Sending events to an AWS batch API (SendMessageBatch, PutEvents), retrying failed entries.

Shared by ``sinks.sqs`` and ``sinks.eventbridge``. Both APIs take at most ten
entries and 256 KiB per call and answer per entry, so the logic is the same:

* an entry over ``max_bytes`` cannot be sent as it is: it is reported as too large
  (``PartialFailure.too_large_ids``), and the core sends a reduced copy of it instead
  (``consumer_core.events.reduced``; see docs/sinks.md);
* the rest are packed into calls by count and size and sent (one call after the
  other when ``ordered``, else a few at once);
* entries refused for a transient reason are sent again, only they, for a few rounds;
  entries refused for good (the service says the sender is at fault) are logged at
  ERROR and dropped;
* what still failed is raised: ``PartialFailure`` naming those event ids (and the
  too large ones), or the call's ``SinkError`` when nothing got through.

When ``ordered``, an event whose key already failed in this call, or has a too large
event before it, is not sent (it would overtake that one); it fails with it and is
retried after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from consumer_core.errors import PartialFailure, SinkError

__all__ = ["MAX_BATCH_BYTES", "MAX_ENTRIES", "Entry", "EntryFailure", "send_entries"]

log = logging.getLogger(__name__)

MAX_ENTRIES: Final = 10
MAX_BATCH_BYTES: Final = 256 * 1024
ROUNDS: Final = 3
CONCURRENT_CALLS: Final = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One event ready for the API: ``request`` is its entry without the batch ``Id``."""

    event_id: str
    key: str | None
    request: dict[str, Any]
    size: int


@dataclass(frozen=True, slots=True)
class EntryFailure:
    """Why the service refused one entry; ``permanent`` when resending cannot help."""

    reason: str
    permanent: bool = False


SendBatch = Callable[[list[Entry]], Awaitable[dict[str, EntryFailure]]]
"""Sends one call's entries; returns the failed ones by event id, or raises ``SinkError``."""


def pack(entries: Sequence[Entry], *, max_entries: int, max_bytes: int) -> list[list[Entry]]:
    """Split ``entries`` (in order) into calls of at most ``max_entries`` and ``max_bytes``."""
    batches: list[list[Entry]] = []
    current: list[Entry] = []
    size = 0
    for entry in entries:
        if current and (len(current) >= max_entries or size + entry.size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.size
    if current:
        batches.append(current)
    return batches


async def send_entries(
    sink: str,
    entries: Sequence[Entry],
    send: SendBatch,
    *,
    ordered: bool,
    max_entries: int = MAX_ENTRIES,
    max_bytes: int = MAX_BATCH_BYTES,
) -> None:
    """Send every entry (see the module docstring); raise for what could not be sent."""
    too_large = [e.event_id for e in entries if e.size > max_bytes]
    pending = [e for e in entries if e.size <= max_bytes]
    held = _held(entries, max_bytes) if ordered and too_large else []
    if held:
        held_ids = {e.event_id for e in held}
        pending = [e for e in pending if e.event_id not in held_ids]
    failures: dict[str, EntryFailure] = {}
    call_error: SinkError | None = None
    for attempt in range(ROUNDS):
        if not pending:
            break
        if attempt:
            await asyncio.sleep(0.1 * attempt)
        failures, call_error = await _round(pending, send, ordered, max_entries, max_bytes)
        for entry in pending:
            failure = failures.get(entry.event_id)
            if failure is not None and failure.permanent:
                log.error(
                    "%s: event %s refused for good, dropped: %s",
                    sink,
                    entry.event_id,
                    failure.reason,
                )
        pending = [
            e for e in pending if e.event_id in failures and not failures[e.event_id].permanent
        ]
    if not pending and not too_large:
        return
    if call_error is not None and len(pending) == len(entries):
        raise call_error
    failed = [e.event_id for e in pending + held]
    reason = (
        failures[pending[0].event_id].reason
        if pending
        else f"over the {max_bytes}-byte limit of one entry"
    )
    raise PartialFailure(
        f"{sink}: {len(failed) + len(too_large)} of {len(entries)} events not delivered "
        f"({len(too_large)} too large; {reason})",
        failed,
        too_large_ids=too_large,
    )


def _held(entries: Sequence[Entry], max_bytes: int) -> list[Entry]:
    """The entries behind a too large one of their key (it is replaced by a reduced copy
    in the next call, and they must not overtake it)."""
    blocked: set[str] = set()
    held: list[Entry] = []
    for entry in entries:
        if entry.size > max_bytes:
            if entry.key is not None:
                blocked.add(entry.key)
        elif entry.key is not None and entry.key in blocked:
            held.append(entry)
    return held


async def _round(
    entries: list[Entry], send: SendBatch, ordered: bool, max_entries: int, max_bytes: int
) -> tuple[dict[str, EntryFailure], SinkError | None]:
    """Send ``entries`` once; return the failures and the last whole-call error."""
    failures: dict[str, EntryFailure] = {}
    errors: list[SinkError] = []

    async def call(batch: list[Entry]) -> None:
        try:
            failures.update(await send(batch))
        except SinkError as exc:
            errors.append(exc)
            failures.update({e.event_id: EntryFailure(str(exc)) for e in batch})

    if ordered:
        failed_keys: dict[str, EntryFailure] = {}
        for batch in pack(entries, max_entries=max_entries, max_bytes=max_bytes):
            to_send: list[Entry] = []
            for entry in batch:
                if entry.key is not None and entry.key in failed_keys:
                    failures[entry.event_id] = failed_keys[entry.key]
                else:
                    to_send.append(entry)
            if to_send:
                await call(to_send)
            for entry in batch:
                failure = failures.get(entry.event_id)
                if entry.key is not None and failure is not None and not failure.permanent:
                    failed_keys.setdefault(entry.key, failure)
    else:
        slots = asyncio.Semaphore(CONCURRENT_CALLS)

        async def bounded(batch: list[Entry]) -> None:
            async with slots:
                await call(batch)

        batches = pack(entries, max_entries=max_entries, max_bytes=max_bytes)
        await asyncio.gather(*(bounded(b) for b in batches))
    return failures, errors[-1] if errors else None
