"""``type: file``: one structured CloudEvent per line, appended and fsynced.

Meant for demos and debugging; an emit returns only after the lines reached the disk.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Self, TypeVar

from consumer_core.config.model import ComponentSpec
from consumer_core.contracts import Resources
from consumer_core.errors import SinkError
from consumer_core.events import CloudEvent, structured_bytes

__all__ = ["FileSink"]

T = TypeVar("T")


class FileSink:
    def __init__(self, *, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-sink")
        self._file: IO[bytes] | None = None

    @classmethod
    def from_config(cls, spec: ComponentSpec, res: Resources) -> Self:
        path = Path(spec.options["path"])
        return cls(name=spec.path, path=path if path.is_absolute() else res.base_dir / path)

    async def connect(self) -> None:
        def open_file() -> IO[bytes]:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return open(self.path, "ab")

        try:
            self._file = await self._run(open_file)
        except OSError as exc:
            raise SinkError(f"opening {self.path}: {exc}") from exc

    async def close(self) -> None:
        if self._file is not None:
            await self._run(self._file.close)
            self._file = None
        self._executor.shutdown(wait=True)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def emit(self, events: Sequence[CloudEvent]) -> None:
        handle = self._file
        assert handle is not None, "emit() before connect()"
        data = b"".join(structured_bytes(e) + b"\n" for e in events)

        def write() -> None:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

        try:
            await self._run(write)
        except OSError as exc:
            raise SinkError(f"writing {self.path}: {exc}") from exc
