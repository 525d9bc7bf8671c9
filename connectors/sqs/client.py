"""aiobotocore clients for SQS and EventBridge, shared by the source and the sinks.

Credentials come from the standard AWS chain (environment, shared config and
credentials files, container and instance roles), never from the pipeline file.
``endpoint_url`` points a client at a compatible service (moto, LocalStack) instead of
AWS. Every client uses botocore's ``standard`` retry mode for the few retries the SDK
does by itself; the connectors do their own retrying above that.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Self

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from connectors.sqs.errors import map_aws_errors
from consumer_core.errors import NotConnected

__all__ = ["AwsClient", "AwsEndpoint", "queue_name"]


def queue_name(queue_url: str) -> str:
    """The queue's name: the last segment of its URL (``.../123456789012/orders.fifo``)."""
    return queue_url.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True, slots=True, kw_only=True)
class AwsEndpoint:
    """Where an AWS service is reached: the region and, for compatibles, a URL."""

    region: str = "us-east-1"
    endpoint_url: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> Self:
        return cls(
            region=str(options.get("region") or "us-east-1"),
            endpoint_url=options.get("endpoint_url") or None,
        )


class AwsClient:
    """One aiobotocore client for ``service``; ``open`` before use, ``close`` once.

    ``read_timeout`` must be longer than a long poll; ``max_connections`` bounds the
    calls in flight at once (long polls each hold one).
    """

    def __init__(
        self,
        service: str,
        endpoint: AwsEndpoint,
        *,
        read_timeout: float = 60.0,
        connect_timeout: float = 5.0,
        max_connections: int = 10,
    ) -> None:
        self.service = service
        self.endpoint = endpoint
        self._config = AioConfig(
            region_name=endpoint.region,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_connections,
            retries={"mode": "standard", "total_max_attempts": 3},
        )
        self._stack: AsyncExitStack | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return (
            f"AwsClient({self.service!r}, region={self.endpoint.region!r}, "
            f"endpoint_url={self.endpoint.endpoint_url!r})"
        )

    @property
    def api(self) -> Any:
        """The aiobotocore client; raises ``NotConnected`` before ``open``/after ``close``."""
        if self._client is None:
            raise NotConnected(f"{self.service} client is not open")
        return self._client

    @property
    def is_open(self) -> bool:
        return self._client is not None

    async def open(self) -> None:
        """Create the client (idempotent). Credentials are resolved on the first call."""
        if self._client is not None:
            return
        stack = AsyncExitStack()
        with map_aws_errors(f"creating the {self.service} client"):
            self._client = await stack.enter_async_context(
                get_session().create_client(
                    self.service,
                    region_name=self.endpoint.region,
                    endpoint_url=self.endpoint.endpoint_url,
                    config=self._config,
                )
            )
        self._stack = stack

    async def close(self) -> None:
        """Close the client and its connection pool (idempotent)."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
