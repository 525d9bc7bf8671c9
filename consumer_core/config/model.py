"""Typed, frozen view of a validated pipeline file.

The JSON Schema in ``configs/schema/bridge-v1.schema.json`` is the single source of
truth: it decides what is valid, which defaults apply and which strings are durations.
The loader validates against it, fills in the schema's defaults, turns every duration
into float seconds and only then builds these dataclasses, so nothing here re-checks
values. Connector and sink specific keys stay in ``ComponentSpec.options`` and each
component reads its own keys (see ``connectors`` and ``sinks``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

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
    "TlsSpec",
]


class Ordering(StrEnum):
    """How messages of one pipeline may overtake each other."""

    KEY = "key"
    """Messages with the same ordering key run one at a time, in arrival order."""
    PARTITION = "partition"
    """Messages of the same partition (or queue) run one at a time, in arrival order."""
    NONE = "none"
    """No ordering: every message may run as soon as the window has room."""


class TargetMode(StrEnum):
    """How events are put on the wire to the function."""

    BINARY = "binary"
    """One POST per event, attributes as ``ce-*`` headers, the payload as the body."""
    STRUCTURED = "structured"
    """One POST per event, an ``application/cloudevents+json`` document."""
    BATCH = "batch"
    """One POST per batch, an ``application/cloudevents-batch+json`` array."""


class TenantFrom(StrEnum):
    """Where a message's tenant is read from."""

    HEADER = "header"
    """A message header (Kafka header, AMQP header, SQS attribute, HTTP header)."""
    KEY = "key"
    """The message's ordering key."""
    JSON = "json"
    """A JSON path (``$.a.b``) into the payload."""


_SECRET_WORDS = ("secret", "token", "password", "authorization", "sasl", "key")


def _redacted(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy safe to log: values under secret-looking names are hidden."""
    return {
        k: "<redacted>" if any(w in k.lower() for w in _SECRET_WORDS) else v
        for k, v in values.items()
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class ComponentSpec:
    """A source or sink: its ``type`` and every other key, defaults filled in.

    ``path`` is where it sits in the file (``pipelines[0].on_success[1]``) so that a
    component can name itself in errors raised after loading.
    """

    type: str
    options: Mapping[str, Any]
    path: str

    def __repr__(self) -> str:
        options = dict(self.options)
        for name in ("settings", "headers"):
            if isinstance(options.get(name), Mapping):
                options[name] = _redacted(options[name])
        return (
            f"ComponentSpec(type={self.type!r}, options={_redacted(options)!r}, path={self.path!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSpec:
    """TLS for HTTPS: files resolved against the pipeline file's folder."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetSpec:
    type: str = "http"
    url: str
    timeout: float = 30.0
    mode: TargetMode = TargetMode.BINARY
    batch_max_events: int = 100
    batch_max_wait: float = 0.02
    headers: Mapping[str, str] = field(default_factory=dict)
    tls: TlsSpec = field(default_factory=TlsSpec)

    def __repr__(self) -> str:
        return (
            f"TargetSpec(url={self.url!r}, timeout={self.timeout}, mode={self.mode.value!r}, "
            f"batch_max_events={self.batch_max_events}, batch_max_wait={self.batch_max_wait}, "
            f"headers={_redacted(self.headers)!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class ConcurrencySpec:
    initial: int = 8
    min: int = 1
    max: int = 512


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySpec:
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    max_age: float = 3600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantSpec:
    source: TenantFrom
    name: str | None = None
    """Header name, for ``from: header``."""
    path: str | None = None
    """JSON path such as ``$.account``, for ``from: json``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IsolationSpec:
    enabled: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    name: str
    source: ComponentSpec
    target: TargetSpec
    ordering: Ordering = Ordering.KEY
    tenant: TenantSpec | None = None
    schema: Path | None = None
    """Resolved against the pipeline file's folder."""
    concurrency: ConcurrencySpec = field(default_factory=ConcurrencySpec)
    retry: RetrySpec = field(default_factory=RetrySpec)
    isolation: IsolationSpec = field(default_factory=IsolationSpec)
    on_success: tuple[ComponentSpec, ...] = ()
    on_failure: tuple[ComponentSpec, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8081
    token: str | None = None
    """``None`` when unset or empty: the API is then open (loopback by default)."""

    def __repr__(self) -> str:
        token = "<redacted>" if self.token else None
        return f"ServerConfig(host={self.host!r}, port={self.port}, token={token!r})"


@dataclass(frozen=True, slots=True, kw_only=True)
class StateConfig:
    url: str = "sqlite:///.bridge/state.db"
    dedup_window: float = 86400.0
    retention: float = 7 * 86400.0
    instance: str = ""
    """Empty: derived from the host name and the admin port."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeConfig:
    file: Path
    """The file this configuration was read from."""
    version: int = 1
    server: ServerConfig = field(default_factory=ServerConfig)
    state: StateConfig = field(default_factory=StateConfig)
    shutdown_timeout: float = 30.0
    pipelines: tuple[PipelineConfig, ...] = ()
