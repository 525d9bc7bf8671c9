"""A minimal echo function for benchmarks: one process, aiohttp, understands batch mode.

python -m bench.function_server --port 9100 [--delay 0.1]

``--delay`` makes every answer wait that many seconds (a slow function, for backlog runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json

from aiohttp import web

DELAY = web.AppKey("delay", float)


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    if delay := request.app[DELAY]:
        await asyncio.sleep(delay)
    if request.headers.get("Content-Type", "").startswith("application/cloudevents-batch+json"):
        ids = [e["id"] for e in json.loads(body)]
        return web.json_response({"failed": [], "results": {i: {"ok": True} for i in ids}})
    return web.Response(body=b'{"ok":true}', content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before answering")
    args = parser.parse_args()
    app = web.Application(client_max_size=64 << 20)
    app[DELAY] = args.delay
    app.router.add_post("/{tail:.*}", handle)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
