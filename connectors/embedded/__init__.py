"""The embedded source: a durable queue in the bridge's own SQLite database."""

from connectors.embedded.source import EmbeddedSource

__all__ = ["EmbeddedSource"]
