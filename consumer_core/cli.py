"""``bridge``: run, validate, and talk to a running bridge (SPEC section 2).

Logging is configured here and only here: ``--log-format json`` (one JSON object per
line, the default when stderr is not a terminal) or ``text``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = ["main"]

EXIT_CONFIG = 2
_STANDARD_RECORD_KEYS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_RECORD_KEYS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def _setup_logging(fmt: str | None, level: str) -> None:
    fmt = fmt or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Client libraries log every connection step at INFO; their warnings still show.
    for noisy in ("pika", "aiobotocore", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridge", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--log-format", choices=("json", "text"), default=os.environ.get("BRIDGE_LOG_FORMAT")
    )
    parser.add_argument("--log-level", default=os.environ.get("BRIDGE_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run every pipeline in a file (no file: the quickstart)")
    run.add_argument("config", nargs="?", help="pipeline file; omitted: the quickstart")

    validate = sub.add_parser("validate", help="check a pipeline file; exit 2 if invalid")
    validate.add_argument("config")

    def client(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("BRIDGE_URL", "http://127.0.0.1:8081"))
        p.add_argument("--token", default=os.environ.get("BRIDGE_TOKEN", ""))
        p.add_argument("--json", action="store_true", help="print the raw JSON answer")

    tasks = sub.add_parser("tasks", help="list, show or cancel tasks of a running bridge")
    tasks_sub = tasks.add_subparsers(dest="action", required=True)
    tl = tasks_sub.add_parser("list")
    client(tl)
    for flag in ("pipeline", "state", "tenant", "after"):
        tl.add_argument(f"--{flag}")
    tl.add_argument("--limit", type=int, default=50)
    for action in ("show", "cancel"):
        p = tasks_sub.add_parser(action)
        client(p)
        p.add_argument("id")

    pipelines = sub.add_parser("pipelines", help="list, pause or resume pipelines")
    pipelines_sub = pipelines.add_subparsers(dest="action", required=True)
    client(pipelines_sub.add_parser("list"))
    for action in ("pause", "resume"):
        p = pipelines_sub.add_parser(action)
        client(p)
        p.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "run":
        _setup_logging(args.log_format, args.log_level)
        return _run(args.config)
    from consumer_core.admin.client import run_client

    return run_client(args)


def _validate(path: str) -> int:
    from consumer_core.config import load_config
    from consumer_core.errors import ConfigError

    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{path}: valid ({len(config.pipelines)} pipeline(s))")
    return 0


def _run(path: str | None) -> int:
    from consumer_core.config import load_config
    from consumer_core.errors import ConfigError

    try:
        if path is None:
            with as_file(files("configs") / "quickstart.yaml") as quickstart:
                config = load_config(quickstart)
        else:
            config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    try:
        import uvloop

        runner_factory = uvloop.new_event_loop
    except ImportError:
        runner_factory = None
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        return runner.run(_serve(config, quickstart=path is None))


async def _serve(config: Any, *, quickstart: bool) -> int:
    from consumer_core.errors import ConfigError
    from consumer_core.runner import Runner

    demo = None
    if quickstart:
        from consumer_core.demo import serve

        target = urlsplit(config.pipelines[0].target.url)
        demo = await serve(target.hostname or "127.0.0.1", target.port or 9000)
    try:
        runner = Runner(config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if quickstart:
        _print_quickstart(config)
    from consumer_core import gctune

    gctune.tune()
    try:
        await runner.run()
    finally:
        if demo is not None:
            await demo.cleanup()
    return 0


def _print_quickstart(config: Any) -> None:
    server = config.server
    url = f"http://{server.host}:{server.port}/v1/pipelines/orders/events"
    sink = config.pipelines[0].on_success[0].options["path"]
    print(
        "Bridge quickstart: the example function runs on "
        f"{config.pipelines[0].target.url}\n"
        f"  send an event:  curl -X POST {url} -H 'Content-Type: application/json' "
        """-d '{"order": 1, "items": [{"price": 9.5, "qty": 2}]}'\n"""
        f"  results land in {Path(sink).resolve()}\n"
        f"  task status:    curl http://{server.host}:{server.port}/v1/tasks\n"
        "  stop with Ctrl-C.",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
