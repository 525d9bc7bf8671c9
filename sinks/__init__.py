"""Result sinks, looked up by ``type`` when first used (see ``connectors``)."""

from __future__ import annotations

from typing import Any, Final

from connectors import load_component

__all__ = ["SINKS", "load_sink"]

SINKS: Final[dict[str, str]] = {
    "eventbridge": "sinks.eventbridge:EventBridgeSink",
    "file": "sinks.file:FileSink",
    "kafka": "sinks.kafka:KafkaSink",
    "rabbitmq": "sinks.rabbitmq:RabbitMQSink",
    "sqs": "sinks.sqs:SQSSink",
    "webhook": "sinks.webhook:WebhookSink",
}


def load_sink(type_name: str, path: str) -> Any:
    return load_component(SINKS, type_name, path)
