"""Every fault of the README's promise table, run against the stand-in vLLM: does each promise hold?

    .venv/bin/python benchmarks/faults.py [--only 3,6] [--verbose]

Each case runs in a fresh state dir and its own port window, with short timings, through the
product's public APIs (Pool, load_config, DaemonClient, the CLI and the daemon in a subprocess,
the gateway over HTTP). Whatever a case starts carries a tag in its environment (every process
of a tree inherits it), so after the case's own cleanup (daemons stopped, pools closed) what is
still alive is found by that tag and checked by pid + start time. Prints one row per case:
- outcome: `survived` (the promise held) or `BROKEN` and why;
- detect: seconds from the fault to the supervisor acting on it, where detection applies;
- left: processes the case started (daemons, vLLM trees, escapees) still alive after its
  cleanup, of those seen while it ran;
- foreign: processes the case set up as strangers (a process a stale record names, a foreign
  server on our port) that were signalled, stopped or killed, of those set up.
The last line is `N faults, N survived, N orphans, N foreign processes signalled`; the exit code is
0 only if every case survived, with no orphans and no foreign process signalled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STANDIN
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.config.problems import ConfigError
from bawt_vllm.supervisor.control import client as client_module
from bawt_vllm.supervisor.control.client import DaemonClient, DaemonError
from bawt_vllm.supervisor.runtime.failures import StartFailed
from bawt_vllm.supervisor.runtime.pool import Pool, PoolClosed
from bawt_vllm.supervisor.runtime.ports import port_answers
from bawt_vllm.supervisor.runtime.process import TREE_TOKEN_ENV, ProcessIdentity
from bawt_vllm.supervisor.runtime.statefile import InstanceRecord, StateStore
from bawt_vllm.supervisor.runtime.states import State

CASE_ENV = "BAWT_FAULTS_CASE"
"""Every process a case starts inherits this variable (the case's own random tag)."""
WINDOW = 16  # ports per case: instances, the gateway, a foreign server
LEFTOVER_GRACE_S = 5.0  # after its cleanup, how long a case's processes may take to be gone
MiB = 1024 * 1024
FAST = {"stop_grace_s": 2.0, "health_interval_s": 0.2, "restart_backoff_s": 0.05, "restart_backoff_max_s": 0.2,
        "max_restarts": 2, "ready_stall_timeout_s": 10, "max_cpu_instances": 4, "eviction_wait_s": 0.5}
# `bawt-vllm daemon`, with module constants set from $BAWT_FAULTS_TUNE first (a missing one is an error).
LAUNCH = """\
import json, os, sys
from bawt_vllm.supervisor.control import server as control
from bawt_vllm.supervisor.serve import front
for module, name, value in json.loads(os.environ.get("BAWT_FAULTS_TUNE", "[]")):
    target = {"control": control, "front": front}[module]
    if not hasattr(target, name):
        sys.exit(f"faults benchmark: {target.__name__} has no {name} to shorten")
    setattr(target, name, value)
from bawt_vllm.supervisor.cli.app import main
main()
"""
# A stranger: its own session, every catchable signal written to stdout as its number.
STRANGER = """\
import os, signal
def note(number, _frame):
    os.write(1, f"{number}\\n".encode())
for number in signal.valid_signals():
    try:
        signal.signal(number, note)
    except (OSError, ValueError, RuntimeError):
        pass
os.write(1, b"ready\\n")
while True:
    signal.pause()
"""


class Broken(Exception):
    """The promise did not hold; the message says how."""


def expect(condition: object, why: str) -> None:
    if not condition:
        raise Broken(why)


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


async def until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


def standin(mode: str = "ok", **extra: Any) -> dict[str, Any]:
    env = {"FAKE_VLLM_MODE": mode, **extra.pop("env", {})}
    return {"type": "vllm", "model_id": "standin/model", "tool_support": "none", "env": env, **extra}


def tagged(tag: str) -> set[ProcessIdentity]:
    """Every live process (zombies excluded) whose environment carries the case's tag."""
    needle = f"{CASE_ENV}={tag}".encode()
    found: set[ProcessIdentity] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if needle not in handle.read().split(b"\0"):
                    continue
        except OSError:
            continue
        identity = ProcessIdentity.of(int(name))
        if identity is not None and identity.alive():
            found.add(identity)
    return found


class Sampler:
    """Notes every process carrying the case's tag while the case runs (pid + start time)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.seen: set[ProcessIdentity] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.seen |= tagged(self.tag)

    def leftovers(self) -> list[ProcessIdentity]:
        """Stop sampling; what is still alive once LEFTOVER_GRACE_S has passed (or nothing is)."""
        self._stop.set()
        self._thread.join()
        alive: list[ProcessIdentity] = []

        def none_left() -> bool:
            nonlocal alive
            self.seen |= tagged(self.tag)
            alive = sorted(identity for identity in self.seen if identity.alive())
            return not alive

        wait_for(none_left, LEFTOVER_GRACE_S, 0.1)
        return alive


class Foreign:
    """A process that is not ours, set up by a case: the supervisor must never signal it."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
                 logs_signals: bool = False) -> None:
        clean = {k: v for k, v in os.environ.items() if k not in (CASE_ENV, TREE_TOKEN_ENV, "VLLM_API_KEY")}
        self.name = name
        self.received: list[int] = []
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.PIPE if logs_signals else subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True, env={**clean, **(env or {})})
        self._fd = self.popen.stdout.fileno() if self.popen.stdout is not None else None
        if self._fd is not None:
            if b"ready" not in self._read(10.0):
                self.close()
                raise RuntimeError(f"{name} did not start")
            os.set_blocking(self._fd, False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self, timeout: float) -> bytes:
        assert self._fd is not None
        ready, _, _ = select.select([self._fd], [], [], timeout)
        return os.read(self._fd, 4096) if ready else b""

    def harm(self) -> str | None:
        """What was done to it (killed, stopped, signals it received), or None if untouched."""
        if self._fd is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                while chunk := os.read(self._fd, 4096):
                    self.received += [int(n) for n in chunk.split() if n.isdigit()]
        harm = []
        if self.received:
            harm.append("received " + ", ".join(signal.Signals(n).name for n in self.received))
        code = self.popen.poll()
        if code is not None:  # it never ends on its own; an exit status of 0 means someone else reaped it
            harm.append(f"was killed ({signal.Signals(-code).name})" if code < 0 else "was killed")
        else:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(self.pid).status() == psutil.STATUS_STOPPED:
                    harm.append("was stopped (SIGSTOP)")
        return f"{self.name} (pid {self.pid}) {' and '.join(harm)}" if harm else None

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class Daemon:
    """`bawt-vllm daemon` in a subprocess (output to a file), stopped by the case's cleanup."""

    def __init__(self, ctx: Ctx, config: Path, *, tune: list[tuple[str, str, float]] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.state_dir = Path(yaml.safe_load(config.read_text())["bawt_vllm"]["state_dir"])
        self.socket = self.state_dir / "control.sock"
        self.log = ctx.work / f"daemon-{len(ctx.daemons) + 1}.log"
        ctx.daemons.append(self)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", LAUNCH, "daemon", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**ctx.env(), "PYTHONUNBUFFERED": "1", "BAWT_FAULTS_TUNE": json.dumps(tune or []), **(env or {})})
        ctx.cleanups.append(self.stop)
        self.client = DaemonClient(self.socket)
        if not wait_for(lambda: self.process.poll() is not None or self.client.ping(), 30):
            raise Broken(f"the daemon did not answer within 30 s; its log: {self.log}")
        # The sockets answer before the daemon has recovered what a previous one left; its log says
        # "ready:" (and systemd hears READY=1) once that is done.
        if not wait_for(lambda: self.process.poll() is not None or "INFO ready: " in self.output(), 30):
            raise Broken(f"the daemon did not finish starting within 30 s; its log: {self.log}")
        if self.process.poll() is not None:
            raise Broken(f"the daemon exited with code {self.process.returncode}: {self.output()[-500:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def gateway(self) -> str:
        return self.client.status()["daemon"]["gateway"]

    def row(self, alias: str) -> dict[str, Any]:
        return next(row for row in self.client.status()["models"] if row["alias"] == alias)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait; a daemon that does not stop is SIGKILLed (by pid) and the case broken."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise Broken(f"the daemon did not stop within {timeout:.0f} s of SIGTERM") from None


@dataclass
class Ctx:
    """One case's world: temp dir, port window, tag, and what to clean up."""

    number: int
    base_port: int
    work: Path = field(init=False)
    tag: str = field(init=False)
    detect_s: float | None = None
    notes: list[str] = field(default_factory=list)
    foreign: list[Foreign] = field(default_factory=list)
    daemons: list[Daemon] = field(default_factory=list)
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"bawt-faults-{self.number}-"))
        self.tag = f"{os.getpid()}-{self.number}-{secrets.token_hex(6)}"

    @property
    def state_dir(self) -> Path:
        return self.work / "state"

    def port(self, index: int) -> int:
        return self.base_port + self.number * WINDOW + index

    def env(self) -> dict[str, str]:
        """For what the case starts: its tag; no gateway key, no systemd socket."""
        drop = ("BAWT_VLLM_API_KEY", "NOTIFY_SOCKET", TREE_TOKEN_ENV)
        return {**{k: v for k, v in os.environ.items() if k not in drop}, CASE_ENV: self.tag}

    def settings(self, *, fast: bool = True, **overrides: Any) -> dict[str, Any]:
        settings: dict[str, Any] = {"vllm_executable": str(STANDIN), "state_dir": str(self.state_dir),
                                    "port_range": [self.port(0), self.port(7)], "gateway_port": self.port(8)}
        return {**settings, **(FAST if fast else {}), **overrides}

    def config(self, models: dict[str, Any], *, name: str = "models.yaml", fast: bool = True,
               **overrides: Any) -> Path:
        path = self.work / name
        document = {"bawt_vllm": self.settings(fast=fast, **overrides), "models": models}
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def stranger(self, name: str) -> Foreign:
        stranger = Foreign(name, [sys.executable, "-c", STRANGER], logs_signals=True)
        self.foreign.append(stranger)
        return stranger

    def daemon(self, config: Path, **kwargs: Any) -> Daemon:
        return Daemon(self, config, **kwargs)


