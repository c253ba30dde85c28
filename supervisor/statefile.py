"""What a supervisor leaves on disk so the next one can find its survivors.

One JSON record per running instance: alias, pid, process start time, pgid, sid, GPUs,
port, log, and every member of the tree seen so far. A supervisor that was SIGKILLed or
OOM-killed leaves these behind; the next start checks each process by pid *and* start time
(never by name) and either adopts the instance or stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import write_atomically
from .process import ProcessIdentity


@dataclass
class InstanceRecord:
    alias: str
    pid: int
    create_time: float
    pgid: int
    sid: int
    port: int
    gpus: list[int]
    log: str | None
    served_name: str
    started_at: float
    config_fingerprint: str = ""
    members: list[list[float]] = field(default_factory=list)  # [pid, create_time] pairs

    @property
    def root(self) -> ProcessIdentity:
        return ProcessIdentity(self.pid, self.create_time)

    def member_identities(self) -> list[ProcessIdentity]:
        return [ProcessIdentity(int(pid), float(created)) for pid, created in self.members]


class StateDirBusy(RuntimeError):
    """Another supervisor (a daemon or a foreground `up`) owns this state directory."""


class StateDirLock:
    """One supervisor per state directory: an exclusive flock on <state_dir>/supervisor.lock.

    The kernel drops the lock when its holder dies, however it dies, so a crashed
    supervisor never blocks the next one.
    """

    def __init__(self, state_dir: Path, role: str) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "supervisor.lock"
        self._handle = open(self.path, "a+")  # noqa: SIM115 - held for the supervisor's life
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise StateDirBusy(f"{holder} already supervises {state_dir}") from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"a bawt-vllm {role} (pid {os.getpid()})")
        self._handle.flush()

    def release(self) -> None:
        self._handle.close()


class StateStore:
    """Instance records under <state_dir>/instances/."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "instances"

    def save(self, record: InstanceRecord) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self._path(record.alias), json.dumps(asdict(record), indent=1).encode(), 0o600)

    def remove(self, alias: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(alias).unlink()

    def load_all(self) -> list[InstanceRecord]:
        records: list[InstanceRecord] = []
        if not self.directory.is_dir():
            return records
        for path in sorted(self.directory.glob("*.json")):
            try:
                records.append(InstanceRecord(**json.loads(path.read_text())))
            except (ValueError, TypeError):
                path.rename(path.with_suffix(".corrupt"))
        return records

    def _path(self, alias: str) -> Path:
        return self.directory / f"{alias}.json"
