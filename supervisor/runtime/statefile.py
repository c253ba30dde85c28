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

from ..config.atomic import write_atomically
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
    token: str | None = None  # the tree's token (process.TREE_TOKEN_ENV), to find escapees
    api_key: str | None = None  # the instance's own key, so a next supervisor can probe it

    @classmethod
    def from_json(cls, data: object) -> InstanceRecord:
        """A record from parsed JSON; ValueError unless every field has the right type."""
        if not isinstance(data, dict):
            raise ValueError("a record must be a JSON object")
        unknown = set(data) - set(_FIELD_TYPES)
        missing = {name for name in _REQUIRED if name not in data}
        if unknown or missing:
            raise ValueError(f"unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
        for name, value in data.items():
            if not _has_type(value, _FIELD_TYPES[name]):
                raise ValueError(f"field {name!r} has the wrong type")
        members = data.get("members", [])
        if not all(isinstance(m, list) and len(m) == 2 and all(_has_type(x, "number") for x in m) for m in members):
            raise ValueError("members must be [pid, start time] pairs")
        if not all(isinstance(g, int) and not isinstance(g, bool) for g in data["gpus"]):
            raise ValueError("gpus must be integers")
        if min(data["pid"], data["pgid"], data["sid"]) <= 1 or not data["alias"]:
            raise ValueError("pid, pgid and sid must be > 1, and alias not empty")
        return cls(**data)

    @property
    def root(self) -> ProcessIdentity:
        return ProcessIdentity(self.pid, self.create_time)

    def member_identities(self) -> list[ProcessIdentity]:
        return [ProcessIdentity(int(pid), float(created)) for pid, created in self.members]


_FIELD_TYPES: dict[str, str] = {
    "alias": "str", "pid": "int", "create_time": "number", "pgid": "int", "sid": "int", "port": "int",
    "gpus": "list", "log": "str?", "served_name": "str", "started_at": "number", "config_fingerprint": "str",
    "members": "list", "token": "str?", "api_key": "str?",
}
_REQUIRED = ("alias", "pid", "create_time", "pgid", "sid", "port", "gpus", "served_name", "started_at")


def _has_type(value: object, kind: str) -> bool:
    if kind.endswith("?"):
        return value is None or _has_type(value, kind[:-1])
    if isinstance(value, bool):
        return False
    return {"str": isinstance(value, str), "int": isinstance(value, int),
            "number": isinstance(value, int | float), "list": isinstance(value, list)}[kind]


def record_file_name(alias: str) -> str:
    """`<alias>.json`; an alias that could leave the directory is refused (config refuses it too)."""
    if not alias or "/" in alias or "\\" in alias or alias.startswith(".") or "\0" in alias:
        raise ValueError(f"alias {alias!r} cannot name a state record")
    return f"{alias}.json"


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
                record = InstanceRecord.from_json(json.loads(path.read_bytes()))
                if record_file_name(record.alias) != path.name:
                    raise ValueError("the alias inside does not match the file name")
                records.append(record)
            except (ValueError, TypeError, OSError):
                # Unusable, never trusted: set aside for a person to look at, and never signalled.
                with contextlib.suppress(OSError):
                    path.rename(path.with_suffix(".corrupt"))
        return records

    def _path(self, alias: str) -> Path:
        return self.directory / record_file_name(alias)
