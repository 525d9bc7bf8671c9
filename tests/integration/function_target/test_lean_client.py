"""The function target's lean HTTP/1.1 client against real servers on loopback."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from connectors.function.http import InvalidResponse, LeanHttpClient
from tests.support.net import free_port


class RawServer:
    """A bare TCP server running ``handler`` per connection; ``close`` ends them all."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.tasks: set[asyncio.Task] = set()
        self.server: asyncio.Server | None = None

    async def _serve(self, reader, writer) -> None:
        self.tasks.add(asyncio.current_task())
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/fn"

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


async def raw_server(handler):
    server = RawServer(handler)
    return server, await server.start()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


async def test_keeps_connections_alive_and_reads_chunked_answers():
    connections = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        response = web.StreamResponse(headers={"X-Seen": str(len(body))})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"hello ")
        await response.write(b"world")
        await response.write_eof()
        return response

    async def count(request, handler):
        return await handler(request)

    app = web.Application()
    app.router.add_post("/fn", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()

    def on_connect(*_: object) -> None:
        nonlocal connections
        connections += 1

    client = LeanHttpClient(f"http://127.0.0.1:{port}/fn", pool_size=4, timeout=5)
    try:
        original = client._connect

        async def counted():
            on_connect()
            return await original()

        client._connect = counted  # type: ignore[method-assign]
        for _ in range(20):
            status, headers, body = await client.post({"Content-Type": "text/plain"}, b"abc")
            assert (status, body, headers["x-seen"]) == (200, b"hello world", "3")
        assert connections == 1, "one keep-alive connection served them all"
        results = await asyncio.gather(*(client.post({}, b"x" * 10) for _ in range(12)))
        assert all(r[0] == 200 for r in results)
        assert connections <= 4, "the pool never grows past pool_size"
    finally:
        await client.close()
        await runner.cleanup()


async def test_a_request_on_a_connection_the_server_closed_is_sent_again():
    served = 0

    async def handle(reader, writer):
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # closes after one answer although it did not say so (finally: writer.close())

    server, url = await raw_server(handle)
    client = LeanHttpClient(url, pool_size=1, timeout=5)
    try:
        for _ in range(3):
            await asyncio.sleep(0.05)  # let the close reach the client, or not
            status, _, body = await client.post({}, b"{}")
            assert (status, body) == (200, b"ok")
        assert served == 3
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize(
    "answer",
    [b"this is not http\r\n\r\n", b"HTTP/1.1 2000 Huh\r\n\r\n", b"\x00\x01\x02garbage"],
)
async def test_garbage_is_an_invalid_response(answer):
    async def handle(reader, writer):
        await read_request(reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.close()

    server, url = await raw_server(handle)
    client = LeanHttpClient(url, pool_size=1, timeout=5)
    try:
        with pytest.raises(InvalidResponse, match="invalid HTTP answer"):
            await client.post({}, b"{}")
    finally:
        await client.close()
        await server.close()


async def test_a_reset_mid_answer_and_a_silent_server_fail_cleanly():
    async def reset(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async def silent(reader, writer):
        await read_request(reader)
        await asyncio.sleep(5)

    server, url = await raw_server(reset)
    client = LeanHttpClient(url, pool_size=1, timeout=5)
    with pytest.raises(ConnectionError):
        await client.post({}, b"{}")
    await client.close()
    await server.close()

    server, url = await raw_server(silent)
    client = LeanHttpClient(url, pool_size=1, timeout=0.3)
    with pytest.raises(TimeoutError):
        await client.post({}, b"{}")
    await client.close()
    await server.close()


async def test_refused_connection_and_header_injection():
    client = LeanHttpClient(f"http://127.0.0.1:{free_port()}/fn", pool_size=1, timeout=2)
    with pytest.raises(ConnectionRefusedError):
        await client.post({}, b"{}")
    with pytest.raises(ValueError, match="line break"):
        await client.post({"X-Evil": "a\r\nInjected: yes"}, b"{}")
