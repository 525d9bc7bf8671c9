"""Amazon SQS: the ``sqs`` source (``sinks.sqs`` and ``sinks.eventbridge`` share its client)."""

from connectors.sqs.source import SQSDelivery, SQSSource

__all__ = ["SQSDelivery", "SQSSource"]
