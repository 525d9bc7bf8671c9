"""Sources (and the function target), looked up by ``type`` when first used.

The registry holds import strings, not classes, so ``bridge validate`` and pipelines
that do not use a broker never import its client library. A missing client library
becomes a ``ConfigError`` naming the extra to install.
"""

from __future__ import annotations

import importlib
from typing import Any, Final

from consumer_core.errors import ConfigError, ConfigProblem

__all__ = ["SOURCES", "load_source"]

SOURCES: Final[dict[str, str]] = {
    "embedded": "connectors.embedded:EmbeddedSource",
    "kafka": "connectors.kafka:KafkaSource",
    "rabbitmq": "connectors.rabbitmq:RabbitMQSource",
    "sqs": "connectors.sqs:SQSSource",
}


def load_component(registry: dict[str, str], type_name: str, path: str) -> Any:
    """Import and return the class registered for ``type_name``."""
    target = registry.get(type_name)
    if target is None:
        raise ConfigError([ConfigProblem("<config>", None, path, f"unknown type {type_name!r}")])
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = f"pip install 'bridge[{type_name}]'"
        raise ConfigError(
            [ConfigProblem("<config>", None, path, f"type {type_name!r} needs {hint} ({exc})")]
        ) from exc
    return getattr(module, attr)


def load_source(type_name: str, path: str) -> Any:
    return load_component(SOURCES, type_name, path)
