"""Settling SQS messages: the in-flight set the heartbeat walks, and batched calls.

``InFlight`` is pure and clock-injected: the messages received and not yet settled,
kept in the order their visibility runs out (every message gets the same timeout, so
insertion order *is* deadline order, and an extended message moves to the back).

``Batcher`` collects items (receipt handles to delete, visibility changes) and hands
them to a send function ten at a time, after lingering a few milliseconds for a
batch to fill, with a bounded number of calls in flight.

``settle_entries`` makes one DeleteMessageBatch/ChangeMessageVisibilityBatch call and
deals with what failed: transient failures are sent again (only those entries),
expired receipt handles are logged (SQS delivers the message again and the core drops
the copy as a duplicate), a call that keeps failing is given up after a few attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Final, Generic, TypeVar

from consumer_core.errors import FatalClientError, NotConnected

__all__ = ["GONE_CODES", "Batcher", "Handle", "InFlight", "settle_entries"]

log = logging.getLogger(__name__)

SETTLE_ATTEMPTS: Final = 5
GONE_CODES: Final = frozenset(
    {
        "AWS.SimpleQueueService.MessageNotInflight",
        "InvalidParameterValue",
        "MessageNotInflight",
        "ReceiptHandleIsInvalid",
    }
)
"""Per-entry codes meaning the receipt handle no longer works (expired, or settled)."""

T = TypeVar("T")

_sequence = itertools.count()


class Handle:
    """One received message: what settling it needs, and where it stands.

    ``deadline`` is when its visibility runs out (clock seconds) while it is in the
    ``InFlight`` set. ``extending`` is true while a heartbeat call for it is in
    flight; a nack that arrives then is parked in ``pending_release`` and sent when
    the heartbeat call returned, so it cannot be overwritten by the extension.
    """

    __slots__ = ("deadline", "extending", "message_id", "pending_release", "receipt", "seq")

    def __init__(self, message_id: str, receipt: str) -> None:
        self.seq = next(_sequence)
        self.message_id = message_id
        self.receipt = receipt
        self.deadline = 0.0
        self.extending = False
        self.pending_release: float | None = None

    def __repr__(self) -> str:
        return f"Handle({self.message_id!r})"


class InFlight:
    """Unsettled messages in deadline order (see the module docstring).

    Invariant: iteration order is non-decreasing ``deadline``.
    """

    def __init__(self, visibility: float) -> None:
        self.visibility = visibility
        self._handles: OrderedDict[int, Handle] = OrderedDict()

    def __len__(self) -> int:
        return len(self._handles)

    def add(self, handle: Handle, now: float) -> None:
        handle.deadline = now + self.visibility
        self._handles[handle.seq] = handle

    def remove(self, handle: Handle) -> bool:
        """Stop tracking ``handle``; False if it was not tracked (already settled)."""
        return self._handles.pop(handle.seq, None) is not None

    def due(self, now: float, limit: int) -> list[Handle]:
        """Up to ``limit`` messages at or past half their visibility, oldest first.

        They are taken as extended (new deadline, moved to the back); a caller whose
        extension failed puts them back with ``retry_soon``.
        """
        taken: list[Handle] = []
        for handle in self._handles.values():
            if len(taken) >= limit or handle.deadline - now > self.visibility / 2:
                break
            taken.append(handle)
        for handle in taken:
            handle.deadline = now + self.visibility
            self._handles.move_to_end(handle.seq)
        return taken

    def retry_soon(self, handles: list[Handle], now: float) -> None:
        """Put back at the front, due now, the tracked ones among ``handles``."""
        for handle in reversed(handles):
            if handle.seq in self._handles:
                handle.deadline = now
                self._handles.move_to_end(handle.seq, last=False)

    def drain(self) -> list[Handle]:
        """Stop tracking everything; return what was tracked."""
        handles = list(self._handles.values())
        self._handles.clear()
        return handles


class Batcher(Generic[T]):
    """Sends items in batches of ``size`` (see the module docstring).

    ``send`` must not raise (it logs and handles its own failures); ``run`` is the
    loop, ``stop`` makes it send what is left, wait for the calls in flight and return.
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[None]],
        *,
        name: str,
        size: int = 10,
        linger: float = 0.005,
        concurrency: int = 4,
    ) -> None:
        self.name = name
        self._send = send
        self._size = size
        self._linger = linger
        self._items: list[T] = []
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._calls: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.stopped = asyncio.Event()
        """Set once ``run`` returned after ``stop``: everything was sent."""

    def __len__(self) -> int:
        return len(self._items)

    def add(self, item: T) -> None:
        self._items.append(item)
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._items:
                if self._stopping:
                    break
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._items) < self._size and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full(), self._linger)
            batch, self._items = self._items[: self._size], self._items[self._size :]
            await self._slots.acquire()
            call = asyncio.create_task(self._call(batch), name=f"{self.name}:call")
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)
        if self._calls:
            await asyncio.gather(*self._calls)
        self.stopped.set()

    async def _full(self) -> None:
        while len(self._items) < self._size and not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    async def _call(self, batch: list[T]) -> None:
        try:
            await self._send(batch)
        finally:
            self._slots.release()


async def settle_entries(
    call: Callable[..., Awaitable[Any]],
    entries: list[tuple[dict[str, Any], Handle]],
    *,
    queue: str,
    action: str,
) -> list[Handle]:
    """Send ``entries`` through ``call(Entries=...)``; return the handles that went through.

    ``call`` raises ``NotConnected`` or ``FatalClientError``. Never raises itself: a
    settle that is lost only means a redelivery, which the core deduplicates.
    """
    pending = entries
    done: list[Handle] = []
    for attempt in range(SETTLE_ATTEMPTS):
        if attempt:
            await asyncio.sleep(0.1 * 2**attempt)
        try:
            answer = await call(Entries=[{"Id": str(i), **e} for i, (e, _) in enumerate(pending)])
        except NotConnected as exc:
            log.debug("sqs source %s: %s (attempt %d)", queue, exc, attempt + 1)
            continue
        except FatalClientError as exc:
            log.error("sqs source %s: %s", queue, exc)
            return done
        failed = {int(f["Id"]): f for f in answer.get("Failed") or []}
        done.extend(h for i, (_, h) in enumerate(pending) if i not in failed)
        retry = [
            pending[i]
            for i, f in failed.items()
            if _worth_retrying(f, pending[i][1], queue, action)
        ]
        if not retry:
            return done
        pending = retry
    log.warning(
        "sqs source %s: %s: gave up on %d messages after %d attempts",
        queue,
        action,
        len(pending),
        SETTLE_ATTEMPTS,
    )
    return done


def _worth_retrying(failed: dict[str, Any], handle: Handle, queue: str, action: str) -> bool:
    """Log why an entry failed; True when sending it again may work."""
    code = str(failed.get("Code", ""))
    if code in GONE_CODES:
        log.warning(
            "sqs source %s: %s: receipt handle of message %s no longer valid (%s); "
            "SQS delivers it again and the bridge drops the copy as a duplicate",
            queue,
            action,
            handle.message_id,
            code,
        )
        return False
    if failed.get("SenderFault"):
        log.warning(
            "sqs source %s: %s: message %s refused: %s %s",
            queue,
            action,
            handle.message_id,
            code,
            failed.get("Message", ""),
        )
        return False
    return True
