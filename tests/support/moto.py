"""The moto server (SQS, EventBridge, S3 over HTTP) as a subprocess on a free port.

It runs through ``tests.support.moto_launch``, which closes a race in moto's SQS queue
that loses messages (see there)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.net import free_port, wait_for_port

REGION = "us-east-1"
ROOT = Path(__file__).resolve().parents[2]
"""The checkout, where ``tests.support.moto_launch`` is importable."""
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        """Environment for a bridge process: test credentials, no real AWS lookups."""
        return {
            **CREDENTIALS,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }


@contextlib.contextmanager
def running_moto(
    log_dir: Path, env: Mapping[str, str]
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start moto, wait until it listens, yield ``(url, process)``, stop it after."""
    port = free_port()
    with open(log_dir / "moto.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.moto_launch", "-H", "127.0.0.1", "-p", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    try:
        wait_for_port("127.0.0.1", port, timeout=60)
        yield f"http://127.0.0.1:{port}", process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
