"""`DaemonClient`: the Python API over the daemon's control socket (what the CLI uses).

Standard library only, so `bawt-vllm ps` does not pay for aiohttp or the openai SDK.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

DAEMON_START_TIMEOUT_S = 30.0


class DaemonError(RuntimeError):
    """The daemon answered with an error."""


class DaemonNotRunning(DaemonError):
    """Nothing answers on the control socket."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DaemonClient:
    def __init__(self, socket_path: Path, *, timeout: float | None = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    # -- plumbing -----------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: float | None = None) -> http.client.HTTPResponse:
        connection = _UnixConnection(self.socket_path, timeout if timeout is not None else self.timeout)
        try:
            payload = None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as error:
            connection.close()
            raise DaemonNotRunning(f"no bawt-vllm daemon answers on {self.socket_path}") from error
        if response.status >= 400:
            text = response.read().decode("utf-8", "replace")
            connection.close()
            try:
                message = json.loads(text).get("error", text)
            except ValueError:
                message = text
            raise DaemonError(str(message))
        return response

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: float | None = None) -> dict[str, Any]:
        response = self._request(method, path, body, timeout)
        try:
            return json.loads(response.read())
        finally:
            response.close()

    # -- API ----------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            self._json("GET", "/status", timeout=2.0)
            return True
        except (DaemonNotRunning, OSError):
            return False

    def status(self) -> dict[str, Any]:
        return self._json("GET", "/status")

    def up(self, model: str, on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Load model; on_event sees each load event; returns the final result line."""
        response = self._request("POST", "/up", {"model": model}, timeout=None)
        try:
            for raw in response:
                message = json.loads(raw)
                if message.get("done"):
                    if not message.get("ok"):
                        raise DaemonError(message.get("error", "load failed"))
                    return message
                if on_event is not None:
                    on_event(message["event"])
        finally:
            response.close()
        raise DaemonError("the daemon closed the connection before the load finished")

    def down(self, model: str | None = None, *, all_models: bool = False) -> list[dict[str, Any]]:
        body = {"all": True} if all_models else {"model": model}
        return self._json("POST", "/down", body, timeout=None)["results"]

    def logs(self, model: str, *, start: int | None = None, lines: int = 200, follow: bool = False) -> Iterator[str]:
        query: dict[str, Any] = {"model": model, "lines": lines, "follow": int(follow)}
        if start is not None:
            query["start"] = start
        response = self._request("GET", f"/logs?{urlencode(query)}", timeout=None if follow else self.timeout)
        try:
            while chunk := response.read1(65536):
                yield chunk.decode("utf-8", "replace")
        finally:
            response.close()

    def gpus(self) -> list[dict[str, Any]]:
        return self._json("GET", "/gpus")["gpus"]

    def events(self, model: str) -> dict[str, Any]:
        return self._json("GET", f"/events?{urlencode({'model': model})}")

    def reload(self) -> list[str]:
        return self._json("POST", "/reload")["changes"]


def start_daemon(config_path: Path, socket_path: Path, log_path: Path,
                 timeout_s: float = DAEMON_START_TIMEOUT_S) -> int:
    """Start `bawt-vllm daemon` in the background and wait until it answers; its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bawt_vllm.supervisor.cli", "daemon", "--config", str(config_path)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = DaemonClient(socket_path)
    deadline = time.monotonic() + timeout_s
    while not client.ping():
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-15:]
            raise DaemonError(f"the daemon exited with code {process.returncode}:\n" + "\n".join(tail))
        if time.monotonic() > deadline:
            raise DaemonError(f"the daemon did not answer within {timeout_s:.0f}s; see {log_path}")
        time.sleep(0.05)
    return process.pid