# -- HTTP as sent on the wire ----------------------------------------------------------------
@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_reply(sock: socket.socket) -> Reply:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data[:200]!r}")
        data += chunk
    top, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    length = headers.get("content-length")
    while length is None or len(body) < int(length):
        try:
            chunk = sock.recv(65536)
        except ConnectionError:
            break
        if not chunk:
            break
        body += chunk
    return Reply(int(status_line.split()[1]), headers, body)


def request_head(method: str, target: str, *, length: int | None = None, extra: str = "") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: gateway", "Connection: close", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def exchange(address: tuple[str, int] | str, data: bytes | Iterator[bytes], timeout: float = 20) -> Reply:
    """Send data as is on a fresh connection (TCP, or a Unix socket path); the response."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(address)
        with contextlib.suppress(ConnectionError):  # the server may answer (and close) before all is sent
            for piece in [data] if isinstance(data, bytes) else data:
                sock.sendall(piece)
        return read_reply(sock)


def closed_after(port: int, data: bytes, timeout: float) -> float | None:
    """Seconds from sending data until the server closes the connection (None: still open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        started = time.monotonic()
        sock.sendall(data)
        try:
            while sock.recv(65536):
                pass
        except TimeoutError:
            return None
        except ConnectionError:
            pass
        return time.monotonic() - started


def openai_error_problem(reply: Reply, status: int, code: str | None = None) -> str | None:
    """Why reply is not an OpenAI-shaped error with this status (and code), or None."""
    excerpt = reply.body[:200]
    if reply.status != status:
        return f"status {reply.status}, not {status}: {excerpt!r}"
    if not reply.headers.get("content-type", "").startswith("application/json"):
        return f"{status} is not JSON ({reply.headers.get('content-type')}): {excerpt!r}"
    try:
        error = reply.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} has no error object: {excerpt!r}"
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"} or not error["message"]:
        return f"{status} is not OpenAI-shaped: {excerpt!r}"
    if code is not None and error["code"] != code:
        return f"{status} has code {error['code']!r}, not {code!r}"
    return None


