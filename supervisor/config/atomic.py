"""Atomic file writes: readers (systemd, the next supervisor, the user) see the old file or
the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int, *, overwrite: bool = True) -> bool:
    """Write via a temp file in the same directory, fsync, then rename into place.

    Without `overwrite` the file is linked into place, which fails if it exists: then it
    returns False and leaves the existing file alone. OSError propagates; no temp file stays.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temporary, path)
        else:
            try:
                os.link(temporary, path)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    _fsync_directory(path.parent)
    return True


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable; not every filesystem allows it, which is fine."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
