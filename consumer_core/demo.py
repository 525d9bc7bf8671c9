"""The quickstart's example function: enriches an order and answers with it.

Run alone with ``python -m consumer_core.demo --port 9000``; ``bridge run`` with no
file starts it in-process. It follows the function contract (SPEC section 4): binary,
structured and batch requests are all understood.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from aiohttp import web

__all__ = ["demo_app", "serve"]


def _enrich(data: Any) -> Any:
    if isinstance(data, dict):
        total = sum(
            float(item.get("price", 0)) * int(item.get("qty", 1))
            for item in data.get("items", [])
            if isinstance(item, dict)
        )
        return {**data, "total": round(total, 2), "status": "accepted"}
    return {"echo": data, "status": "accepted"}


async def handle(request: web.Request) -> web.Response:
    body = await request.read()
    content_type = request.headers.get("Content-Type", "")
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        doc = body.decode("utf-8", "replace")
    if content_type.startswith("application/cloudevents-batch+json") and isinstance(doc, list):
        results = {str(e.get("id")): _enrich(e.get("data")) for e in doc if isinstance(e, dict)}
        return web.json_response({"failed": [], "results": results})
    if content_type.startswith("application/cloudevents+json") and isinstance(doc, dict):
        doc = doc.get("data")
    return web.json_response(_enrich(doc))


def demo_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    return app


async def serve(host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(demo_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def main() -> None:
    parser = argparse.ArgumentParser(description="The quickstart's example function.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    web.run_app(demo_app(), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
