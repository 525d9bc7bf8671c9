"""The suite's table: one ``Row`` per system, ratios to its ceiling and to the best peer,
and the targets of issue 9 beside what was measured."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, fields, replace


@dataclass(kw_only=True)
class Row:
    """One line of the table; ``None`` prints as ``-``."""

    name: str
    kind: str  # ceiling | peer | bridge | state | memory | failed
    per_s: float | None = None
    cpu_10k: float | None = None
    fn_cpu_10k: float | None = None
    rss_mb: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_rate: float | None = None
    ceiling: str = ""  # the name of the ceiling row that bounds this one
    note: str = ""
    soak: tuple[int, float, bool] | None = None
    """The memory row's backlog (records), length (s) and whether its RSS stayed flat."""


def median_row(runs: list[Row]) -> Row:
    """One row from repeated runs: each figure's median (RSS: the highest), the notes of
    the run with the median rate, and the spread of the rates."""
    good = [r for r in runs if r.kind != "failed"] or runs
    if len(good) == 1:
        return good[0]
    by_rate = sorted(good, key=lambda r: r.per_s or 0.0)
    merged = by_rate[len(by_rate) // 2]
    for f in fields(Row):
        values = [getattr(r, f.name) for r in good if isinstance(getattr(r, f.name), float)]
        if values and f.name != "rss_mb":
            merged = replace(merged, **{f.name: statistics.median(values)})
    peaks = [r.rss_mb for r in good if r.rss_mb is not None]
    rates = [r.per_s for r in good if r.per_s]
    spread = f"{len(good)} runs: {min(rates):,.0f}-{max(rates):,.0f}/s" if rates else ""
    return replace(
        merged,
        rss_mb=max(peaks) if peaks else None,
        note="; ".join(x for x in (merged.note, spread) if x),
    )


KIND_ORDER = ("ceiling", "peer", "bridge", "state", "memory", "failed")
COLUMNS = (
    "system",
    "msgs/s",
    "CPU s/10k",
    "fn CPU s/10k",
    "peak RSS MB",
    "p50 ms",
    "p99 ms",
    "latency at msgs/s",
    "x ceiling",
    "x best peer",
    "notes",
)


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def cells(row: Row, by_name: dict[str, Row], best_peer: Row | None) -> list[str]:
    ceiling = by_name.get(row.ceiling)
    vs_ceiling = vs_peer = "-"
    if row.per_s and ceiling and ceiling.per_s:
        short = "raw" if ceiling.name == "raw consume" else "wrk"
        vs_ceiling = f"{row.per_s / ceiling.per_s:.2f} {short}"
    if row.per_s and best_peer and best_peer.per_s and row.kind != "ceiling":
        vs_peer = f"{row.per_s / best_peer.per_s:.2f}"
    return [
        row.name,
        fmt(row.per_s),
        fmt(row.cpu_10k, 2),
        fmt(row.fn_cpu_10k, 2),
        fmt(row.rss_mb),
        fmt(row.p50_ms, 1),
        fmt(row.p99_ms, 1),
        fmt(row.latency_rate),
        vs_ceiling,
        vs_peer,
        row.note,
    ]


def table(rows: list[Row]) -> str:
    ordered = sorted(rows, key=lambda r: KIND_ORDER.index(r.kind))
    by_name = {r.name: r for r in rows}
    peers = [r for r in rows if r.kind == "peer" and r.per_s]
    best = max(peers, key=lambda r: r.per_s or 0.0) if peers else None
    lines = [list(COLUMNS), *(cells(r, by_name, best) for r in ordered)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    numeric = range(1, len(COLUMNS) - 1)

    def render(line: list[str]) -> str:
        padded = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w - 1) + (":" if i in numeric else "-") for i, w in enumerate(widths)]
    out = [render(lines[0]), render(rule), *(render(line) for line in lines[1:])]
    if best:
        out.append(f"\nBest peer: {best.name} ({best.per_s:,.0f} msgs/s).")
    return "\n".join(out)


