"""Loading pipeline files: YAML + ``${VAR}`` → JSON Schema → frozen dataclasses.

The JSON Schema (``configs/schema/bridge-v1.schema.json``) is the single source of
truth; :func:`schema` returns it. :func:`load_config` raises
:class:`consumer_core.errors.ConfigError` carrying every problem found, each as
``file:line: path: message``.
"""

from __future__ import annotations

from consumer_core.config.durations import parse_duration
from consumer_core.config.load import load_config, load_config_text
from consumer_core.config.model import (
    BridgeConfig,
    ComponentSpec,
    ConcurrencySpec,
    IsolationSpec,
    Ordering,
    PipelineConfig,
    RetrySpec,
    ServerConfig,
    StateConfig,
    TargetMode,
    TargetSpec,
    TenantFrom,
    TenantSpec,
)
from consumer_core.config.validate import schema

__all__ = [
    "BridgeConfig",
    "ComponentSpec",
    "ConcurrencySpec",
    "IsolationSpec",
    "Ordering",
    "PipelineConfig",
    "RetrySpec",
    "ServerConfig",
    "StateConfig",
    "TargetMode",
    "TargetSpec",
    "TenantFrom",
    "TenantSpec",
    "load_config",
    "load_config_text",
    "parse_duration",
    "schema",
]
