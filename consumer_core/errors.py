"""Bridge's exception tree.

::

    BridgeError                     root; never raised itself
    ├── ConfigError                 a pipeline file is wrong; exit 2 before anything starts
    ├── ConnectorError              a source or target client failed (``retryable`` per class)
    │   ├── NotConnected            retryable: the core reconnects with backoff
    │   ├── EndOfInput              graceful end of a finite source
    │   └── FatalClientError        the pipeline stops and /readyz turns red
    ├── SinkError                   a result could not be delivered (``retryable`` per class)
    │   └── PartialFailure          some events of a batch were not delivered
    └── StoreError                  the task store failed (``retryable`` per class)
        └── IllegalTransition       a task was asked to move along an edge that does not exist

Whether an error is worth retrying is a property of its class (``retryable``), never
guessed from its message. Outcomes of function invocations are values
(``consumer_core.outcome``), not exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "BridgeError",
    "ConfigError",
    "ConfigProblem",
    "ConnectorError",
    "EndOfInput",
    "FatalClientError",
    "IllegalTransition",
    "NotConnected",
    "PartialFailure",
    "SinkError",
    "StoreError",
]


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""

    retryable: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong with a pipeline file.

    ``path`` is the dotted location (``pipelines[0].target.timeout``), empty for the
    document itself; ``line`` is 1-based, or ``None`` when the problem has no place in
    the file (a file that cannot be read).
    """

    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigError(BridgeError):
    """A pipeline file is invalid. Carries every problem found, one line each."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: Sequence[ConfigProblem] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class ConnectorError(BridgeError):
    """A source or target client failed."""


class NotConnected(ConnectorError):
    """The client has no connection right now; the core calls ``connect`` again."""

    retryable = True


class EndOfInput(ConnectorError):
    """A finite source has nothing more to give; the pipeline drains and stops."""


class FatalClientError(ConnectorError):
    """The client cannot go on (bad credentials, missing queue); the pipeline stops."""


class SinkError(BridgeError):
    """A result event could not be delivered to a sink."""

    retryable = True


class PartialFailure(SinkError):
    """Some events of a batch were delivered and some were not.

    ``failed_ids`` are retried. ``too_large_ids`` are over what the sink can take in
    one message: the core sends a reduced copy of each instead (``events.reduced``),
    keeping the whole event in the task store. ``undeliverable_ids`` can never be
    delivered, not even reduced: the core gives up on those for this sink, logs an
    ERROR and counts them in ``bridge_undeliverable_results_total``.
    """

    def __init__(
        self,
        message: str,
        failed_ids: Iterable[str],
        undeliverable_ids: Iterable[str] = (),
        *,
        too_large_ids: Iterable[str] = (),
    ) -> None:
        self.failed_ids: frozenset[str] = frozenset(failed_ids)
        self.undeliverable_ids: frozenset[str] = frozenset(undeliverable_ids)
        self.too_large_ids: frozenset[str] = frozenset(too_large_ids)
        super().__init__(message)


class StoreError(BridgeError):
    """The task store failed."""

    retryable = True


class IllegalTransition(StoreError):
    """A task was asked to move between two states that have no edge between them."""

    retryable = False