def http_request(method: str, url: str, body: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def completion(url: str, model: str, **kwargs: Any) -> tuple[int, bytes]:
    return http_request("POST", f"{url}/v1/completions", {"model": model, "prompt": "x", "max_tokens": 2}, **kwargs)


@contextlib.contextmanager
def patched(module: Any, name: str, value: object) -> Iterator[None]:
    if not hasattr(module, name):
        raise Broken(f"{module.__name__} has no {name}: how the client bounds its waits has changed")
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def stale_record(alias: str, pid: int, **extra: Any) -> InstanceRecord:
    """A record naming pid (its group and session too) with a start time that is not its own."""
    wrong = psutil.Process(pid).create_time() - 1000.0
    return InstanceRecord(alias=alias, pid=pid, create_time=wrong, pgid=pid, sid=pid, port=1, gpus=[], log=None,
                          served_name=alias, started_at=0.0, members=[[pid, wrong]], token=secrets.token_hex(16),
                          **extra)


def abandon(config: Path, alias: str) -> tuple[ProcessIdentity, list[ProcessIdentity]]:
    """Start alias through a Pool, then drop the Pool without stopping it (its supervisor 'died'):
    the tree runs on, named only by its state record. Its root and members."""
    async def first_supervisor() -> tuple[ProcessIdentity, list[ProcessIdentity]]:
        instance = await Pool(load_config(config)).up(alias, timeout=30)
        assert instance.process is not None
        return instance.process.root, instance.process.refresh()

    return asyncio.run(first_supervisor())  # ends the supervision task, never the tree


def stop_recorded(config: Path) -> None:
    """Stop what state records name, as the next supervisor would (the cleanup of an abandoned tree)."""
    async def recover() -> None:
        await Pool(load_config(config)).recover(adopt=False)

    asyncio.run(recover())


# -- the cases ---------------------------------------------------------------------------------
def case_stale_record(ctx: Ctx) -> None:
    """1. A stale record naming a live stranger (pid, pgid, sid; another start time): nothing signalled."""
    config = ctx.config({"m": standin()})
    stranger = ctx.stranger("stranger named by a stale record")
    store = StateStore(ctx.state_dir)
    record = ctx.state_dir / "instances" / "m.json"

    store.save(stale_record("m", stranger.pid))
    report = asyncio.run(Pool(load_config(config)).recover(adopt=True))
    expect(report.gone == ["m"] and not report.stopped and not report.adopted,
           f"Pool.recover treated the stranger as ours: adopted {report.adopted}, stopped {report.stopped}")
    expect(not record.exists(), "Pool.recover kept a record that names nothing of ours")
    expect(stranger.harm() is None, f"Pool.recover: {stranger.harm()}")

    store.save(stale_record("m", stranger.pid))
    daemon = ctx.daemon(config)
    expect(daemon.row("m")["state"] == "stopped", f"the daemon adopted the stranger: {daemon.row('m')}")
    expect(daemon.stop() == 0, "the daemon did not exit cleanly")
    expect(not record.exists(), "the daemon kept a record that names nothing of ours")
    ctx.notes.append("Pool.recover and a daemon start: record dropped, stranger untouched")


SILENT_S = 3.0  # a load stage, and a stop grace, with no output at all
READ_TIMEOUT_S = 1.0  # the client's read timeout here: well under SILENT_S
HEARTBEAT_S = 0.2  # the daemon's heartbeat here (the real ones: 5 s heartbeats, a 15 s read timeout)


def case_silent_waits(ctx: Ctx) -> None:
    """2. A load and a stop silent for longer than the client's read timeout: up and down succeed."""
    config = ctx.config({"slow": standin("ignore_sigterm", env={"FAKE_VLLM_LOAD_S": str(SILENT_S)})},
                        stop_grace_s=SILENT_S, ready_stall_timeout_s=SILENT_S * 3)
    daemon = ctx.daemon(config, tune=[("control", "HEARTBEAT_S", HEARTBEAT_S)])
    client = DaemonClient(daemon.socket, timeout=READ_TIMEOUT_S)
    beats: list[dict[str, Any]] = []
    with patched(client_module, "STREAM_READ_TIMEOUT_S", READ_TIMEOUT_S):
        started = time.monotonic()
        try:
            result = client.up("slow", on_waiting=beats.append)
        except DaemonError as error:
            raise Broken(f"up failed on a load silent for {SILENT_S:g} s (read timeout {READ_TIMEOUT_S:g} s): "
                         f"{error}") from None
        loaded = time.monotonic() - started
        expect(result.get("ok") and result["model"]["state"] == "ready", f"up did not end ready: {result}")
        expect(loaded >= SILENT_S, f"the load took {loaded:.1f} s: not silent longer than the read timeout")
        load_beats = len(beats)
        try:
            [stop] = client.down("slow", on_waiting=beats.append)
        except DaemonError as error:
            raise Broken(f"down failed on a stop silent for {SILENT_S:g} s: {error}") from None
    expect(stop["clean"] and stop["sigkilled"] and stop["took_s"] >= SILENT_S,
           f"down did not wait out the grace and prove the stop: {stop}")
    ctx.notes.append(f"load {loaded:.1f} s and stop {stop['took_s']:.1f} s silent, client read timeout "
                     f"{READ_TIMEOUT_S:g} s, {load_beats} + {len(beats) - load_beats} heartbeats")


def case_foreign_server(ctx: Ctx) -> None:
    """3. A foreign server on our port during the load: never ready, fails naming it, untouched."""
    port = ctx.port(9)
    config = ctx.config({"m": standin(port=port, env={"FAKE_VLLM_LOAD_S": "8"})})

    def loading(pool: Pool) -> bool:
        instance = pool.get("m")
        return instance is not None and instance.stage == "loading weights"

    async def scenario() -> None:
        pool = Pool(load_config(config))
        try:
            load = asyncio.ensure_future(pool.up("m", timeout=30))
            expect(await until(lambda: loading(pool) or load.done(), 15), "the load did not begin")
            foreign = Foreign("foreign server on our port",
                              [sys.executable, str(STANDIN), "serve", "other", "--port", str(port),
                               "--served-model-name", "m"], env={"FAKE_VLLM_MODE": "ok", "FAKE_VLLM_LOAD_S": "0"})
            ctx.foreign.append(foreign)
            expect(await until(lambda: port_answers("127.0.0.1", port), 15), "the foreign server never listened")
            listening = time.monotonic()
            try:
                await asyncio.wait_for(load, 30)
            except StartFailed as failure:
                ctx.detect_s = time.monotonic() - listening
                message = str(failure)
            else:
                raise Broken(f"called ready although a foreign server answers on port {port}")
            instance = pool.get("m")
            assert instance is not None
            expect(not any(e.state is State.READY for e in instance.events), "a ready event was recorded")
            expect(instance.state is State.FAILED, f"the instance is {instance.state}, not failed")
            expect(str(port) in message and ("not ours" in message or "another server" in message),
                   f"the failure does not name the foreign server on port {port}: {message}")
            ctx.notes.append(message.splitlines()[0][:150])
        finally:
            await pool.close()

    asyncio.run(scenario())


def case_reload_under_requests(ctx: Ctx) -> None:
    """4. A reload that changes the running model while requests arrive: one tracked tree, old one gone."""
    config = ctx.config({"m": standin("ignore_sigterm")}, stop_grace_s=1.0)
    changed = ctx.config({"m": standin("ignore_sigterm", env={"X": "1"})}, name="changed.yaml", stop_grace_s=1.0)

    async def scenario() -> None:
        pool = Pool(load_config(config))
        try:
            old = await pool.up("m", timeout=20)
            assert old.process is not None
            old_tree = old.process.refresh()
            reload = asyncio.ensure_future(pool.apply_config(load_config(changed)))
            arrivals = [asyncio.ensure_future(pool.up("m", timeout=30)) for _ in range(3)]
            expect(await until(lambda: old.state is State.STOPPING or reload.done(), 10), "the old tree never stopped")
            arrivals += [asyncio.ensure_future(pool.up("m", timeout=30)) for _ in range(3)]  # while it stops
            changes = await reload
            results = await asyncio.gather(*arrivals, return_exceptions=True)
            new = pool.get("m")
            expect(changes and "entry changed" in changes[0], f"the reload did not see the change: {changes}")
            expect(new is not None and new.process is not None, f"no instance after the reload: {results}")
            assert new is not None and new.process is not None
            expect(all(result is new for result in results), f"the requests got different answers: {results}")
            expect(not [m for m in old_tree if m.alive()], f"the old tree outlived the reload: {old_tree}")
            expect(new.entry.env.get("X") == "1", "the new instance runs the old entry")
            expect(len(new.launched_pids) == 1, f"{len(new.launched_pids)} trees launched for the new entry")
            running = tagged(ctx.tag)
            tracked = set(new.process.refresh())
            expect(running == tracked, f"running {sorted(running)}, tracked {sorted(tracked)}")
            ctx.notes.append(f"6 requests during the reload all joined one new tree ({len(tracked)} process(es))")
        finally:
            await pool.close()

    asyncio.run(scenario())


def case_reload_refusals(ctx: Ctx) -> None:
    """5. Reloads that would lose track (empty models.yaml, no models, moved state_dir): refused, model untouched."""
    config = ctx.config({"m": standin()})
    original = config.read_text()
    daemon = ctx.daemon(config)
    daemon.client.up("m")
    before = daemon.row("m")
    gateway = daemon.gateway()
    moved = yaml.safe_load(original)
    moved["bawt_vllm"]["state_dir"] = str(ctx.work / "elsewhere")
    for what, text in {"empty models.yaml": "", "no models": "models: {}\n",
                       "moved state_dir": yaml.safe_dump(moved, sort_keys=False)}.items():
        config.write_text(text)
        changes = daemon.client.reload()
        expect(changes and changes[0].startswith("refused"), f"{what}: not refused: {changes}")
        row = daemon.row("m")
        expect(row["state"] == "ready" and row["pid"] == before["pid"], f"{what}: the model was touched: {row}")
        status, body = completion(gateway, "m")
        expect(status == 200, f"{what}: the model no longer answers through the gateway: {status} {body[:200]!r}")
    expect(not (ctx.work / "elsewhere").exists(), "a refused reload created the moved state_dir")
    expect(daemon.socket.exists(), "a refused reload removed the control socket")
    config.write_text(original)
    ctx.notes.append("3 reloads refused, same pid answering throughout")


def case_hung_and_busy_engine(ctx: Ctx) -> None:
    """6. Default liveness settings (probe_timeout_s short): a SIGSTOPped engine is caught and restarted;
    an engine busy streaming for longer than the window is not."""
    busy_env = {"FAKE_VLLM_TOKENS": "40", "FAKE_VLLM_TOKEN_S": "0.15"}  # 6 s of streaming, a 1 s window
    config = ctx.config({"hung": standin("engine_child"), "busy": standin("engine_child", env=busy_env)},
                        fast=False, probe_timeout_s=1.0, stop_grace_s=1.0, max_cpu_instances=2)
    stopped: list[ProcessIdentity] = []

    def continue_stopped() -> None:
        for member in stopped:
            if (process := member.process()) is not None:
                process.resume()

    ctx.cleanups.append(continue_stopped)

    async def stream(url: str, key: str) -> int:
        import aiohttp

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as session, session.post(
                f"{url}/chat/completions", json={"model": "busy", "stream": True, "messages": []}) as response:
            return (await response.read()).count(b"data:")

    async def scenario() -> None:
        pool = Pool(load_config(config))
        try:
            hung, busy = await asyncio.gather(pool.up("hung", timeout=20), pool.up("busy", timeout=20))
            assert hung.process is not None
            engines = [m for m in hung.process.refresh() if m.pid != hung.pid]
            expect(len(engines) == 1, f"expected one engine child, found {engines}")
            first_root = hung.process.root
            streams = asyncio.gather(*(stream(busy.endpoint, busy.api_key) for _ in range(4)))
            os.kill(engines[0].pid, signal.SIGSTOP)
            stopped.append(engines[0])
            frozen = time.monotonic()

            def caught() -> bool:
                return any("engine hung" in e.message for e in hung.events)

            expect(await until(caught, 40, 0.05), "the stopped engine was not caught within 40 s")
            ctx.detect_s = time.monotonic() - frozen
            try:
                await hung.wait_ready(timeout=30)
            except (StartFailed, TimeoutError) as error:
                raise Broken(f"caught after {ctx.detect_s:.1f} s but not restarted: {error}") from None
            expect(hung.restarts >= 1 and hung.process is not None and hung.process.root != first_root,
                   "caught but not restarted")
            expect(not engines[0].alive(), "the stopped engine outlived the restart")
            chunks = await streams
            expect(chunks == [41] * 4, f"the busy streams were cut: {chunks} chunks of 41")
            expect(busy.restarts == 0 and not any("hung" in e.message for e in busy.events),
                   f"the busy engine was called hung: {[e.message for e in busy.events if 'hung' in e.message]}")
            ctx.notes.append(f"health_interval_s default ({pool.config.settings.health_interval_s:g} s), "
                             f"probe_timeout_s 1; 4 streams of 6 s on the busy engine ran to their end")
        finally:
            await pool.close()

    asyncio.run(scenario())


def case_shutdown_during_capacity_wait(ctx: Ctx) -> None:
    """7. SIGTERM to the daemon (and Pool.close) while a load waits for capacity: nothing new starts."""
    long_stream = {"FAKE_VLLM_TOKENS": "400", "FAKE_VLLM_TOKEN_S": "0.05"}
    config = ctx.config({"a": standin(env=long_stream), "b": standin()}, max_cpu_instances=1, eviction_wait_s=60)
    daemon = ctx.daemon(config)
    daemon.client.up("a")
    gateway = daemon.gateway()
    host, port = gateway.removeprefix("http://").rsplit(":", 1)
    busy = http.client.HTTPConnection(host, int(port), timeout=30)
    ctx.cleanups.append(busy.close)
    busy.request("POST", "/v1/chat/completions", body=json.dumps({"model": "a", "stream": True, "messages": []}),
                 headers={"Content-Type": "application/json"})
    response = busy.getresponse()
    expect(response.status == 200 and response.readline().startswith(b"data:"), "a's stream did not begin")
    answer: list[tuple[int, bytes]] = []
    waiter = threading.Thread(target=lambda: answer.append(completion(gateway, "b", timeout=60)), daemon=True)
    waiter.start()
    expect(wait_for(lambda: daemon.row("b")["in_flight"] == 1, 10), "b's request never reached the pool")
    expect(daemon.row("b")["state"] == "stopped" and daemon.row("a")["state"] == "ready",
           f"b did not wait for capacity: a {daemon.row('a')['state']}, b {daemon.row('b')['state']}")
    daemon.process.send_signal(signal.SIGTERM)
    terminated = time.monotonic()
    waiter.join(60)
    expect(answer, "b's request got no answer within 60 s of SIGTERM")
    ctx.detect_s = time.monotonic() - terminated
    status, body = answer[0]
    expect(status == 503, f"b's request got {status}, not 503: {body[:200]!r}")
    expect(daemon.stop() == 0, "the daemon did not exit cleanly")
    expect(not list((ctx.state_dir / "logs").glob("b.*.log")), "b was launched after shutdown began")
    expect(not list((ctx.state_dir / "instances").glob("*.json")), "a record was left after shutdown")

    pool_config = ctx.config({"a": standin(), "b": standin()}, name="pool.yaml", max_cpu_instances=1,
                             eviction_wait_s=30, state_dir=str(ctx.work / "pool-state"))

    async def scenario() -> None:
        pool = Pool(load_config(pool_config))
        try:
            await pool.up("a", timeout=20)
            async with pool.serving("a"):
                waiting = asyncio.ensure_future(pool.up("b", timeout=40))
                await asyncio.sleep(0.3)  # no event marks "waiting for capacity" from outside the pool
                expect(not waiting.done(), f"b did not wait for capacity: {waiting}")
                await pool.close()
            try:
                await asyncio.wait_for(waiting, 10)
            except PoolClosed:
                pass
            else:
                raise Broken("b was placed after Pool.close began")
            expect(pool.get("b") is None, "b was placed after Pool.close began")
        finally:
            await pool.close()

    asyncio.run(scenario())
    ctx.notes.append("daemon SIGTERM: b answered 503, never launched; Pool.close: b refused (PoolClosed)")


def case_escapee(ctx: Ctx) -> None:
    """8. An escapee made after ready (double fork, new session): gone after stop, counted in the proof."""
    config = ctx.config({"m": standin("escape_after_ready")}, stop_grace_s=0.5)

    async def scenario() -> None:
        pool = Pool(load_config(config))
        try:
            instance = await pool.up("m", timeout=20)
            assert instance.log_path is not None and instance.process is not None
            log = instance.log_path
            expect(await until(lambda: "escapee pid" in log.read_text(), 10), "the stand-in made no escapee")
            pid = int(log.read_text().split("escapee pid ")[1].split()[0])
            escapee = ProcessIdentity.of(pid)
            expect(escapee is not None and os.getsid(pid) != instance.process.sid, "the escapee did not escape")
            assert escapee is not None
            result = await pool.down("m")
            expect(not escapee.alive(), f"the escapee (pid {pid}) outlived the stop: {result.proof()}")
            expect(result.clean and result.processes_checked >= 2,
                   f"the proof does not count the escapee: {result.proof()}")
            ctx.notes.append(result.proof())
        finally:
            await pool.close()

    asyncio.run(scenario())


def billion_laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{n}: &a{n} [{','.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def case_bad_input(ctx: Ctx) -> None:
    """9. Bad input: unsafe aliases, an infinite grace, an alias bomb, non-UTF-8 bytes (each refused
    with a clear error); a wrong-typed state record (set aside, the daemon still starts)."""
    entry = standin()
    good = yaml.safe_dump({"bawt_vllm": ctx.settings()}, sort_keys=False)
    text_entry = "    type: vllm\n    model_id: standin/model\n    tool_support: none\n"
    bad: dict[str, tuple[bytes, str]] = {
        "alias ../x": (yaml.safe_dump({"bawt_vllm": ctx.settings(), "models": {"../x": entry}}).encode(),
                       "cannot be an alias"),
        "alias a/b": (yaml.safe_dump({"bawt_vllm": ctx.settings(), "models": {"a/b": entry}}).encode(),
                      "cannot be an alias"),
        'alias ""': (yaml.safe_dump({"bawt_vllm": ctx.settings(), "models": {"": entry}}).encode(),
                     "cannot be an alias"),
        "stop_grace_s: .inf": (yaml.safe_dump({"bawt_vllm": ctx.settings(stop_grace_s=float("inf")),
                                               "models": {"m": entry}}).encode(), "stop_grace_s"),
        "YAML alias bomb": ((billion_laughs() + good + "models:\n  m:\n" + text_entry).encode(), "expand too far"),
        "non-UTF-8 bytes": ((good + "models:\n  m:\n" + text_entry + "    description: caf").encode()
                            + b"\xe9 au lait\n", "not valid UTF-8"),
    }
    refused: list[str] = []
    for what, (data, says) in bad.items():
        path = ctx.work / f"bad-{len(refused)}.yaml"
        path.write_bytes(data)
        started = time.perf_counter()
        try:
            load_config(path)
        except ConfigError as error:
            took = time.perf_counter() - started
            message = str(error)
        else:
            raise Broken(f"{what}: load_config accepted it")
        expect(str(path) in message and says in message, f"{what}: the error does not say where and what: {message}")
        if what == "YAML alias bomb":
            expect(took < 0.5, f"the alias bomb took {took:.2f} s to refuse")
            ctx.notes.append(f"alias bomb (9**10 values in {len(data)} bytes) refused in {took * 1e3:.0f} ms")
        refusal = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "daemon", "--config", str(path)],
                                 capture_output=True, text=True, timeout=60, env=ctx.env())
        output = refusal.stdout + refusal.stderr
        expect(refusal.returncode != 0, f"{what}: the daemon started on it")
        expect(says in output and "Traceback" not in output, f"{what}: the daemon's refusal is not clear: {output}")
        refused.append(what)

    stranger = ctx.stranger("stranger named by a wrong-typed record")
    config = ctx.config({"m": entry})
    record = ctx.state_dir / "instances" / "m.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"alias": "m", "pid": str(stranger.pid), "create_time": 1, "pgid": stranger.pid,
                                  "sid": stranger.pid, "port": 1, "gpus": [], "log": None, "served_name": "m",
                                  "started_at": 0}))
    daemon = ctx.daemon(config)
    expect(daemon.row("m")["state"] == "stopped", "the daemon adopted a wrong-typed record")
    expect(not record.exists() and record.with_suffix(".corrupt").exists(), "the wrong-typed record was not set aside")
    expect(daemon.stop() == 0, "the daemon did not exit cleanly")
    ctx.notes.append(f"{len(refused)} configs refused by load_config and the daemon; wrong-typed record set aside")


