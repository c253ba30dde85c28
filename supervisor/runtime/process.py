"""One `vllm serve` process tree: spawn it, know its members, and end all of them.

A process is ours by pid *and* start time (a pid alone can be reused), and a tree is
everything we have ever seen below the root plus everything still in the root's session.
That matters because vLLM's API server forks `VLLM::EngineCore`, which forks the workers;
when the API server dies hard they are re-parented away from it but keep its session and
process group, so that is how they are found again. Nothing here ever looks at names.

Only processes *proven* ours are ever signalled: a recorded identity that still matches
(pid and start time), a descendant of one, a member of a session or process group that a
proven member still belongs to (Linux does not hand out a pid while a session or group of
that number exists, so such a session cannot be a stranger's), or a process that carries
this tree's random token in its environment (an escapee that left the session, found
among the supervisor's adopted orphans or, at a stop, anywhere). A stale record whose pid
was reused by another program names nothing proven, so nothing is signalled.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

TREE_TOKEN_ENV = "BAWT_VLLM_TREE"
"""Every process of a tree we start inherits this variable, holding the tree's random token."""


def new_tree_token() -> str:
    return secrets.token_hex(16)


def carries_token(pid: int, token: str) -> bool:
    """Whether pid's environment holds our tree's token (readable for our own user's processes)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            return f"{TREE_TOKEN_ENV}={token}".encode() in handle.read().split(b"\0")
    except OSError:
        return False


@dataclass(frozen=True, order=True)
class ProcessIdentity:
    """A process as the kernel saw it when we met it: pid plus start time."""

    pid: int
    create_time: float

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        try:
            return cls(pid, psutil.Process(pid).create_time())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None

    def process(self) -> psutil.Process | None:
        """The live process with this identity, or None if it is gone, reused or a zombie."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return None

    def alive(self) -> bool:
        return self.process() is not None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent thread dies."""
    _libc().prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def become_subreaper() -> bool:
    """Make this process the reaper of orphaned descendants (Linux >= 3.4).

    Without it, a vLLM EngineCore orphaned by a dying API server is re-parented to init,
    which in a container may never reap it. With it, it comes to us and we reap it.
    """
    result: int = _libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return result == 0


def _child_setup() -> None:  # runs in the child between fork and exec
    # SIGTERM, not SIGKILL: vLLM's API server tears down its EngineCore and workers on
    # SIGTERM, whereas a SIGKILL would orphan them (the very failure we guard against).
    set_parent_death_signal(signal.SIGTERM)


@dataclass
class KillReport:
    """What ending a tree took."""

    took_s: float
    sigkilled: list[int] = field(default_factory=list)
    survivors: list[int] = field(default_factory=list)
    checked: int = 0

    @property
    def clean(self) -> bool:
        return not self.survivors


class ServeProcess:
    """A started (or adopted) `vllm serve` and every process it grew."""

    def __init__(
        self,
        root: ProcessIdentity,
        *,
        pgid: int,
        sid: int,
        popen: subprocess.Popen[bytes] | None = None,
        known: Iterable[ProcessIdentity] = (),
        token: str | None = None,
    ) -> None:
        self.root = root
        self.pgid = pgid
        self.sid = sid
        self.token = token
        self._popen = popen
        self._known: set[ProcessIdentity] = {root, *known}
        self._exit_code: int | None = None

    # -- starting ---------------------------------------------------------------------
    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> ServeProcess:
        """Start argv in a new session with output appended to log_path.

        Must be called from a long-lived thread (the event loop's): the parent-death
        signal fires when the *thread* that forked exits.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        token = new_tree_token()
        with open(log_path, "ab", buffering=0) as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**env, TREE_TOKEN_ENV: token},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_child_setup,
                close_fds=True,
            )
        identity = ProcessIdentity.of(popen.pid) or ProcessIdentity(popen.pid, time.time())
        return cls(identity, pgid=popen.pid, sid=popen.pid, popen=popen, token=token)

    @classmethod
    def adopt(
        cls, root: ProcessIdentity, *, pgid: int, sid: int, known: Iterable[ProcessIdentity] = (),
        token: str | None = None,
    ) -> ServeProcess:
        """Take charge of a tree a previous supervisor started (not our child)."""
        return cls(root, pgid=pgid, sid=sid, known=known, token=token)

    # -- observing --------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.root.pid

    def exit_code(self) -> int | None:
        """The root's exit status once it has exited (reaped), else None.

        Negative values are signals, as in subprocess. For an adopted root, whose status we
        cannot collect, -1 stands for "exited".
        """
        if self._exit_code is not None:
            return self._exit_code
        if self._popen is not None:
            self._exit_code = self._popen.poll()
        elif not self.root.alive():
            self._exit_code = -1
        return self._exit_code

    def running(self) -> bool:
        return self.exit_code() is None

    def refresh(self, *, everywhere: bool = False) -> list[ProcessIdentity]:
        """Record every live member of the tree, proven ours, and return them.

        Members: recorded identities that still match, their descendants, processes in a
        session or group a proven member is in, and token carriers among our own children
        (an escapee re-parented to us, the subreaper). With everywhere, token carriers are
        looked for among all processes (at a stop, and for a tree a previous supervisor left).
        """
        proven = {ident.pid: ident for ident in self._known if ident.alive()}
        table = _process_table()  # one pass over /proc for everything below
        candidates = _descendants_in(table, proven)
        if any(_shares(table.get(pid, _NOWHERE), self.pgid, self.sid) for pid in proven):  # our group/session
            candidates |= {pid for pid, row in table.items() if _shares(row, self.pgid, self.sid)}
        if self.token is not None:
            pool = table if everywhere else [pid for pid, row in table.items() if row[0] == os.getpid()]
            candidates |= {pid for pid in pool if carries_token(pid, self.token)}
        for pid in candidates - set(proven) - {os.getpid()}:
            identity = ProcessIdentity.of(pid)
            if identity is not None and identity.alive():
                proven[pid] = identity
        self._known |= set(proven.values())
        return sorted(proven.values())

    def known_members(self) -> list[ProcessIdentity]:
        return sorted(self._known)

    async def wait_exit(self, timeout: float | None = None) -> int | None:
        """Wait for the root to exit; the exit code, or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiter = _PidWaiter(self.root.pid)
        try:
            while self.exit_code() is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                await waiter.wait(0.25 if remaining is None else min(remaining, 0.25))
            return self._exit_code
        finally:
            waiter.close()

    # -- ending -----------------------------------------------------------------------
    async def kill_tree(self, grace_s: float) -> KillReport:
        """SIGTERM the group, wait up to grace_s, SIGKILL what is left, sweep, reap.

        Returns only when no member of the tree is alive (or reports the survivors).
        """
        started = time.monotonic()
        members = self.refresh(everywhere=True)
        report = KillReport(took_s=0.0)
        self._signal_group(signal.SIGTERM, members)
        for member in members:
            if not _in_group(member.pid, self.pgid):
                _signal(member, signal.SIGTERM)  # the root if it left its group, escapees
        await self._wait_gone(grace_s)
        leftovers = self.refresh(everywhere=True)
        if leftovers:
            self._signal_group(signal.SIGKILL, leftovers)
            for member in leftovers:
                _signal(member, signal.SIGKILL)
            report.sigkilled = [m.pid for m in leftovers]
            await self._wait_gone(5.0)
        self._reap()
        report.survivors = [m.pid for m in self.refresh()]
        report.checked = len(self._known)
        report.took_s = time.monotonic() - started
        return report

    def _signal_group(self, sig: int, members: Iterable[ProcessIdentity]) -> None:
        """Signal our process group, only while a member proven ours is in it."""
        if not any(_in_group(m.pid, self.pgid) for m in members):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    async def _wait_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            alive = [m for m in self._known if m.alive()]
            if not alive or time.monotonic() >= deadline:
                return
            waiter = _PidWaiter(alive[0].pid)
            try:
                await waiter.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            finally:
                waiter.close()

    def _reap(self) -> None:
        """Collect exit statuses so no member lingers as a zombie of ours."""
        if self._popen is not None:
            self.exit_code()
        for member in self._known:
            if self._popen is not None and member.pid == self._popen.pid:
                continue
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(member.pid, os.WNOHANG)


def _in_group(pid: int, pgid: int) -> bool:
    try:
        return os.getpgid(pid) == pgid
    except (ProcessLookupError, PermissionError):
        return False


ProcRow = tuple[int, int, int]  # (ppid, pgid, sid)
_NOWHERE: ProcRow = (0, -1, -1)


def _process_table() -> dict[int, ProcRow]:
    """Every process's parent, group and session, read from /proc/<pid>/stat in one pass."""
    table: dict[int, ProcRow] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if len(fields) >= 4:
            table[int(name)] = (int(fields[1]), int(fields[2]), int(fields[3]))
    return table


def _shares(row: ProcRow, pgid: int, sid: int) -> bool:
    return row[1] == pgid or row[2] == sid


def _descendants_in(table: dict[int, ProcRow], roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, row in table.items():
        children.setdefault(row[0], []).append(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _signal(member: ProcessIdentity, sig: int) -> None:
    proc = member.process()
    if proc is None:
        return
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


class _PidWaiter:
    """Wakes when a pid exits, through a pidfd where the kernel has them (no polling)."""

    def __init__(self, pid: int) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._fd = os.pidfd_open(pid)

    async def wait(self, timeout: float) -> None:
        if self._fd is None:
            await asyncio.sleep(min(timeout, 0.02))
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self._fd, exited)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancel that arrives
            # in the same loop turn as the exit, and a stop waiting on this task would hang.
            async with asyncio.timeout(timeout):
                await ready
        except TimeoutError:
            pass
        finally:
            loop.remove_reader(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
