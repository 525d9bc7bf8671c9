"""RabbitMQ (AMQP 0-9-1) source, on pika's asyncio adapter; the sink lives in ``sinks.rabbitmq``.

``client`` wraps pika, ``errors`` maps its exceptions, ``headers`` maps CloudEvents onto
messages (cloudevents SDK bindings), ``source`` is the ``type: rabbitmq`` source.
"""

from connectors.rabbitmq.source import RabbitMQDelivery, RabbitMQSource

__all__ = ["RabbitMQDelivery", "RabbitMQSource"]
