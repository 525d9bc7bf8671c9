"""The live status page (``GET /``) and the figures behind it (``GET /v1/stats``).

The page is one self-contained HTML document: inline CSS and JavaScript, no external
asset, no build step. Every second its script reads ``GET /v1/pipelines`` (state,
lanes, in-flight, lag, isolated and paused tenants) and ``GET /v1/stats`` (counters and
a short history sampled here), computes the throughput from successive counters, and
draws each lane's AIMD window as an inline SVG chart. Every fifth poll also asks for
the most recent failures.

The token: ``GET /`` is public and the document holds no data at all, so it shows
nothing secret. Its script takes the token from the URL fragment
(``http://host:8081/#token=...``, never sent to any server nor written in access logs),
keeps it in the tab's ``sessionStorage``, removes it from the address bar and sends it
as ``Authorization: Bearer`` on every ``/v1`` call. ``/v1/stats`` is under ``/v1``, so
the admin server's token middleware guards it like every other ``/v1`` route.

``StatusSampler`` reads every pipeline once a second into a bounded history (five
minutes), so a page opened now already shows the last minutes. It only reads
``Pipeline.status()`` and the Prometheus counters of ``Metrics``; it holds no state that
matters across restarts.

This module is longer than most because the page's HTML, CSS and JavaScript live in
it as constants: one file to read, one document to serve, no package data to ship.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web
from prometheus_client import Counter

from consumer_core.admin.metrics import LoopCounter
from consumer_core.errors import StoreError
from consumer_core.store.base import TaskQuery
from consumer_core.tasks import TaskRecord, TaskState

if TYPE_CHECKING:
    from consumer_core.runner import Runner

__all__ = ["HISTORY_SECONDS", "SAMPLE_INTERVAL", "Sample", "StatusSampler", "add_routes"]

log = logging.getLogger(__name__)

HISTORY_SECONDS: Final = 300.0
"""How far back the page's charts reach."""
SAMPLE_INTERVAL: Final = 1.0
"""Seconds between two samples of every pipeline."""
_FAILURE_WINDOWS: Final = (60.0, 900.0, 86_400.0)
"""Receive-time windows searched, narrowest first, until enough failures are found."""
_FAILURE_SCAN: Final = 200
"""Most failed tasks read from the store per window when looking for the latest."""
_MAX_FAILURES: Final = 50
_OUTCOMES: Final = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """One pipeline at one moment: counters since the process started, and its lanes."""

    at: float
    """Unix seconds (wall clock, so the browser can show it)."""
    received: float
    finished: float
    """Tasks finished with any outcome."""
    inflight: int
    lanes: Mapping[str, tuple[int, int]]
    """Lane name -> (the AIMD window of that lane, its invocations in flight)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "at": round(self.at, 3),
            "received": self.received,
            "finished": self.finished,
            "inflight": self.inflight,
            "lanes": {name: {"window": w, "inflight": n} for name, (w, n) in self.lanes.items()},
        }


def _totals(counter: Counter | LoopCounter, *labels: str) -> dict[tuple[str, ...], float]:
    """Every child's value of a labelled counter, keyed by its label values."""
    values: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[tuple(sample.labels[name] for name in labels)] = sample.value
    return values


