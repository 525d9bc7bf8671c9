import json

import aiohttp
import pytest

from connectors.function.classify import (
    classify_exception,
    classify_response,
    parse_retry_after,
)
from connectors.function.encoding import batch_outcomes
from consumer_core.events import wrap
from consumer_core.outcome import ErrorKind, OutcomeKind


@pytest.mark.parametrize(
    ("status", "kind", "error"),
    [
        (200, OutcomeKind.SUCCEEDED, None),
        (204, OutcomeKind.SUCCEEDED, None),
        (429, OutcomeKind.THROTTLED, ErrorKind.THROTTLED),
        (503, OutcomeKind.THROTTLED, ErrorKind.THROTTLED),
        (408, OutcomeKind.RETRYABLE, ErrorKind.SERVER_ERROR),
        (500, OutcomeKind.RETRYABLE, ErrorKind.SERVER_ERROR),
        (502, OutcomeKind.RETRYABLE, ErrorKind.SERVER_ERROR),
        (400, OutcomeKind.PERMANENT, ErrorKind.CLIENT_ERROR),
        (404, OutcomeKind.PERMANENT, ErrorKind.CLIENT_ERROR),
        (422, OutcomeKind.PERMANENT, ErrorKind.CLIENT_ERROR),
        (302, OutcomeKind.PERMANENT, ErrorKind.CLIENT_ERROR),
    ],
)
def test_status_table(status, kind, error):
    outcome = classify_response(status, {}, b"nope")
    assert outcome.kind is kind
    assert outcome.error_kind is error
    assert outcome.status == status


def test_failure_message_carries_a_body_snippet():
    outcome = classify_response(500, {}, b"database on fire" + b"x" * 1000)
    assert outcome.message.startswith("HTTP 500: database on fire")
    assert len(outcome.message) < 260


def test_retry_after_seconds_and_http_date():
    assert classify_response(429, {"Retry-After": "3"}, b"").retry_after == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


def test_exceptions_become_retryable_outcomes():
    timeout = classify_exception(TimeoutError(), timeout=2.0)
    assert (timeout.kind, timeout.error_kind) == (OutcomeKind.RETRYABLE, ErrorKind.TIMEOUT)
    reset = classify_exception(aiohttp.ServerDisconnectedError(), timeout=2.0)
    assert reset.error_kind is ErrorKind.CONNECTION_ERROR
    refused = classify_exception(ConnectionRefusedError(111, "refused"), timeout=2.0)
    assert refused.kind is OutcomeKind.RETRYABLE


def _events(*ids):
    return [wrap(b"{}", event_id=i, source="/t", content_type="application/json") for i in ids]


def test_batch_answer_splits_failed_and_results():
    events = _events("a", "b", "c")
    body = json.dumps({"failed": ["b"], "results": {"a": {"ok": 1}}}).encode()
    a, b, c = batch_outcomes(events, 200, {}, body)
    assert a.kind is OutcomeKind.SUCCEEDED
    assert json.loads(a.data) == {"ok": 1}
    assert b.kind is OutcomeKind.RETRYABLE
    assert c.kind is OutcomeKind.SUCCEEDED
    assert c.data is None


@pytest.mark.parametrize("body", [b"", b"ok", b"\xff\xfe not utf-8"])
def test_batch_answer_empty_or_not_json_means_all_succeeded(body):
    outcomes = batch_outcomes(_events("a", "b"), 202, {}, body)
    assert [o.kind for o in outcomes] == [OutcomeKind.SUCCEEDED] * 2
    assert all(o.data is None for o in outcomes)


@pytest.mark.parametrize("body", [b"[1,2]", b'{"failed": "a"}', b'{"results": []}'])
def test_batch_answer_of_the_wrong_shape_is_retried(body):
    outcomes = batch_outcomes(_events("a"), 200, {}, body)
    assert outcomes[0].kind is OutcomeKind.RETRYABLE
    assert outcomes[0].error_kind is ErrorKind.INVALID_RESPONSE