def ratio(a: Row | None, b: Row | None, attr: str = "per_s") -> float | None:
    x, y = (getattr(a, attr) if a else None), (getattr(b, attr) if b else None)
    return x / y if x and y else None


def _backlog_verdict(row: Row | None) -> bool | None:
    """Met only by the soak itself (5M, 10 minutes) under 250 MB and flat; any row over
    250 MB fails; a shorter or smaller run measures nothing conclusive."""
    if row is None or row.rss_mb is None or row.soak is None:
        return None
    records, seconds, flat = row.soak
    if row.rss_mb >= 250:
        return False
    if seconds < 600:
        return None  # too short to judge flatness
    if not flat:
        return False
    return True if records >= 5_000_000 else None


def targets(rows: list[Row]) -> str:
    """The issue's targets next to what this run measured."""
    by = {r.name: r for r in rows}
    binary, batch = by.get("bridge Kafka binary"), by.get("bridge Kafka batch")
    memory = by.get("bridge Kafka binary, state in memory")
    # The memory row with the deepest, longest soak that measured something (the Kafka and
    # RabbitMQ rows can both run; of equals, the first).
    backlog = max(
        (r for r in rows if r.kind == "memory"),
        key=lambda r: (r.soak or (0, 0.0, False))[:2],
        default=None,
    )

    def line(what: str, value: float | None, goal: str, ok: bool | None, unit: str = "") -> str:
        shown = "-" if value is None else f"{value:.2f}{unit}"
        verdict = (
            "" if goal == "-" else "not measured" if ok is None else "met" if ok else "NOT met"
        )
        return f"- {what}: {shown}" + ("" if goal == "-" else f" (target {goal}): {verdict}")

    vs_hand = ratio(binary, by.get("hand-written loop"))
    vs_fast = ratio(binary, by.get("FastStream"))
    vs_raw = ratio(batch, by.get("raw consume"))
    p50 = binary.p50_ms if binary else None
    p99 = binary.p99_ms if binary else None
    raw = by.get("raw consume")
    floor = f" (end to end; broker floor p50 {raw.p50_ms:.1f} ms)" if raw and raw.p50_ms else ""
    rss = backlog.rss_mb if backlog else None
    cpu_vs_hand = ratio(binary, by.get("hand-written loop"), "cpu_10k")
    out = [
        line(
            "binary / hand-written loop",
            vs_hand,
            ">= 1.5",
            None if vs_hand is None else vs_hand >= 1.5,
        ),
        line(
            "binary CPU per message / hand-written loop's (context, no target)",
            cpu_vs_hand,
            "-",
            None,
        ),
        line("binary / FastStream", vs_fast, ">= 5", None if vs_fast is None else vs_fast >= 5),
        line("batch / raw consume", vs_raw, ">= 0.5", None if vs_raw is None else vs_raw >= 0.5),
        line(
            f"binary p50 at half max{floor}", p50, "< 2 ms", None if p50 is None else p50 < 2, " ms"
        ),
        line(
            f"binary p99 at half max{floor}",
            p99,
            "< 10 ms",
            None if p99 is None else p99 < 10,
            " ms",
        ),
        line(
            f"{backlog.name if backlog else 'backlog'} peak RSS",
            rss,
            "< 250 MB with 5M, flat over 10 min (--soak); flatness: see its notes",
            _backlog_verdict(backlog),
            " MB",
        ),
    ]
    speed, cpu = ratio(binary, memory), ratio(binary, memory, "cpu_10k")
    cost = None if speed is None else 1 - speed
    out.append(
        line(
            "task state: throughput lost to durable task state (SQLite vs memory://)",
            None if cost is None else cost * 100,
            "<= 15%",
            None if cost is None else cost <= 0.15,
            "%",
        )
    )
    if cpu:
        out.append(f"- task state: CPU per message with SQLite / with memory://: {cpu:.2f}")
    return "\n".join(out)