class StatusSampler:
    """Keeps the last ``HISTORY_SECONDS`` of every pipeline, one sample a second.

    ``sample()`` is synchronous and cheap (``Pipeline.status()`` reads cached lag);
    ``run()`` calls it until cancelled. ``history`` holds, per pipeline name, samples in
    time order; the oldest drop off as new ones arrive.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        interval: float = SAMPLE_INTERVAL,
        keep: float = HISTORY_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.runner = runner
        self.interval = interval
        self.keep = keep
        self.clock = clock
        self.history: dict[str, deque[Sample]] = {}
        self._size = math.ceil(keep / interval) + 1

    def counters(self) -> dict[str, dict[str, Any]]:
        """Per pipeline: messages received and tasks finished by outcome, since start."""
        metrics = self.runner.resources.metrics
        received = _totals(metrics.messages_received, "pipeline")
        finished = _totals(metrics.tasks_finished, "pipeline", "outcome")
        return {
            name: {
                "received": received.get((name,), 0.0),
                "finished": {o: finished.get((name, o), 0.0) for o in _OUTCOMES},
            }
            for name in self.runner.pipelines
        }

    def sample(self) -> None:
        now = self.clock()
        for name, figures in self.counters().items():
            status = self.runner.pipelines[name].status()
            point = Sample(
                at=now,
                received=figures["received"],
                finished=sum(figures["finished"].values()),
                inflight=int(status["inflight"]),
                lanes={
                    lane["name"]: (int(lane["window"]), int(lane["inflight"]))
                    for lane in status["lanes"]
                },
            )
            history = self.history.get(name)
            if history is None:
                history = self.history[name] = deque(maxlen=self._size)
            history.append(point)

    async def run(self) -> None:
        failing = False
        while True:
            try:
                self.sample()
                failing = False
            except Exception:  # a bad sample must not end the page's history
                if not failing:  # once per streak, not once a second
                    log.exception("status sampler: sampling failed")
                failing = True
            await asyncio.sleep(self.interval)

    async def recent_failures(self, pipeline: str, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` failed tasks of a pipeline, newest first.

        The store lists tasks in id order, not time order, so this reads the failed
        tasks received in a short window and widens it (1 min, 15 min, 24 h) until it
        found enough, then sorts by finish time. Cost: at most three bounded queries.
        """
        store = self.runner.resources.store
        now = self.clock()
        found: list[TaskRecord] = []
        for window in _FAILURE_WINDOWS:
            query = TaskQuery(
                pipeline=pipeline,
                state=TaskState.FAILED,
                received_from=now - window,
                limit=_FAILURE_SCAN,
            )
            found = await store.query(query)
            if len(found) >= limit:
                break
        found.sort(key=lambda r: r.finished or r.received or 0.0, reverse=True)
        return [_failure_json(r) for r in found[:limit]]

    async def stats(self, *, since: float, failures: int) -> dict[str, Any]:
        counters = self.counters()
        pipelines = []
        for name, figures in counters.items():
            history = self.history.get(name, ())
            doc: dict[str, Any] = {
                "name": name,
                **figures,
                "history": [s.to_json() for s in history if s.at > since],
            }
            if failures:
                try:
                    doc["recent_failures"] = await self.recent_failures(name, failures)
                except StoreError:  # the figures above still help while the store is away
                    doc["recent_failures_error"] = "the task store did not answer"
            pipelines.append(doc)
        return {
            "now": round(self.clock(), 3),
            "interval": self.interval,
            "history_seconds": self.keep,
            "pipelines": pipelines,
        }


def _failure_json(record: TaskRecord) -> dict[str, Any]:
    error = record.error or {}
    return {
        "id": record.id,
        "tenant": record.tenant,
        "attempts": record.attempts,
        "finished": record.finished,
        "error": {
            "kind": error.get("kind", "unknown"),
            "message": error.get("message") or "",
            "status": error.get("status"),
        },
    }


# ----------------------------------------------------------------- routes