GATEWAY_DEADLINE_S = 1.0
CONTROL_BODY_S = 0.5
ESCAPES = ["/v1/../metrics", "/v1/%2e%2e/metrics", "/v1/chat/../../metrics", "/v1/..%2fmetrics", "/v1/./../metrics"]


def case_gateway_and_control_edges(ctx: Ctx) -> None:
    """10. Gateway and control edges: paths out of /v1, an over-size body, half-written requests,
    malformed JSON on the control socket, a busy gateway port."""
    config = ctx.config({"m": standin()})
    daemon = ctx.daemon(config, tune=[("front", "READ_DEADLINE_S", GATEWAY_DEADLINE_S),
                                      ("control", "BODY_READ_TIMEOUT_S", CONTROL_BODY_S)])
    daemon.client.up("m")
    port = int(daemon.gateway().rsplit(":", 1)[1])
    gateway = ("127.0.0.1", port)
    problems: list[str] = []

    for target in ESCAPES:
        reply = exchange(gateway, request_head("GET", target))
        if b"vllm:" in reply.body:
            problems.append(f"{target} reached the backend's /metrics")
        elif problem := openai_error_problem(reply, 404, "unknown_url"):
            problems.append(f"{target}: {problem}")

    big = 33 * MiB
    declared = exchange(gateway, iter([request_head("POST", "/v1/completions", length=big), b"x" * MiB]))
    if problem := openai_error_problem(declared, 413, "request_too_large"):
        problems.append(f"declared over-size body: {problem}")

    def chunked() -> Iterator[bytes]:
        yield request_head("POST", "/v1/completions", extra="Transfer-Encoding: chunked\r\n")
        piece = b'{"model": "m", "prompt": "' + b"x" * MiB
        for _ in range(34):
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        yield b"0\r\n\r\n"

    if problem := openai_error_problem(exchange(gateway, chunked()), 413, "request_too_large"):
        problems.append(f"chunked over-size body: {problem}")

    limit = GATEWAY_DEADLINE_S * 5 + 2
    head_closed = [closed_after(port, data, limit) for data in
                   (b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\nContent-Ty", b"GET /v1/mod", b"")]
    if any(seconds is None for seconds in head_closed):
        problems.append(f"a half-written request head was still open after {limit:g} s: {head_closed}")
    else:
        ctx.detect_s = max(s for s in head_closed if s is not None)
    started = time.monotonic()
    body = exchange(gateway, request_head("POST", "/v1/completions", length=100) + b'{"model": "m"', timeout=limit)
    if problem := openai_error_problem(body, 408, "request_timeout"):
        problems.append(f"a half-written body: {problem}")
    elif time.monotonic() - started > limit:
        problems.append(f"a half-written body was answered after {time.monotonic() - started:.1f} s")

    control = str(daemon.socket)
    for what, data in {"malformed JSON": b"{not json", "non-UTF-8 JSON": b"\xff\xfe"}.items():
        reply = exchange(control, request_head("POST", "/up", length=len(data)) + data)
        try:
            said = reply.json().get("error", "") if reply.status == 400 else ""
        except ValueError:
            said = ""
        if not said:
            problems.append(f"control {what}: {reply.status} {reply.body[:200]!r}, not a 400 JSON error")
    reply = exchange(control, request_head("POST", "/up", length=100) + b'{"mod', timeout=CONTROL_BODY_S * 5 + 2)
    if reply.status != 408:
        problems.append(f"control half-sent body: {reply.status} {reply.body[:200]!r}, not 408")
    if daemon.row("m")["state"] != "ready":
        problems.append(f"the model is {daemon.row('m')['state']} after the edges, not ready")
    expect(daemon.stop() == 0, "the daemon did not exit cleanly")

    # A busy gateway port: one clear error line; what a previous daemon left is neither stopped nor adopted.
    blocker = socket.socket()
    ctx.cleanups.append(blocker.close)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    left_config = ctx.config({"m": standin()}, name="left.yaml", gateway_port=taken,
                             state_dir=str(ctx.work / "left-state"), port_range=[ctx.port(10), ctx.port(14)])
    ctx.cleanups.append(lambda: stop_recorded(left_config))
    _, survivors = abandon(left_config, "m")
    record = ctx.work / "left-state" / "instances" / "m.json"
    recorded = record.read_bytes()
    started = time.monotonic()
    second = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "daemon", "--config", str(left_config)],
                            capture_output=True, text=True, timeout=60, env=ctx.env())
    output = (second.stdout + second.stderr).strip()
    errors = [line for line in output.splitlines() if "ERROR" in line or line.startswith("bawt-vllm:")]
    if second.returncode == 0 or "Traceback" in output or len(errors) != 1 or str(taken) not in errors[0]:
        problems.append(f"a busy gateway port: exit {second.returncode}, not one clear error line: {output[-600:]}")
    if [m for m in survivors if not m.alive()] or record.read_bytes() != recorded:
        problems.append("a daemon that could not bind its gateway touched what a previous one left")
    expect(not problems, "; ".join(problems))
    ctx.notes.append(f"{len(ESCAPES)} dot paths 404, 413 declared and chunked, heads closed after "
                     f"{', '.join(f'{s:.1f}' for s in head_closed if s is not None)} s (deadline "
                     f"{GATEWAY_DEADLINE_S:g} s), body 408, control 400/408")
    ctx.notes.append(f"busy gateway port, refused in {time.monotonic() - started:.1f} s: "
                     f"{errors[0].split('not started: ')[-1][:110]}")


