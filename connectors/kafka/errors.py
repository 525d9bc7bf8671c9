"""confluent-kafka errors, translated at the edge into Bridge's taxonomy.

librdkafka says itself whether an error is worth retrying: ``KafkaError.fatal()``
(the client instance is unusable: fenced idempotent producer, bad credentials on some
paths) and ``KafkaError.retriable()``. Those flags decide the class, never the text:

==============================  ==========================================
fatal                           ``FatalClientError``: the pipeline stops
retriable, or a transport error ``NotConnected``: the core reconnects with backoff
anything else                   ``FatalClientError`` (a configuration mistake, an
                                unknown topic: retrying would not help)
==============================  ==========================================
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import KafkaError, KafkaException

from consumer_core.errors import ConnectorError, FatalClientError, NotConnected

__all__ = ["is_fatal", "is_transient", "map_kafka_errors", "translate"]

_TRANSIENT_CODES = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError.REQUEST_TIMED_OUT,
        # local states while the group coordinator is away (a broker restart)
        KafkaError._WAIT_COORD,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._PREV_IN_PROGRESS,
        KafkaError._IN_PROGRESS,
        KafkaError._MAX_POLL_EXCEEDED,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
    }
)


def _error_of(exc: BaseException) -> KafkaError | None:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def is_fatal(error: KafkaError) -> bool:
    """True when the client instance cannot be used any more."""
    return bool(error.fatal())


def is_transient(error: KafkaError) -> bool:
    """True when trying again later may succeed (librdkafka's own verdict, plus the
    connection and group-membership codes it reports without the retriable flag)."""
    return not is_fatal(error) and (bool(error.retriable()) or error.code() in _TRANSIENT_CODES)


def translate(error: KafkaError, doing: str) -> ConnectorError:
    """The Bridge error for ``error``, with ``doing`` (a gerund phrase) as context."""
    message = f"{doing}: {error.str()} ({error.name()})"
    if is_transient(error):
        return NotConnected(message)
    return FatalClientError(message)


@contextmanager
def map_kafka_errors(doing: str) -> Iterator[None]:
    """Translate ``KafkaException`` (and librdkafka's configuration ``ValueError`` /
    ``TypeError``) raised inside the block; chains the original with ``from``."""
    try:
        yield
    except KafkaException as exc:
        error = _error_of(exc)
        if error is None:
            raise FatalClientError(f"{doing}: {exc}") from exc
        raise translate(error, doing) from exc
    except (ValueError, TypeError) as exc:
        raise FatalClientError(f"{doing}: {exc}") from exc