def add_routes(app: web.Application, runner: Runner) -> None:
    """Serve the page at ``GET /`` and its figures at ``GET /v1/stats``.

    Also starts the sampler with the application and stops it at cleanup. Call once,
    before the application starts.
    """
    sampler = StatusSampler(runner)

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            body=_DOCUMENT, content_type="text/html", charset="utf-8", headers=_PAGE_HEADERS
        )

    async def stats(request: web.Request) -> web.Response:
        try:
            since = float(request.query.get("since", "0"))
            failures = max(0, min(_MAX_FAILURES, int(request.query.get("failures", "0"))))
        except ValueError as exc:
            return web.json_response({"error": f"bad query: {exc}"}, status=400)
        body = await sampler.stats(since=since, failures=failures)
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    async def sampling(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(sampler.run(), name="status-sampler")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    app.add_routes([web.get("/", page), web.get("/v1/stats", stats)])
    app.cleanup_ctx.append(sampling)


# ----------------------------------------------------------------- the document

_CSS: Final = """
:root{--fg:#1d2330;--mute:#667085;--line:#e4e7ec;--bg:#f6f7f9;--card:#fff;--blue:#2563eb;
--blue2:#bfd3fb;--red:#c2410c;--green:#15803d;--amber:#b45309}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
header{display:flex;align-items:baseline;gap:16px;padding:14px 24px;background:#111827;color:#fff}
header h1{margin:0;font-size:18px;font-weight:600}
header .meta{color:#cbd5e1;font-size:13px}
#banner{display:none;margin:16px 24px 0;padding:10px 14px;border-radius:6px;
background:#fff4ed;border:1px solid #fdba74;color:#7c2d12}
#banner.on{display:block}
main{padding:8px 24px 24px}
.pipeline{background:var(--card);border:1px solid var(--line);border-radius:8px;
margin-top:16px;padding:16px 18px}
.title{display:flex;align-items:center;gap:10px;flex-wrap:wrap}
.title h2{margin:0;font-size:17px}
.badge{font-size:12px;padding:2px 8px;border-radius:10px;background:#e0f2e9;color:var(--green)}
.badge.paused,.badge.stopping{background:#fef3c7;color:var(--amber)}
.badge.failed{background:#fee2e2;color:var(--red)}
.sub{color:var(--mute);font-size:12px}
.error{color:var(--red);margin-top:6px}
.tiles{display:grid;grid-template-columns:repeat(auto-fill,minmax(120px,1fr));gap:10px;
margin:14px 0}
.tile.wide{grid-column:span 3}
.tile.two{grid-column:span 2}
.bad{color:var(--red)}
.tile{border:1px solid var(--line);border-radius:6px;padding:8px 12px}
.tile .label{color:var(--mute);font-size:12px}
.tile .value{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.tile .unit{font-size:12px;color:var(--mute);font-weight:400;margin-left:3px}
h3{font-size:13px;margin:14px 0 6px;color:var(--mute);text-transform:uppercase;letter-spacing:.04em}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th{text-align:left;font-weight:500;color:var(--mute);font-size:12px;
border-bottom:1px solid var(--line)}
td,th{padding:5px 8px;vertical-align:middle}
td{border-bottom:1px solid var(--line)}
td.num,th.num{text-align:right}
td.msg{max-width:520px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.kind{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;color:var(--red)}
.chips span{display:inline-block;margin:2px 6px 2px 0;padding:1px 8px;border-radius:10px;
background:#eef2ff;font-size:12px}
.none{color:var(--mute)}
svg.chart{display:block;max-width:100%;height:auto}
svg .line{fill:none;stroke:var(--blue);stroke-width:1.5}
svg .area{fill:var(--blue2);stroke:none;opacity:.7}
svg .rate{fill:none;stroke:var(--green);stroke-width:1.5}
svg .axis{stroke:var(--line)}
svg text{font-size:9px;fill:var(--mute)}
footer{color:var(--mute);font-size:12px;padding:0 24px 24px}
"""

_JS: Final = r"""
'use strict';
const HISTORY = 300;
const TOKEN_KEY = 'bridge.token';
const SVG = 'http://www.w3.org/2000/svg';
let token = '';
try { token = sessionStorage.getItem(TOKEN_KEY) || ''; } catch (e) { token = ''; }
const given = /(?:^#|&)token=([^&]*)/.exec(location.hash);
if (given) {
  token = decodeURIComponent(given[1]);
  try { sessionStorage.setItem(TOKEN_KEY, token); } catch (e) { /* storage is off */ }
  history.replaceState(null, '', location.pathname + location.search);
}
const samples = new Map();
const failures = new Map();
let since = 0;
let polls = 0;

class AuthError extends Error {}

async function api(path) {
  const headers = token ? {Authorization: 'Bearer ' + token} : {};
  const response = await fetch(path, {headers, cache: 'no-store'});
  if (response.status === 401) throw new AuthError('401');
  if (!response.ok) throw new Error(path + ': HTTP ' + response.status);
  return response.json();
}

function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') el.className = v;
    else if (k === 'title') el.title = v;
    else el.dataset[k] = v;
  }
  for (const kid of kids.flat()) {
    if (kid !== null && kid !== undefined) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

function svg(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function fmt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '\u2014';
  if (Math.abs(n) >= 10 || Number.isInteger(n)) return Math.round(n).toLocaleString('en-US');
  return n.toFixed(1);
}

function clock(t) { return t ? new Date(t * 1000).toLocaleTimeString('en-GB') : '\u2014'; }

function span(list, now) {
  const seen = list.length ? now - list[0].at : 0;
  return Math.min(HISTORY, Math.max(60, seen));
}

function ago(seconds) {
  if (seconds >= 120) return '-' + Math.round(seconds / 60) + ' min';
  return '-' + Math.round(seconds) + ' s';
}

function chart(series, now, label, W, reach) {
  const H = 54, P = 3;
  const el = svg('svg', {viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: 'chart',
                         role: 'img'});
  el.append(svg('title', {}, label));
  const top = Math.max(1, ...series.flatMap(s => s.points.map(p => p[1]))) * 1.15;
  const x = t => (P + (W - 2 * P) * (1 - (now - t) / reach)).toFixed(1);
  const y = v => (H - P - (H - 2 * P) * v / top).toFixed(1);
  el.append(svg('line', {x1: P, x2: W - P, y1: H - P, y2: H - P, class: 'axis'}));
  for (const s of series) {
    if (s.points.length === 0) continue;
    const pts = s.points.map(p => x(p[0]) + ',' + y(p[1]));
    if (s.area) {
      const first = s.points[0][0], last = s.points[s.points.length - 1][0];
      pts.unshift(x(first) + ',' + y(0));
      pts.push(x(last) + ',' + y(0));
      el.append(svg('polygon', {points: pts.join(' '), class: s.cls}));
    } else {
      el.append(svg('polyline', {points: pts.join(' '), class: s.cls}));
    }
  }
  el.append(svg('text', {x: W - P, y: 10, 'text-anchor': 'end'}, fmt(top / 1.15)));
  el.append(svg('text', {x: P, y: H - 6}, ago(reach)));
  el.append(svg('text', {x: W - P, y: H - 6, 'text-anchor': 'end'}, 'now'));
  return el;
}

function rates(list) {
  const out = [];
  for (let i = 1; i < list.length; i++) {
    const dt = list[i].at - list[i - 1].at;
    if (dt > 0) out.push([list[i].at, Math.max(0, list[i].finished - list[i - 1].finished) / dt]);
  }
  return out;
}

function throughput(list) {
  if (list.length < 2) return null;
  const last = list[list.length - 1], first = list[Math.max(0, list.length - 6)];
  const dt = last.at - first.at;
  return dt > 0 ? Math.max(0, last.finished - first.finished) / dt : null;
}

function tile(label, value, unit, field, title) {
  return h('div', {class: 'tile', title: title || ''}, h('div', {class: 'label'}, label),
           h('div', {class: 'value'}, h('span', {field}, value),
             unit ? h('span', {class: 'unit'}, unit) : null));
}

function chips(list, field) {
  if (!list.length) return h('div', {class: 'none', field}, 'none');
  return h('div', {class: 'chips', field}, list.map(t => h('span', {}, t)));
}

function lanesTable(p, list, now) {
  const reach = span(list, now);
  const rows = p.lanes.map(lane => {
    const seen = list.filter(s => lane.name in s.lanes && s.at >= now - reach);
    const series = [
      {cls: 'area', area: true, points: seen.map(s => [s.at, s.lanes[lane.name].inflight])},
      {cls: 'line', points: seen.map(s => [s.at, s.lanes[lane.name].window])},
    ];
    return h('tr', {lane: lane.name},
      h('td', {}, lane.tenant === null ? 'shared' : 'tenant ' + lane.tenant),
      h('td', {class: 'num'}, h('span', {field: 'window', lane: lane.name}, lane.window)),
      h('td', {class: 'num sub'}, lane.min + '\u2013' + lane.max),
      h('td', {}, chart(series, now, 'AIMD window (line) and in flight (area) of lane ' +
                        lane.name, 480, reach)),
      h('td', {class: 'num'}, h('span', {field: 'lane-inflight', lane: lane.name}, lane.inflight)),
      h('td', {class: 'num'}, lane.queued),
      h('td', {class: 'num'}, lane.parked));
  });
  return h('table', {field: 'lanes'},
    h('tr', {}, h('th', {}, 'lane'), h('th', {class: 'num'}, 'window'),
      h('th', {class: 'num'}, 'bounds'), h('th', {}, 'window (line) and in flight (area)'),
      h('th', {class: 'num'}, 'in flight'), h('th', {class: 'num'}, 'queued'),
      h('th', {class: 'num'}, 'parked')),
    rows);
}

function failuresTable(list) {
  if (list && list.error) return h('div', {class: 'error', field: 'failures'}, list.error);
  if (!list || !list.length) return h('div', {class: 'none', field: 'failures'}, 'none');
  return h('table', {field: 'failures'},
    h('tr', {}, h('th', {}, 'finished'), h('th', {}, 'task'), h('th', {}, 'tenant'),
      h('th', {}, 'error'), h('th', {class: 'num'}, 'status'), h('th', {class: 'num'}, 'attempts'),
      h('th', {}, 'message')),
    list.map(f => h('tr', {task: f.id},
      h('td', {}, clock(f.finished)), h('td', {}, f.id), h('td', {}, f.tenant),
      h('td', {class: 'kind', field: 'error-kind'}, f.error.kind),
      h('td', {class: 'num'}, f.error.status === null ? '\u2014' : f.error.status),
      h('td', {class: 'num'}, f.attempts),
      h('td', {class: 'msg', title: f.error.message, field: 'error-message'}, f.error.message))));
}

function card(p, stat, now) {
  const list = samples.get(p.name) || [];
  const lag = Object.entries(p.lag || {});
  const lagTotal = lag.length ? lag.reduce((a, [, v]) => a + v, 0) : null;
  const fin = stat ? stat.finished : {succeeded: null, failed: null, cancelled: null};
  const rate = throughput(list);
  return h('section', {class: 'pipeline', pipeline: p.name},
    h('div', {class: 'title'}, h('h2', {field: 'name'}, p.name),
      h('span', {class: 'badge ' + p.state, field: 'state'}, p.state),
      h('span', {class: 'sub'}, p.source + ' source \u00b7 ordering ' + p.ordering)),
    p.error ? h('div', {class: 'error', field: 'error'}, p.error) : null,
    h('div', {class: 'tiles'},
      h('div', {class: 'tile wide'}, h('div', {class: 'label'}, 'throughput (finished, last 5 s)'),
        h('div', {class: 'value'}, h('span', {field: 'throughput'}, fmt(rate)),
          h('span', {class: 'unit'}, 'msgs/s')),
        chart([{cls: 'rate', points: rates(list)}], now, 'finished tasks per second', 400,
              span(list, now))),
      tile('in flight', p.inflight, '', 'inflight'),
      tile('lag', fmt(lagTotal), 'msgs', 'lag', lag.map(([k, v]) => k + ': ' + v).join('\n')),
      tile('tasks held', p.tasks, '', 'tasks'),
      tile('parked', p.parked, '', 'parked'),
      h('div', {class: 'tile two'}, h('div', {class: 'label'}, 'finished since start'),
        h('div', {class: 'value'},
          h('span', {field: 'succeeded'}, fmt(fin.succeeded)), h('span', {class: 'unit'}, 'ok '),
          h('span', {field: 'failed', class: 'bad'}, fmt(fin.failed)),
          h('span', {class: 'unit'}, 'failed '),
          h('span', {field: 'cancelled'}, fmt(fin.cancelled)),
          h('span', {class: 'unit'}, 'cancelled')))),
    h('h3', {}, 'Lanes (AIMD windows)'), lanesTable(p, list, now),
    h('h3', {}, 'Isolated tenants'), chips(p.isolated_tenants, 'isolated'),
    h('h3', {}, 'Paused tenants'), chips(p.paused_tenants, 'paused'),
    h('h3', {}, 'Recent failures'), failuresTable(failures.get(p.name)));
}

function remember(stats) {
  for (const p of stats.pipelines) {
    const list = samples.get(p.name) || [];
    for (const s of p.history) if (s.at > since) list.push(s);
    while (list.length && list[0].at < stats.now - HISTORY) list.shift();
    samples.set(p.name, list);
    if (p.recent_failures) failures.set(p.name, p.recent_failures);
    if (p.recent_failures_error) failures.set(p.name, {error: p.recent_failures_error});
  }
  for (const list of samples.values()) {
    if (list.length) since = Math.max(since, list[list.length - 1].at);
  }
}

function banner(text) {
  const el = document.getElementById('banner');
  el.textContent = text || '';
  el.className = text ? 'on' : '';
}

async function poll() {
  const failuresToo = polls % 5 === 0;
  polls += 1;
  try {
    const query = '/v1/stats?since=' + since + (failuresToo ? '&failures=10' : '');
    const [pipes, stats] = await Promise.all([api('/v1/pipelines'), api(query)]);
    remember(stats);
    const byName = new Map(stats.pipelines.map(p => [p.name, p]));
    document.getElementById('pipelines').replaceChildren(
      ...pipes.pipelines.map(p => card(p, byName.get(p.name), stats.now)));
    document.getElementById('updated').textContent = 'updated ' + clock(stats.now);
    document.body.dataset.loaded = 'yes';
    banner('');
  } catch (e) {
    if (e instanceof AuthError) {
      banner('This bridge has an admin token: open this page as /#token=<your token>.');
    } else {
      banner('Cannot reach the bridge (' + e.message + '); retrying every second.');
    }
  }
  setTimeout(poll, 1000);
}

poll();
"""


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


_DOCUMENT: Final = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>Bridge status</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>Bridge</h1><span class="meta" id="updated">loading\u2026</span></header>
<div id="banner" role="alert" data-field="banner"></div>
<main id="pipelines"></main>
<footer>Polls /v1/pipelines and /v1/stats every second. Charts cover the last 5 minutes.
With an admin token, open this page as /#token=&lt;token&gt;.</footer>
<script>{_JS}</script>
</body>
</html>
""".encode()

_PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        f"default-src 'none'; script-src 'sha256-{_sha256(_JS)}'; "
        f"style-src 'sha256-{_sha256(_CSS)}'; connect-src 'self'; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
