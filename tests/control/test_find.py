"""Finding the daemon (supervisor/control/client.py): a state dir's own, else the system service's
socket; a daemon is started (in the state dir) only when none answers at all; and the waits of
`daemon stop` read a zombie as gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from bawt_vllm.supervisor.control import client as client_module
from bawt_vllm.supervisor.control.client import DaemonClient, DaemonForbidden, pid_alive
from helpers import wait_until
from test_client import UnixHTTPServer

Serve = Callable[[Path], None]


class Status(BaseHTTPRequestHandler):
    """Answers GET /status like a daemon with no models."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"daemon": {"pid": 1}, "models": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve(path): a stand-in daemon answering /status on path until the test ends."""
    servers: list[UnixHTTPServer] = []

    def start(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        server = UnixHTTPServer(str(path), Status)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the state dir's socket, the system socket), the latter through $BAWT_VLLM_SYSTEM_SOCKET."""
    system = tmp_path / "run" / "control.sock"
    monkeypatch.setenv("BAWT_VLLM_SYSTEM_SOCKET", str(system))
    return tmp_path / "state" / "control.sock", system


def test_the_state_dirs_own_daemon_comes_first(tmp_path: Path, sockets: tuple[Path, Path], serve: Serve) -> None:
    own, system = sockets
    serve(own)
    serve(system)
    client = DaemonClient.for_state_dir(tmp_path / "state")
    assert client.socket_path == own and client.ping()


def test_without_one_the_system_daemon_is_found(tmp_path: Path, sockets: tuple[Path, Path], serve: Serve) -> None:
    own, system = sockets
    own.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(own))  # a socket file nobody listens on: a daemon that died
    stale.close()
    serve(system)
    client = DaemonClient.for_state_dir(tmp_path / "state")
    assert client.socket_path == system and client.ping()
    assert client.state_dir == tmp_path / "state"  # where a daemon of its own would be started, and log


def test_with_neither_the_state_dirs_socket_says_not_running(tmp_path: Path, sockets: tuple[Path, Path]) -> None:
    client = DaemonClient.for_state_dir(tmp_path / "state")
    assert client.socket_path == sockets[0] and not client.ping()


def test_a_daemon_is_started_only_when_none_answers_at_all(tmp_path: Path, sockets: tuple[Path, Path], serve: Serve,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    own, system = sockets
    started: list[Path] = []
    monkeypatch.setattr(client_module, "start_daemon", lambda config, path, log: started.append(path) or 1)
    serve(system)
    DaemonClient.for_state_dir(tmp_path / "state").ensure_running(tmp_path / "models.yaml")
    assert started == []  # the system daemon answers: it is used
    gone = DaemonClient(system, home=own)  # found a moment ago, gone by now
    system.unlink()
    heard: list[Path] = []
    gone.ensure_running(tmp_path / "models.yaml", on_start=heard.append)
    assert started == [own] and gone.socket_path == own
    assert heard == [tmp_path / "state" / "daemon.log"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may connect to any socket")
def test_a_socket_of_another_user_is_found_and_says_so(tmp_path: Path, sockets: tuple[Path, Path],
                                                       serve: Serve) -> None:
    _own, system = sockets
    serve(system)
    system.chmod(0o000)
    client = DaemonClient.for_state_dir(tmp_path / "state")
    assert client.socket_path == system
    with pytest.raises(DaemonForbidden, match="belongs to another user"):
        client.status()


def test_a_zombie_is_gone_and_a_running_process_is_not() -> None:
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert wait_until(lambda: not pid_alive(child.pid), 30)  # exited, not reaped yet: a zombie
        assert Path(f"/proc/{child.pid}").exists()
    finally:
        child.wait()
    assert not pid_alive(child.pid)


def test_wait_gone_waits_for_the_socket_and_the_process(tmp_path: Path, serve: Serve) -> None:
    path = tmp_path / "control.sock"
    serve(path)
    client = DaemonClient(path)
    assert not client.wait_gone(None, timeout_s=0.2)
    assert not client.wait_gone(os.getpid(), timeout_s=0.2)
    path.unlink()
    assert client.wait_gone(None, timeout_s=5)
