"""Print the fault suite's table (``tests/faults``, see docs/faults.md).

    python -m bench.fault_report                 # the table of the newest run
    python -m bench.fault_report PATH            # a given fault_report.md
    python -m bench.fault_report --run [ARGS]    # run the suite (ARGS go to pytest), then print

A run writes ``fault_report.md`` into its pytest temp folder; without a path the newest
one under pytest's temp root (``/tmp/pytest-of-$USER``) is printed.
"""

from __future__ import annotations

import argparse
import getpass
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPORT = "fault_report.md"


def newest_report() -> Path | None:
    base = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    reports = list(base.glob(f"*/{REPORT}"))
    return max(reports, key=lambda p: p.stat().st_mtime) if reports else None


def run_suite(pytest_args: list[str]) -> tuple[int, Path]:
    """Run ``tests/faults`` with a temp folder of our own; return (exit code, report)."""
    basetemp = Path(tempfile.mkdtemp(prefix="fault-suite-"))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests/faults",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={basetemp / 'run'}",
        *pytest_args,
    ]
    code = subprocess.call(command, cwd=ROOT)
    return code, basetemp / "run" / REPORT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("path", nargs="?", type=Path, help="a fault_report.md to print")
    parser.add_argument("--run", action="store_true", help="run tests/faults first")
    args, pytest_args = parser.parse_known_args(argv)
    code = 0
    path: Path | None
    if args.run:
        code, path = run_suite(pytest_args)
    else:
        path = args.path or newest_report()
    if path is None or not path.exists():
        print(f"no {REPORT} found: run `python -m bench.fault_report --run`", file=sys.stderr)
        return code or 1
    print(path.read_text(), end="")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
