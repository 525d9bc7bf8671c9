"""Kafka: a consumer-group source that commits only finished offsets (``source``),
on confluent-kafka confined to one thread (``client``). The result sink is
``sinks.kafka``; both use the CloudEvents Kafka binding (``headers``)."""

from connectors.kafka.source import KafkaSource

__all__ = ["KafkaSource"]