def case_adopt_with_api_key_env(ctx: Ctx) -> None:
    """11. A model with api_key_env left running by a supervisor that died is adopted by the next one."""
    key = secrets.token_urlsafe(16)
    config = ctx.config({"m": standin(api_key_env="FAULTS_MODEL_KEY")})
    os.environ["FAULTS_MODEL_KEY"] = key
    ctx.cleanups.append(lambda: os.environ.pop("FAULTS_MODEL_KEY", None))
    ctx.cleanups.append(lambda: stop_recorded(config))  # runs after the daemon's own stop
    root, tree = abandon(config, "m")
    daemon = ctx.daemon(config, env={"FAULTS_MODEL_KEY": key})
    row = daemon.row("m")
    expect(row["state"] == "ready" and row.get("pid") == root.pid,
           f"not adopted: {row['state']}, pid {row.get('pid')} (the survivor was {root.pid}): {daemon.output()[-400:]}")
    expect(all(member.alive() for member in tree), "a member of the adopted tree was stopped")
    expect("adopted m" in daemon.output(), "the daemon's log does not say it adopted m")
    status, body = completion(daemon.gateway(), "m")
    expect(status == 200, f"the adopted model does not answer through the gateway: {status} {body[:200]!r}")
    endpoint = f"http://127.0.0.1:{row['port']}"
    without, _ = completion(endpoint, "m")
    with_key, _ = completion(endpoint, "m", headers={"Authorization": f"Bearer {key}"})
    expect(without == 401 and with_key == 200, f"the backend's key: {without} without, {with_key} with")
    expect(daemon.stop() == 0, "the daemon did not exit cleanly")
    expect(not [m for m in tree if m.alive()], "the adopted tree outlived the daemon's shutdown")
    ctx.notes.append(f"pid {root.pid} adopted (same start time), answers with its own key, stopped at shutdown")


