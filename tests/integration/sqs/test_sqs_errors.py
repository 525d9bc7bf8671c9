"""botocore errors become Bridge's retryable or fatal classes (pure, no server)."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from connectors.sqs.errors import (
    SinkRejected,
    SinkUnavailable,
    Throttled,
    map_aws_errors,
    map_aws_sink_errors,
)
from consumer_core.errors import FatalClientError, NotConnected

pytestmark = pytest.mark.sqs


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "ReceiveMessage",
    )


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (client_error("ThrottlingException", 400), Throttled),
        (client_error("RequestThrottled", 403), Throttled),
        (client_error("AccessDenied", 403), FatalClientError),
        (client_error("AWS.SimpleQueueService.NonExistentQueue", 400), FatalClientError),
        (client_error("InternalError", 500), NotConnected),
        (client_error("SomethingNew", 400), FatalClientError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), NotConnected),
        (NoCredentialsError(), FatalClientError),
        (ConnectionResetError(), NotConnected),
    ],
)
def test_botocore_errors_map_by_code_to_retryable_or_fatal(raised, expected) -> None:
    with pytest.raises(expected) as caught, map_aws_errors("receiving messages"):
        raise raised
    assert type(caught.value) is expected
    assert caught.value.__cause__ is raised
    assert str(caught.value).startswith("receiving messages: ")


def test_sink_errors_say_whether_retrying_can_help() -> None:
    with pytest.raises(SinkUnavailable), map_aws_sink_errors("sending"):
        raise client_error("ThrottlingException", 400)
    with pytest.raises(SinkRejected) as caught, map_aws_sink_errors("sending"):
        raise client_error("AccessDeniedException", 400)
    assert caught.value.retryable is False


def test_cancellation_and_other_errors_pass_unchanged() -> None:
    with pytest.raises(KeyError), map_aws_errors("x"):
        raise KeyError("k")
