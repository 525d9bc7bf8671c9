"""The fault table: one ``Row`` per scenario, rendered as Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MEMORY_MARGIN_MB = 50.0
"""How far above its baseline the bridge's RSS may end after a scenario drained."""


@dataclass
class Row:
    """One line of the fault table."""

    scenario: str
    broker: str
    messages: int
    lost: int
    duplicates: int
    bound: int
    resume_s: float | None
    recovery_s: float | None
    rss_base_mb: float
    rss_end_mb: float
    failures: int = 0
    note: str = ""

    HEADER = (
        "scenario",
        "broker",
        "messages",
        "lost",
        "duplicates",
        "dup bound",
        "failed (reason)",
        "resume s",
        "recovery s",
        "RSS base→end MB",
    )

    def cells(self) -> tuple[str, ...]:
        def seconds(value: float | None) -> str:
            return "-" if value is None else f"{value:.1f}"

        return (
            self.scenario,
            self.broker,
            str(self.messages),
            str(self.lost),
            str(self.duplicates),
            str(self.bound),
            str(self.failures),
            seconds(self.resume_s),
            seconds(self.recovery_s),
            f"{self.rss_base_mb:.0f}→{self.rss_end_mb:.0f}",
        )


def render(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (also readable in a terminal)."""
    lines = [Row.HEADER, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(Row.HEADER))]

    def fmt(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    out = [fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt(line) for line in lines[1:]]
    notes = [f"- {row.scenario}: {row.note}" for row in rows if row.note]
    return "\n".join(out + (["", *notes] if notes else []))