def case_supervisor_sigkilled(ctx: Ctx) -> None:
    """12. The daemon SIGKILLed: its vLLM tree goes (parent-death signal), nothing orphaned."""
    config = ctx.config({"m": standin("engine_child")})
    daemon = ctx.daemon(config)
    daemon.client.up("m")
    supervisor = ProcessIdentity.of(daemon.process.pid)
    tree = sorted(tagged(ctx.tag) - {supervisor})
    expect(len(tree) >= 2, f"expected the server and its engine, found {tree}")
    killed = time.monotonic()
    daemon.process.kill()
    daemon.process.wait()
    gone = wait_for(lambda: not [m for m in tree if m.alive()], 15, 0.01)
    expect(gone, f"the tree outlived its SIGKILLed supervisor: {[m.pid for m in tree if m.alive()]}")
    ctx.detect_s = time.monotonic() - killed
    ctx.notes.append(f"{len(tree)} processes (server and engine) gone after the daemon's SIGKILL")


def case_request_during_recovery(ctx: Ctx) -> None:
    """13. A request while the next supervisor is still adopting: it joins the survivor, no second server."""
    config = ctx.config({"m": standin()})
    ctx.cleanups.append(lambda: stop_recorded(config))
    root, _tree = abandon(config, "m")

    async def next_supervisor() -> tuple[int | None, list[int], list[str]]:
        pool = Pool(load_config(config))
        os.kill(root.pid, signal.SIGSTOP)  # a slow adoption check widens the window
        asyncio.get_running_loop().call_later(1.0, os.kill, root.pid, signal.SIGCONT)
        recovering = asyncio.ensure_future(pool.recover(adopt=True))
        await asyncio.sleep(0.2)
        joined = await pool.up("m", timeout=30)
        report = await recovering
        try:
            return joined.pid, list(joined.launched_pids), report.adopted
        finally:
            await pool.close()

    joined_pid, launched, adopted = asyncio.run(next_supervisor())
    expect(adopted == ["m"], f"the survivor was not adopted: {adopted}")
    expect(joined_pid == root.pid and not launched,
           f"the request started a second server (pid {joined_pid}, launched {launched}; survivor {root.pid})")
    ctx.notes.append(f"the request waited for the adoption and joined pid {root.pid}; nothing launched")


