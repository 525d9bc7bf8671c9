"""What one invocation of a function did to one event, as a value.

The HTTP target never raises for a remote failure: status codes, timeouts and
connection errors all become an ``Outcome`` through ``connectors.function.classify``.
The core then decides what to do from ``Outcome.kind`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["ErrorKind", "Outcome", "OutcomeKind"]


class OutcomeKind(StrEnum):
    """The four things an invocation can come to."""

    SUCCEEDED = "succeeded"
    """The function took the event (2xx). ``data`` is its answer."""
    THROTTLED = "throttled"
    """The function asked us to slow down (429, 503): shrink the window, retry later."""
    RETRYABLE = "retryable"
    """A passing failure (408, other 5xx, timeout, connection): retry with backoff."""
    PERMANENT = "permanent"
    """The event will never succeed (other 4xx, bad payload): fail it now."""


class ErrorKind(StrEnum):
    """The closed vocabulary of ``data.error.kind`` in ``bridge.task.failed`` events.

    Listed with their meaning in docs/errors.md; a test keeps the two in step.
    """

    CLIENT_ERROR = "client_error"
    """The function answered a 4xx other than 408 and 429: the event is rejected."""
    SERVER_ERROR = "server_error"
    """The function kept answering 408 or a 5xx other than 503 until retries ran out."""
    THROTTLED = "throttled"
    """The function kept answering 429 or 503 until retries ran out."""
    TIMEOUT = "timeout"
    """The function did not answer within ``target.timeout``."""
    CONNECTION_ERROR = "connection_error"
    """The function could not be reached, or the connection broke mid-request."""
    INVALID_RESPONSE = "invalid_response"
    """A batch answer that is not the shape the function contract describes."""
    SCHEMA_VIOLATION = "schema_violation"
    """The payload failed the pipeline's ``schema``; the function was never called."""
    MALFORMED_MESSAGE = "malformed_message"
    """The message could not be decoded into an event; the function was never called."""
    CANCELLED = "cancelled"
    """An operator cancelled the task."""
    EXPIRED = "expired"
    """The task was older than ``retry.max_age`` before it could run again."""


@dataclass(slots=True, kw_only=True)
class Outcome:
    """One event's result from one invocation attempt (treat it as read-only; it is not
    frozen because a frozen dataclass is built three times slower, once per event).

    ``data`` is the function's answer for a success (parsed JSON when the content type
    is JSON, text for text, bytes otherwise); ``error_kind``/``message``/``status``
    describe a failure; ``retry_after`` is the function's ``Retry-After`` in seconds.
    """

    kind: OutcomeKind
    status: int | None = None
    data: Any = None
    content_type: str | None = None
    error_kind: ErrorKind | None = None
    message: str = ""
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.SUCCEEDED
