"""Messages whose task failed for good, moved to the queue's own dead-letter queue.

The core calls ``Delivery.reject()`` once a task failed for good and its failure
event reached the ``on_failure`` sinks (if any). When the queue has a redrive policy,
the SQS source moves the message to the policy's dead-letter queue: SendMessage there
with the same body and message attributes (on FIFO: the same MessageGroupId and the
MessageId as deduplication id), then delete it here. Waiting for SQS to redrive it by
itself cannot work: the message would come back ``maxReceiveCount`` times and the
core would delete the first copy as a duplicate of a finished task. Without a redrive
policy a rejected message is deleted.

The moved message gets a new MessageId and a fresh receive count and retention
period, as with SQS's own redrive to a FIFO queue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Final

from connectors.sqs.errors import map_aws_errors
from consumer_core.errors import FatalClientError, NotConnected

__all__ = ["dead_letter_entry", "resolve_dead_letter_queue"]

log = logging.getLogger(__name__)

_ATTRIBUTE_KEYS: Final = ("DataType", "StringValue", "BinaryValue")


def _redrive_target(attributes: Mapping[str, str]) -> tuple[str, str] | None:
    """(queue name, account id) of the redrive policy's dead-letter queue, if any."""
    try:
        policy = json.loads(attributes.get("RedrivePolicy") or "null")
    except ValueError:
        return None
    arn = policy.get("deadLetterTargetArn") if isinstance(policy, dict) else None
    parts = str(arn or "").split(":")
    if len(parts) != 6:  # arn:aws:sqs:region:account:name
        return None
    return parts[5], parts[4]


async def resolve_dead_letter_queue(
    api: Any, queue: str, attributes: Mapping[str, str]
) -> str | None:
    """The URL of the queue's dead-letter queue, or ``None`` (no policy, or not found)."""
    target = _redrive_target(attributes)
    if target is None:
        return None
    name, account = target
    try:
        with map_aws_errors(f"finding the dead-letter queue {name}"):
            answer = await api.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)
    except (NotConnected, FatalClientError) as exc:
        log.warning("sqs source %s: %s; messages that fail for good will be deleted", queue, exc)
        return None
    url = str(answer["QueueUrl"])
    log.info("sqs source %s: messages that fail for good move to %s", queue, url)
    return url


def dead_letter_entry(message: Mapping[str, Any], *, fifo: bool) -> dict[str, Any]:
    """The SendMessageBatch entry (without ``Id``) that moves ``message`` as it came."""
    entry: dict[str, Any] = {"MessageBody": message.get("Body", "")}
    attributes = {
        name: {k: v for k, v in value.items() if k in _ATTRIBUTE_KEYS}
        for name, value in (message.get("MessageAttributes") or {}).items()
    }
    if attributes:
        entry["MessageAttributes"] = attributes
    if fifo:
        system = message.get("Attributes") or {}
        entry["MessageGroupId"] = system.get("MessageGroupId") or message["MessageId"]
        entry["MessageDeduplicationId"] = message["MessageId"]
    return entry
