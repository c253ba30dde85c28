"""The control client decides on error codes, never on wording (supervisor/control/client.py, protocol.py).

A stand-in control server on a Unix socket answers as a daemon that read an older models.yaml
would: `unknown_model` (in words of its own) until it is told to reload.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest
from bawt_vllm.supervisor.control.client import DaemonClient, DaemonError
from bawt_vllm.supervisor.control.protocol import DOWN, RELOAD, UP, ErrorCode, done_error, error_body, up_done


class StaleDaemon(BaseHTTPRequestHandler):
    """Knows model "new" only after a reload; its error texts never say "unknown model"."""

    reloaded = False
    calls: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: dict[str, Any], *, lines: bool = False) -> None:
        body = (json.dumps(payload) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-ndjson" if lines else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        type(self).calls.append(self.path)
        if self.path == RELOAD:
            type(self).reloaded = True
            self._send(200, {"changes": ["new: added"]})
        elif self.path == UP and not type(self).reloaded:
            self._send(404, error_body(f"no entry called {request['model']!r} here", ErrorCode.UNKNOWN_MODEL))
        elif self.path == UP:
            self._send(200, dict(up_done({"alias": request["model"]}, "http://127.0.0.1:1/v1", "")), lines=True)
        elif self.path == DOWN:
            self._send(200, done_error("the tree survived SIGKILL", ErrorCode.STOP_FAILED), lines=True)


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def stale_daemon(tmp_path: Path) -> Iterator[DaemonClient]:
    StaleDaemon.reloaded = False
    StaleDaemon.calls = []
    socket_path = tmp_path / "control.sock"
    server = UnixHTTPServer(str(socket_path), StaleDaemon)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield DaemonClient(socket_path, timeout=5.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_an_unknown_model_is_an_error_code_not_a_wording(stale_daemon: DaemonClient) -> None:
    with pytest.raises(DaemonError) as error:
        stale_daemon.up("new")
    assert error.value.code is ErrorCode.UNKNOWN_MODEL
    assert StaleDaemon.calls == [UP], "without the policy, nothing is reloaded"


def test_a_daemon_behind_models_yaml_is_reloaded_once_and_asked_again(stale_daemon: DaemonClient) -> None:
    heard: list[list[str]] = []
    result = stale_daemon.up("new", reload_if_unknown=heard.append)
    assert result["model"] == {"alias": "new"}
    assert heard == [["new: added"]]
    assert StaleDaemon.calls == [UP, RELOAD, UP]


def test_a_failed_stream_carries_its_code(stale_daemon: DaemonClient) -> None:
    with pytest.raises(DaemonError, match="survived SIGKILL") as error:
        stale_daemon.down("new")
    assert error.value.code is ErrorCode.STOP_FAILED
