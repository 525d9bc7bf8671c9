"""``bridge tasks ...`` and ``bridge pipelines ...``: a small client of the admin API."""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

__all__ = ["run_client"]


class ApiError(Exception):
    pass


def _call(args: argparse.Namespace, method: str, path: str) -> Any:
    request = urllib.request.Request(args.url.rstrip("/") + path, method=method)
    if args.token:
        request.add_header("Authorization", f"Bearer {args.token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise ApiError(f"{method} {path}: HTTP {exc.code}: {message}") from exc
    except OSError as exc:
        raise ApiError(f"cannot reach the bridge at {args.url}: {exc}") from exc


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _tasks(args: argparse.Namespace) -> tuple[Any, str]:
    if args.action == "list":
        params = {
            k: v
            for k in ("pipeline", "state", "tenant", "after")
            if (v := getattr(args, k)) is not None
        }
        params["limit"] = str(args.limit)
        doc = _call(args, "GET", f"/v1/tasks?{urlencode(params)}")
        rows = [
            (t["id"], t["state"], t["tenant"], t["attempts"], _when(t["timestamps"]["received"]))
            for t in doc["tasks"]
        ]
        text = _table(rows, ("ID", "STATE", "TENANT", "ATTEMPTS", "RECEIVED"))
        if doc.get("next"):
            text += f"\n(more: --after {doc['next']})"
        return doc, text
    path = f"/v1/tasks/{quote(args.id, safe=':')}"
    if args.action == "cancel":
        doc = _call(args, "POST", path + "/cancel")
        return doc, f"cancelled {doc['id']} (was {doc['was']})"
    doc = _call(args, "GET", path)
    lines = [f"{k}: {doc[k]}" for k in ("id", "state", "tenant", "key", "attempts")]
    for stage, ts in doc["timestamps"].items():
        lines.append(f"{stage:>10}: {_when(ts)}")
    lines.append("durations: " + ", ".join(f"{k}={v}" for k, v in doc["durations"].items()))
    if doc.get("error"):
        lines.append(f"error: {doc['error']['kind']}: {doc['error']['message']}")
    for attempt in doc.get("history", []):
        lines.append(
            f"  attempt {attempt['number']}: {attempt['outcome']} "
            f"status={attempt['status']} {attempt['error'] or ''}".rstrip()
        )
    return doc, "\n".join(lines)


def _pipelines(args: argparse.Namespace) -> tuple[Any, str]:
    if args.action in ("pause", "resume"):
        doc = _call(args, "POST", f"/v1/pipelines/{quote(args.name)}/{args.action}")
        return doc, f"{doc['name']}: {doc['state']}"
    doc = _call(args, "GET", "/v1/pipelines")
    rows = [
        (
            p["name"],
            p["state"],
            p["source"],
            ",".join(f"{lane['name']}={lane['window']}" for lane in p["lanes"]),
            p["inflight"],
            sum(p["lag"].values()),
        )
        for p in doc["pipelines"]
    ]
    return doc, _table(rows, ("NAME", "STATE", "SOURCE", "WINDOWS", "INFLIGHT", "LAG"))


def run_client(args: argparse.Namespace) -> int:
    try:
        doc, text = _tasks(args) if args.command == "tasks" else _pipelines(args)
    except ApiError as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if args.json else text)
    return 0
