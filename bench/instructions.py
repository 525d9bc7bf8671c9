"""Instructions per message: the bridge's own work counted by valgrind, not timed.

    .venv/bin/python -m bench.instructions [--messages 2000] [--mode binary] [--root PATH]
                                           [--profile callgrind.out]

On this kind of machine the timed rows of ``bench.suite`` move by 20% or more between
runs of the same code (the hand-written loop's CPU s/10k ranged from 1.00 to 1.56 in one
hour), which hides any change worth less than that. ``callgrind`` counts the instructions
the bridge process executes, in all of its threads. The count depends on the work done,
not on what else runs on the machine, so two versions of the bridge can be compared a
few percent apart.

What runs: tansu and the echo function as in ``bench.kafka_bench``, at full speed. The
bridge runs under ``valgrind --tool=callgrind --instr-atstart=no`` (about 50 times
slower), on the Kafka binary or batch configuration of the suite, with longer group
timeouts. After a warm-up batch has gone through (group joined, connections open), the
count is switched on, ``--messages`` records are produced and the count is switched off
when the last result is in the result topic. An idle stretch of the same length is
counted too, and subtracted: the polling loops run whether or not there is work.

``--root`` runs the bridge from another checkout (``git worktree add /tmp/old REV``), so
an older revision can be measured with the same harness and the same broker.

Not a test: it prints figures.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.kafka_bench import (
    SETTINGS,
    Feeder,
    Results,
    create_topics,
    start_tansu,
    write_bridge_config,
)
from bench.support import ROOT, function_server, stop, wait_http

VALGRIND_SETTINGS = {
    **SETTINGS,
    # Under valgrind the client's threads are slow too: keep the group from timing out.
    "session.timeout.ms": 45000,
    "heartbeat.interval.ms": 3000,
    "max.poll.interval.ms": 300000,
}
WARM_UP = 200


def _instructions(pid: int) -> int:
    """The instructions counted so far, summed over threads (``callgrind_control -e``)."""
    out = subprocess.run(
        ["callgrind_control", "-e", str(pid)], capture_output=True, text=True, check=True
    ).stdout
    counts = [int(n.replace(",", "")) for n in re.findall(r"^\s*Th\s+\d+\s+([\d,]+)", out, re.M)]
    if not counts:
        raise RuntimeError(f"callgrind_control -e printed no count:\n{out}")
    return sum(counts)


def _instrument(pid: int, on: bool) -> None:
    flag = "on" if on else "off"
    subprocess.run(
        ["callgrind_control", f"--instr={flag}", str(pid)], capture_output=True, check=True
    )


def measure(
    root: Path, mode: str, messages: int, work: Path, out_file: Path | None = None
) -> dict[str, float]:
    tansu, bootstrap = start_tansu(work / "tansu.log")
    fn, url = function_server()
    try:
        suffix = uuid.uuid4().hex[:6]
        topic, out = f"in-{suffix}", f"out-{suffix}"
        create_topics(bootstrap, topic, out)
        port = write_bridge_config(
            work, mode, bootstrap, url, topic, out, settings=VALGRIND_SETTINGS
        )
        args = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out_file or work / 'callgrind.out'}",
            sys.executable,
            "-m",
            "consumer_core",
            "--log-level",
            "warning",
            "run",
            "bridge.yaml",
        ]
        env_root = str(root)
        with open(work / "bridge.log", "ab") as log:
            bridge = subprocess.Popen(
                args,
                cwd=work,
                env={"PYTHONPATH": env_root, "PATH": "/usr/bin:/bin", "HOME": str(work)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", timeout=600)
            feeder = Feeder(bootstrap, topic)
            results = Results(bootstrap, out).start()
            feeder.send(WARM_UP)
            feeder.flush()
            results.wait_for(WARM_UP, timeout=900)
            time.sleep(5)  # let the warm-up's commits and store writes settle

            _instrument(bridge.pid, True)
            base = _instructions(bridge.pid)
            started = time.monotonic()
            feeder.send(messages)
            feeder.flush()
            results.wait_for(WARM_UP + messages, timeout=3600)
            time.sleep(2)  # the last acks and store writes
            busy_seconds = time.monotonic() - started
            busy = _instructions(bridge.pid) - base

            base = _instructions(bridge.pid)
            idle_started = time.monotonic()
            time.sleep(busy_seconds)
            idle_seconds = time.monotonic() - idle_started
            idle = _instructions(bridge.pid) - base
            _instrument(bridge.pid, False)
            results.stop()
        finally:
            stop(bridge)
    finally:
        stop(fn)
        stop(tansu)
    work_only = busy - idle * busy_seconds / idle_seconds
    return {
        "busy": busy,
        "idle": idle,
        "busy_seconds": busy_seconds,
        "per_message": work_only / messages,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--mode", choices=["binary", "batch"], default="binary")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to run the bridge from")
    parser.add_argument(
        "--profile",
        type=Path,
        help="keep callgrind's output here (counted stretches only; callgrind_annotate reads it)",
    )
    args = parser.parse_args()
    out_file = args.profile.resolve() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp:
        figures = measure(args.root.resolve(), args.mode, args.messages, Path(tmp), out_file)
    print(
        f"{args.mode} from {args.root}: {figures['per_message'] / 1e6:.3f} M instructions per "
        f"message ({args.messages} messages in {figures['busy_seconds']:.0f} s under valgrind; "
        f"counted {figures['busy'] / 1e9:.2f} G, idle share subtracted "
        f"{figures['idle'] / 1e9:.2f} G over the same time)"
    )


if __name__ == "__main__":
    main()