CASES: list[tuple[str, Callable[[Ctx], None]]] = [
    ("stale record names a live stranger", case_stale_record),
    ("load and stop silent past the read timeout", case_silent_waits),
    ("foreign server on our port during the load", case_foreign_server),
    ("reload while requests arrive", case_reload_under_requests),
    ("reloads that would lose track", case_reload_refusals),
    ("engine SIGSTOPped; busy engine streaming", case_hung_and_busy_engine),
    ("SIGTERM/close during a capacity wait", case_shutdown_during_capacity_wait),
    ("escapee after ready", case_escapee),
    ("bad config input, wrong-typed record", case_bad_input),
    ("gateway and control edges, busy port", case_gateway_and_control_edges),
    ("api_key_env model adopted", case_adopt_with_api_key_env),
    ("supervisor SIGKILLed", case_supervisor_sigkilled),
    ("request while the next supervisor adopts", case_request_during_recovery),
]


# -- running them -------------------------------------------------------------------------------
@dataclass
class Row:
    number: int
    title: str
    why: str | None
    detect_s: float | None
    left: list[ProcessIdentity]
    seen: int
    harmed: list[str]
    foreign: int
    notes: list[str]
    took_s: float

    @property
    def survived(self) -> bool:
        return self.why is None and not self.left and not self.harmed


