"""The logs of `vllm serve`: where each start writes (`<state_dir>/logs/<alias>.<N>.log`, N counting
starts), and reading them while they grow.

The one place that knows the naming: the instance asks for the next file when it launches,
and `logs` (daemon or not) finds a start's file by number or the latest. One follower reads a
growing log for both the load (stages, progress) and `logs --follow`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import BinaryIO

from ..config.names import is_safe_alias

LOG_FILES_KEPT = 20
"""Logs of older starts of a model beyond this many are deleted when a new one begins."""


def log_dir(state_dir: Path) -> Path:
    """Where each start of each model writes its log, as <alias>.<N>.log."""
    return state_dir / "logs"


def _start_numbers(logs: Path, alias: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(alias)}\.(\d+)\.log$")
    return sorted(int(m.group(1)) for p in logs.iterdir() if (m := pattern.match(p.name)))


def next_log_path(logs: Path, alias: str) -> Path:
    """The file for alias's next start; the oldest of its earlier logs beyond LOG_FILES_KEPT are deleted."""
    logs.mkdir(parents=True, exist_ok=True)
    numbers = _start_numbers(logs, alias)
    for old in numbers[: max(0, len(numbers) - LOG_FILES_KEPT + 1)]:
        with contextlib.suppress(OSError):
            (logs / f"{alias}.{old}.log").unlink()
    return logs / f"{alias}.{(numbers[-1] + 1) if numbers else 1}.log"


def find_log(logs: Path, alias: str, start: int | None = None) -> Path | None:
    """The log of alias's start number `start`, else of its latest start; None if there is none.

    An alias that could not be a model's (see is_safe_alias) has no log: it could point outside `logs`.
    """
    if not is_safe_alias(alias):
        return None
    if start is not None:
        path = logs / f"{alias}.{start}.log"
        return path if path.exists() else None
    candidates = sorted(logs.glob(f"{alias}.*.log"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


class LogFollower:
    """Reads a growing log file incrementally and remembers its tail.

    Progress bars rewrite one line with carriage returns; each rewrite still grows the
    file, which is what counts as progress.
    """

    def __init__(self, path: Path, *, tail_lines: int = 40, from_end: bool = False) -> None:
        """from_end: follow only what is written from now on (`logs --follow` after the tail)."""
        self.path = path
        self._handle: BinaryIO | None = None
        self._partial = b""
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self.last_growth = time.monotonic()
        if from_end and (handle := self._open()) is not None:
            handle.seek(0, 2)

    def _open(self) -> BinaryIO | None:
        if self._handle is None:
            try:
                self._handle = open(self.path, "rb")  # noqa: SIM115 - kept open while following
            except FileNotFoundError:
                return None
        return self._handle

    def read_chunk(self) -> bytes:
        """The bytes written since the previous read, as written (b"" when nothing new)."""
        handle = self._open()
        chunk = handle.read() if handle is not None else b""
        if chunk:
            self.last_growth = time.monotonic()
        return chunk

    def read(self) -> list[str]:
        """The complete lines written since the previous read."""
        chunk = self.read_chunk()
        if not chunk:
            return []
        pieces = re.split(rb"\r\n|\n|\r", self._partial + chunk)
        self._partial = pieces.pop()
        lines = [p.decode("utf-8", "replace") for p in pieces if p.strip()]
        self._tail.extend(lines)
        return lines

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def silent_for(self) -> float:
        return time.monotonic() - self.last_growth

    def tail(self, count: int = 20) -> list[str]:
        lines = list(self._tail)
        if self._partial.strip():
            lines.append(self._partial.decode("utf-8", "replace"))
        return lines[-count:]


def read_log_tail(path: Path, count: int = 20) -> list[str]:
    """The last `count` lines of a log file (reading only the end of it)."""
    max_bytes = max(64 * 1024, count * 400)
    try:
        with open(path, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = [p.decode("utf-8", "replace") for p in re.split(rb"\r\n|\n|\r", data) if p.strip()]
    return lines[-count:]


async def log_text(path: Path, lines: int, *, follow: bool = False, poll_s: float = 0.1,
                   until: Callable[[], bool] = lambda: False) -> AsyncGenerator[bytes, None]:
    """`logs`: the last `lines` lines of path, then (follow) what is written to it from then on,
    as written, polled every poll_s until the consumer stops or until() is true."""
    tail = read_log_tail(path, lines) if lines else []
    yield ("\n".join(tail) + ("\n" if tail else "")).encode()
    if not follow:
        return
    follower = LogFollower(path, from_end=True)
    try:
        while not until():
            if chunk := follower.read_chunk():
                yield chunk
            await asyncio.sleep(poll_s)
    finally:
        follower.close()
