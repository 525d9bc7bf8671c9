"""``type: eventbridge``: put each result event on an Amazon EventBridge bus.

One PutEvents entry per event: ``Detail`` is the event's structured CloudEvent JSON
(every attribute, the data embedded as JSON when it is JSON), ``DetailType`` its
``type``, ``Source`` its ``source``, ``Time`` its ``time``, ``EventBusName`` the
configured bus. Rules can match on ``detail-type``/``source`` and on any attribute
under ``detail``; a rule's target receives the EventBridge envelope with the
CloudEvent as its ``detail``.

Ten entries (at most 256 KiB) per call; entries counted in ``FailedEntryCount`` are
sent again, only they (``connectors.sqs.batches``). An entry over 256 KiB is reported
as too large, and the core puts a reduced copy of it instead (docs/sinks.md). One
EventBridge refuses as malformed is logged at ERROR and dropped: it can never be
delivered, and the core would otherwise retry it for ever (docs/connectors/sqs.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final, Self

from connectors.sqs.batches import Entry, EntryFailure, send_entries
from connectors.sqs.client import AwsClient, AwsEndpoint
from connectors.sqs.errors import map_aws_sink_errors
from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Resources
from consumer_core.events import CloudEvent, structured_bytes

__all__ = ["EventBridgeSink"]

PERMANENT_CODES: Final = frozenset(
    {"InvalidArgument", "MalformedDetail", "ValidationException", "InvalidEventBusName"}
)
"""Per-entry error codes that resending the same entry cannot fix."""

_TIME_SIZE: Final = 14
"""What AWS counts for an entry's ``Time`` when computing its size."""


class EventBridgeSink:
    """Result events to one EventBridge bus (see the module docstring)."""

    def __init__(self, *, name: str, event_bus_name: str, endpoint: AwsEndpoint) -> None:
        self.name = name
        self.event_bus_name = event_bus_name
        self.client = AwsClient("events", endpoint)
        self._label = f"eventbridge sink {event_bus_name}"

    @classmethod
    def from_config(cls, spec: ComponentSpec, res: Resources) -> Self:
        o = spec.options
        return cls(
            name=spec.path,
            event_bus_name=str(o["event_bus_name"]),
            endpoint=AwsEndpoint.from_options(o),
        )

    def __repr__(self) -> str:
        return f"EventBridgeSink(event_bus_name={self.event_bus_name!r})"

    async def connect(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()

    def _entry(self, event: CloudEvent) -> Entry:
        attributes = event.get_attributes()
        detail = structured_bytes(event)
        source = str(attributes.get("source", ""))
        detail_type = str(attributes.get("type", ""))
        request: dict[str, Any] = {
            "Source": source,
            "DetailType": detail_type,
            "Detail": detail.decode(),
            "EventBusName": self.event_bus_name,
        }
        size = len(source.encode()) + len(detail_type.encode()) + len(detail)
        time = attributes.get("time")
        if isinstance(time, datetime):
            request["Time"] = time
            size += _TIME_SIZE
        return Entry(event_id=str(event.get_id()), key=None, request=request, size=size)

    async def _send(self, entries: list[Entry]) -> dict[str, EntryFailure]:
        with map_aws_sink_errors(f"{self._label}: putting events"):
            answer = await self.client.api.put_events(Entries=[e.request for e in entries])
        if not answer.get("FailedEntryCount"):
            return {}
        failures: dict[str, EntryFailure] = {}
        for entry, result in zip(entries, answer.get("Entries") or [], strict=False):
            code = result.get("ErrorCode")
            if code:
                failures[entry.event_id] = EntryFailure(
                    f"{code}: {result.get('ErrorMessage', '')}", code in PERMANENT_CODES
                )
        return failures

    async def emit(self, events: Sequence[CloudEvent]) -> None:
        """Put every event; raise ``PartialFailure``/``SinkError`` for what did not go."""
        await send_entries(self._label, [self._entry(e) for e in events], self._send, ordered=False)