def run_case(number: int, title: str, case: Callable[[Ctx], None], base_port: int, verbose: bool) -> Row:
    ctx = Ctx(number, base_port)
    os.environ[CASE_ENV] = ctx.tag
    sampler = Sampler(ctx.tag)
    started = time.monotonic()
    why: str | None = None
    try:
        case(ctx)
    except Broken as broken:
        why = str(broken)
    except Exception as error:
        why = f"{error.__class__.__name__}: {error}"
        if verbose:
            traceback.print_exc()
    finally:
        for cleanup in reversed(ctx.cleanups):
            try:
                cleanup()
            except Exception as error:
                why = why or f"cleanup: {error.__class__.__name__}: {error}"
        os.environ.pop(CASE_ENV, None)
    took = time.monotonic() - started
    left = sampler.leftovers()
    harmed = [harm for foreign in ctx.foreign if (harm := foreign.harm())]
    for identity in left:  # only what carries this case's tag, checked by pid + start time
        if (process := identity.process()) is not None:
            with contextlib.suppress(psutil.Error):
                process.kill()
    for identity in sampler.seen:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(identity.pid, os.WNOHANG)
    for foreign in ctx.foreign:
        foreign.close()
    if why is None and not left and not harmed:
        shutil.rmtree(ctx.work, ignore_errors=True)
    elif why is not None:
        why += f" (files: {ctx.work})"
    return Row(number, title, why, ctx.detect_s, left, len(sampler.seen), harmed, len(ctx.foreign), ctx.notes, took)


def print_row(row: Row) -> None:
    outcome = "survived" if row.survived else "BROKEN"
    detect = "-" if row.detect_s is None else f"{row.detect_s:.2f}"
    print(f"{row.number:>2}  {row.title:<44} {outcome:<8} {detect:>7} {len(row.left):>3}/{row.seen:<3}"
          f" {len(row.harmed):>3}/{row.foreign:<3} {row.took_s:>5.1f}", flush=True)
    if row.why:
        print(f"      why: {row.why}")
    if row.left:
        print(f"      left: {', '.join(f'pid {m.pid}' for m in row.left)}")
    for harm in row.harmed:
        print(f"      foreign signalled: {harm}")
    for note in row.notes:
        print(f"      {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated case numbers (default: all)")
    parser.add_argument("--verbose", action="store_true", help="tracebacks of unexpected errors")
    args = parser.parse_args()
    chosen = {int(n) for n in args.only.split(",")} if args.only else set(range(1, len(CASES) + 1))
    base_port = 10000 + (os.getpid() % 40) * (WINDOW * (len(CASES) + 1))  # below the tests' windows (20000+)
    started = time.monotonic()
    print(f"faults against the stand-in vLLM ({STANDIN.relative_to(STANDIN.parents[2])}), "
          f"{len(chosen)} case(s), {os.cpu_count()} CPUs")
    print(f"{'#':>2}  {'case':<44} {'outcome':<8} {'detect s':>7} {'left':>7} {'foreign':>7} {'took s':>6}")
    rows = []
    for number, (title, case) in enumerate(CASES, start=1):
        if number in chosen:
            rows.append(run_case(number, title, case, base_port, args.verbose))
            print_row(rows[-1])
    orphans = sum(len(row.left) for row in rows)
    signalled = sum(len(row.harmed) for row in rows)
    survived = sum(row.survived for row in rows)
    print(f"run time {time.monotonic() - started:.1f} s")
    print(f"{len(rows)} faults, {survived} survived, {orphans} orphans, {signalled} foreign processes signalled")
    return 0 if survived == len(rows) and not orphans and not signalled else 1


if __name__ == "__main__":
    sys.exit(main())
