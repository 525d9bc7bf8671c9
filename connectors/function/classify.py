"""The one place that decides what a function's answer means (SPEC section 4).

=====================  ==========  ==================
answer                 outcome     failure kind
=====================  ==========  ==================
2xx                    succeeded
429, 503               throttled   ``throttled``
408, other 5xx         retryable   ``server_error``
timeout                retryable   ``timeout``
connection error       retryable   ``connection_error``
other 4xx, 1xx, 3xx    permanent   ``client_error``
=====================  ==========  ==================
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping

import aiohttp

from consumer_core.outcome import ErrorKind, Outcome, OutcomeKind

__all__ = ["classify_exception", "classify_response", "parse_retry_after"]

_SNIPPET = 200


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _snippet(body: bytes) -> str:
    text = body[:_SNIPPET].decode("utf-8", "replace").strip()
    return f": {text}" if text else ""


def classify_response(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    """Turn an HTTP answer into an ``Outcome`` (success data is the raw body)."""
    content_type = headers.get("Content-Type") or headers.get("content-type")
    if 200 <= status < 300:
        return Outcome(
            kind=OutcomeKind.SUCCEEDED, status=status, data=body, content_type=content_type
        )
    message = f"HTTP {status}{_snippet(body)}"
    if status in (429, 503):
        retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
        return Outcome(
            kind=OutcomeKind.THROTTLED,
            status=status,
            error_kind=ErrorKind.THROTTLED,
            message=message,
            retry_after=retry_after,
        )
    if status == 408 or status >= 500:
        return Outcome(
            kind=OutcomeKind.RETRYABLE,
            status=status,
            error_kind=ErrorKind.SERVER_ERROR,
            message=message,
        )
    return Outcome(
        kind=OutcomeKind.PERMANENT,
        status=status,
        error_kind=ErrorKind.CLIENT_ERROR,
        message=message,
    )


def classify_exception(exc: BaseException, *, timeout: float) -> Outcome:
    """Turn a failed request into an ``Outcome``; unknown errors are retryable."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return Outcome(
            kind=OutcomeKind.RETRYABLE,
            error_kind=ErrorKind.TIMEOUT,
            message=f"no answer within {timeout:g}s",
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        detail = str(exc) or type(exc).__name__
        return Outcome(
            kind=OutcomeKind.RETRYABLE,
            error_kind=ErrorKind.CONNECTION_ERROR,
            message=f"{type(exc).__name__}: {detail}",
        )
    return Outcome(
        kind=OutcomeKind.RETRYABLE,
        error_kind=ErrorKind.CONNECTION_ERROR,
        message=f"{type(exc).__name__}: {exc}",
    )
