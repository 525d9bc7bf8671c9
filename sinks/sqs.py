"""``type: sqs``: send each result event to an SQS queue as a structured CloudEvent.

The message body is the event's structured JSON (``application/cloudevents+json``,
also set as the ``content-type`` message attribute), so a bridge reading the queue
with ``type: sqs`` sees the event with its attributes intact. Events go out with
SendMessageBatch, ten (and at most 256 KiB) per call; entries SQS refuses for a
transient reason are sent again, only they (``connectors.sqs.batches``).

FIFO queues (URL ending in ``.fifo``): MessageGroupId is the event's ``partitionkey``
(else its id, so unkeyed events are unordered), MessageDeduplicationId its id (so a
resent event is stored once); calls go one after the other and an event never
overtakes an earlier failed one of its group.

An event too large for SQS (over 256 KiB) is reported as such, and the core sends a
reduced copy of it instead (docs/sinks.md); one SQS refuses for good is logged at
ERROR and dropped (docs/connectors/sqs.md).
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from typing import Final, Self

from connectors.sqs.batches import Entry, EntryFailure, send_entries
from connectors.sqs.client import AwsClient, AwsEndpoint, queue_name
from connectors.sqs.errors import map_aws_sink_errors
from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Resources
from consumer_core.events import CloudEvent, partition_key, structured_bytes

__all__ = ["SQSSink"]

CONTENT_TYPE: Final = "application/cloudevents+json"
_CONTENT_TYPE_ATTRIBUTE: Final = {"DataType": "String", "StringValue": CONTENT_TYPE}
_ATTRIBUTES_SIZE: Final = len("content-type") + len("String") + len(CONTENT_TYPE)
_FIFO_ID_CHARS: Final = frozenset(string.ascii_letters + string.digits + string.punctuation)


def fifo_id(value: str) -> str:
    """``value`` if SQS takes it as a group or deduplication id, else a digest of it."""
    if 0 < len(value) <= 128 and all(c in _FIFO_ID_CHARS for c in value):
        return value
    return "sha256-" + hashlib.sha256(value.encode()).hexdigest()


class SQSSink:
    """Result events to one SQS queue (see the module docstring)."""

    def __init__(self, *, name: str, queue_url: str, endpoint: AwsEndpoint) -> None:
        self.name = name
        self.queue_url = queue_url
        self.fifo = queue_url.endswith(".fifo")
        self.client = AwsClient("sqs", endpoint)
        self._label = f"sqs sink {queue_name(queue_url)}"

    @classmethod
    def from_config(cls, spec: ComponentSpec, res: Resources) -> Self:
        o = spec.options
        return cls(
            name=spec.path, queue_url=str(o["queue_url"]), endpoint=AwsEndpoint.from_options(o)
        )

    def __repr__(self) -> str:
        return f"SQSSink(queue_url={self.queue_url!r})"

    async def connect(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()

    def _entry(self, event: CloudEvent) -> Entry:
        event_id = str(event.get_id())
        encoded = structured_bytes(event)
        key = partition_key(event)
        request = {
            "MessageBody": encoded.decode(),
            "MessageAttributes": {"content-type": _CONTENT_TYPE_ATTRIBUTE},
        }
        if self.fifo:
            request["MessageGroupId"] = fifo_id(key if key is not None else event_id)
            request["MessageDeduplicationId"] = fifo_id(event_id)
        return Entry(
            event_id=event_id,
            key=key,
            request=request,
            size=len(encoded) + _ATTRIBUTES_SIZE,
        )

    async def _send(self, entries: list[Entry]) -> dict[str, EntryFailure]:
        with map_aws_sink_errors(f"{self._label}: sending messages"):
            answer = await self.client.api.send_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), **e.request} for i, e in enumerate(entries)],
            )
        return {
            entries[int(f["Id"])].event_id: EntryFailure(
                f"{f.get('Code', '')}: {f.get('Message', '')}", bool(f.get("SenderFault"))
            )
            for f in answer.get("Failed") or []
        }

    async def emit(self, events: Sequence[CloudEvent]) -> None:
        """Send every event; raise ``PartialFailure``/``SinkError`` for what did not go."""
        await send_entries(
            self._label, [self._entry(e) for e in events], self._send, ordered=self.fifo
        )
