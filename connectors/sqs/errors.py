"""botocore errors, translated at the boundary into Bridge's error classes.

``map_aws_errors(action)`` wraps one AWS call (the httpx pattern): what it raises is
always a ``ConnectorError`` chained (``from``) to the botocore exception, chosen by a
table keyed by the service's ``Error.Code``, never by message text:

==========================================  =====================================
botocore                                    Bridge
==========================================  =====================================
throttling codes (``ThrottlingException``,  ``Throttled`` (a ``NotConnected``:
``RequestThrottled``, ``SlowDown``...)      retried with backoff)
``AccessDenied``, ``NonExistentQueue``,     ``FatalClientError`` (the pipeline
bad or missing credentials, unknown 4xx     stops, /readyz turns red)
5xx codes, connection errors, timeouts      ``NotConnected``
==========================================  =====================================

Sinks use ``map_aws_sink_errors``: the same table, but every error becomes a
``SinkError`` (``SinkUnavailable`` when retrying may help, ``SinkRejected`` when it
cannot), because that is what the core expects from ``Sink.emit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import aiohttp
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
)

from consumer_core.errors import (
    ConnectorError,
    FatalClientError,
    NotConnected,
    SinkError,
)

__all__ = [
    "FATAL_CODES",
    "THROTTLING_CODES",
    "SinkRejected",
    "SinkUnavailable",
    "Throttled",
    "error_code",
    "map_aws_errors",
    "map_aws_sink_errors",
]

THROTTLING_CODES: Final = frozenset(
    {
        "BandwidthLimitExceeded",
        "KMSThrottlingException",
        "KmsThrottled",
        "LimitExceededException",
        "PriorRequestNotComplete",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "ThrottledException",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
    }
)
"""Error codes that mean "too fast": worth retrying after a pause."""

FATAL_CODES: Final = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "AuthFailure",
        "AuthorizationError",
        "AWS.SimpleQueueService.NonExistentQueue",
        "IncompleteSignature",
        "InvalidAccessKeyId",
        "InvalidClientTokenId",
        "InvalidSecurity",
        "KMS.AccessDeniedException",
        "KmsAccessDenied",
        "MissingAuthenticationToken",
        "NonExistentQueue",
        "OptInRequired",
        "QueueDoesNotExist",
        "ResourceNotFoundException",
        "SignatureDoesNotMatch",
        "UnauthorizedOperation",
        "UnrecognizedClientException",
    }
)
"""Error codes that no retry can fix: wrong credentials or permissions, no such queue/bus."""

_CONNECTION_ERRORS: Final = (HTTPClientError, aiohttp.ClientError, OSError, TimeoutError)


class Throttled(NotConnected):
    """AWS asked us to slow down; the call is retried with backoff."""


class SinkUnavailable(SinkError):
    """The sink's service could not take the events now; retrying may help."""

    retryable = True


class SinkRejected(SinkError):
    """The sink's service refused the events for good (permissions, no such queue/bus).

    The core retries every ``SinkError`` today; this class says that retrying is
    unlikely to help, so an operator must act.
    """

    retryable = False


def error_code(exc: Any) -> str:
    """The ``Error.Code`` of a botocore ``ClientError`` (``""`` if it has none)."""
    error = getattr(exc, "response", {}).get("Error", {})
    return str(error.get("Code") or error.get("QueryErrorCode") or "")


def _status(exc: Any) -> int:
    metadata = getattr(exc, "response", {}).get("ResponseMetadata", {})
    return int(metadata.get("HTTPStatusCode") or 0)


def _classify(exc: BaseException) -> type[ConnectorError] | None:
    """The Bridge class for a botocore/transport exception, ``None`` if it is not one."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in THROTTLING_CODES:
            return Throttled
        if code in FATAL_CODES:
            return FatalClientError
        return NotConnected if _status(exc) >= 500 or _status(exc) == 0 else FatalClientError
    if isinstance(
        exc, NoCredentialsError | PartialCredentialsError | NoRegionError | ParamValidationError
    ):
        return FatalClientError
    if isinstance(exc, _CONNECTION_ERRORS):
        return NotConnected
    if isinstance(exc, BotoCoreError):
        return NotConnected
    return None


def _describe(action: str, exc: BaseException) -> str:
    code = error_code(exc) if isinstance(exc, ClientError) else type(exc).__name__
    return f"{action}: {code}: {exc}"


@contextmanager
def map_aws_errors(action: str) -> Iterator[None]:
    """Translate what one AWS call raises (see the module docstring).

    ``action`` is a terse gerund for the message (``"receiving messages"``).
    ``CancelledError`` and anything not from botocore or the transport pass unchanged.
    """
    try:
        yield
    except (BotoCoreError, ClientError, *_CONNECTION_ERRORS) as exc:
        cls = _classify(exc)
        if cls is None:
            raise
        raise cls(_describe(action, exc)) from exc


@contextmanager
def map_aws_sink_errors(action: str) -> Iterator[None]:
    """Like ``map_aws_errors``, for sinks: raises ``SinkUnavailable`` or ``SinkRejected``."""
    try:
        with map_aws_errors(action):
            yield
    except FatalClientError as exc:
        raise SinkRejected(str(exc)) from exc.__cause__
    except NotConnected as exc:
        raise SinkUnavailable(str(exc)) from exc.__cause__
