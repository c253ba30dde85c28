"""Who listens on a port: the proof that the server answering is our own process tree.

vLLM binds its port early and listens only once loaded, so a port that answers during a
load may belong to anyone: another user's vLLM, a second bawt-vllm state dir, a hand-run
`vllm serve` that shares the port through SO_REUSEADDR. `/health` cannot tell them apart.
The kernel can: every listening TCP socket has an inode (in /proc/net/tcp and tcp6), and
every socket a process holds is a link `socket:[inode]` under /proc/<pid>/fd. A port is
ours when our tree holds a listening socket on it and no one else does.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"


@dataclass(frozen=True)
class PortListeners:
    """The listening sockets on a port, split into ours and everyone else's."""

    port: int
    ours: frozenset[int]
    foreign: frozenset[int]

    @property
    def owned(self) -> bool:
        """Our tree listens on the port and nobody else does."""
        return bool(self.ours) and not self.foreign

    def describe(self) -> str:
        if self.owned:
            return f"port {self.port} is ours"
        if self.foreign:
            return f"port {self.port} is listened on by a process that is not ours"
        return f"nothing of ours listens on port {self.port} yet"


def listening_inodes(port: int, tables: Iterable[Path] = _TCP_TABLES) -> set[int]:
    """Inodes of every TCP socket in LISTEN state on `port`, any address, in this network namespace."""
    inodes: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                inodes.add(int(fields[9]))
    return inodes


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets a process holds (empty if it is gone or not ours to read)."""
    inodes: set[int] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def port_listeners(port: int, pids: Iterable[int]) -> PortListeners:
    """Split the listeners on `port` into those held by `pids` (our tree) and the rest."""
    listening = listening_inodes(port)
    held: set[int] = set()
    for pid in pids:
        held |= socket_inodes(pid)
    return PortListeners(port, frozenset(listening & held), frozenset(listening - held))


PORT_RELEASE_WAIT_S = 10.0


async def wait_port_released(port: int, timeout_s: float = PORT_RELEASE_WAIT_S) -> bool:
    """Wait (polling, up to timeout_s) until nothing listens on port; False if something still does.

    A restart launches on the port the last tree had: vLLM binds it at once and exits if a
    listening socket of the old tree is still there, which a restart must not spend itself on.
    """
    deadline = time.monotonic() + timeout_s
    while listening_inodes(port):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)
    return True
