"""pika's exceptions, translated at the boundary into the bridge's error tree.

=================================================  ====================  ==========================
pika raises / reports                               we raise              the core then
=================================================  ====================  ==========================
access refused (403), no such queue/exchange        ``FatalClientError``  stops the pipeline,
(404), precondition failed (406: the queue exists                         ``/readyz`` turns red
with other arguments), bad credentials, vhost
not allowed (530)
the connection or channel went away for any         ``NotConnected``      calls ``connect`` again,
other reason (broker restart, ``close_all_                                with backoff
connections`` = 320, heartbeat timeout, socket
error, consumer cancelled by the broker)
=================================================  ====================  ==========================

Retryability is decided here, from reply codes and exception classes, never from
message text.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import pika.exceptions as pe

from consumer_core.errors import ConnectorError, FatalClientError, NotConnected

__all__ = ["FATAL_REPLY_CODES", "map_pika_errors", "translate"]

FATAL_REPLY_CODES: Final[frozenset[int]] = frozenset({403, 404, 406, 530})
"""AMQP reply codes that no reconnect can fix: ACCESS_REFUSED, NOT_FOUND,
PRECONDITION_FAILED, NOT_ALLOWED."""

_FATAL_CLASSES: Final = (
    pe.ProbableAccessDeniedError,
    pe.ProbableAuthenticationError,
    pe.AuthenticationError,
)


def translate(exc: BaseException, doing: str) -> ConnectorError:
    """The bridge error for a pika exception (or a socket error) met while ``doing``."""
    if isinstance(exc, ConnectorError):
        return exc
    message = f"{doing}: {type(exc).__name__}: {exc}"
    if isinstance(exc, _FATAL_CLASSES):
        return FatalClientError(message)
    code = getattr(exc, "reply_code", None)
    if isinstance(exc, pe.ChannelClosedByBroker | pe.ConnectionClosedByBroker) and (
        code in FATAL_REPLY_CODES
    ):
        return FatalClientError(message)
    return NotConnected(message)


@contextmanager
def map_pika_errors(doing: str) -> Iterator[None]:
    """Re-raise pika and socket errors as ``NotConnected`` or ``FatalClientError``.

    ``doing`` is terse gerund context for the message ("declaring queue orders").
    ``CancelledError`` and errors already in the bridge's tree pass through untouched.
    """
    try:
        yield
    except ConnectorError:
        raise
    except (pe.AMQPError, OSError) as exc:
        raise translate(exc, doing) from exc
