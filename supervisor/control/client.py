"""`DaemonClient`: the Python API over the daemon's control socket (what the CLI uses).

Standard library only, so `bawt-vllm ps` does not pay for aiohttp or the openai SDK.
"""

from __future__ import annotations

import enum
import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

DAEMON_START_TIMEOUT_S = 30.0
# The daemon sends a line at least every control.HEARTBEAT_S (5 s) while it loads or stops a
# model; silence for three heartbeats means it is stopped or hung, never that the wait is long.
STREAM_READ_TIMEOUT_S = 15.0


class _Timeout(enum.Enum):
    CLIENT_DEFAULT = "the client's own timeout"


CLIENT_DEFAULT: Final = _Timeout.CLIENT_DEFAULT
NO_TIMEOUT: Final = None
"""No socket timeout at all: for a stream that may rightly stay silent (`logs --follow`)."""
Timeout = float | None | _Timeout


class DaemonError(RuntimeError):
    """The daemon answered with an error."""


class DaemonNotRunning(DaemonError):
    """Nothing answers on the control socket."""


class DaemonUnresponsive(DaemonError):
    """The daemon accepted the connection but sent nothing within the read timeout."""


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
    def _seconds(self, timeout: Timeout) -> float | None:
        return self.timeout if timeout is CLIENT_DEFAULT else timeout

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout: Timeout = CLIENT_DEFAULT) -> http.client.HTTPResponse:
        """Send one request; timeout bounds each socket read (None: no bound at all)."""
        seconds = self._seconds(timeout)
        connection = _UnixConnection(self.socket_path, seconds)
        try:
            payload = None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
        except (FileNotFoundError, ConnectionRefusedError) as error:
            connection.close()
            raise DaemonNotRunning(f"no bawt-vllm daemon answers on {self.socket_path}") from error
        except TimeoutError as error:
            connection.close()
            raise self._unresponsive(seconds) from error
        if response.status >= 400:
            text = response.read().decode("utf-8", "replace")
            connection.close()
            try:
                message = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                message = text
            raise DaemonError(str(message))
        return response

    def _unresponsive(self, seconds: float | None) -> DaemonUnresponsive:
        return DaemonUnresponsive(f"the daemon on {self.socket_path} sent nothing for {seconds:g}s "
                                  "(it is stopped or hung; `bawt-vllm status` or its log may tell)")

    def _json(self, method: str, path: str, body: dict[str, Any] | None = None,
              timeout: Timeout = CLIENT_DEFAULT) -> dict[str, Any]:
        response = self._request(method, path, body, timeout)
        try:
            return json.loads(response.read())
        except TimeoutError as error:
            raise self._unresponsive(self._seconds(timeout)) from error
        finally:
            response.close()

    def _stream(self, path: str, body: dict[str, Any], on_event: Callable[[dict[str, Any]], None] | None,
                on_waiting: Callable[[dict[str, Any]], None] | None, what: str) -> dict[str, Any]:
        """POST and read the JSON lines the daemon streams back (load or stop events, heartbeats),
        until the final one (`done`), which is returned; a failed one raises DaemonError.

        Each read waits at most STREAM_READ_TIMEOUT_S: the daemon sends a heartbeat more often
        than that while it works, so only a dead or frozen daemon ends the wait early."""
        read_timeout = STREAM_READ_TIMEOUT_S
        response = self._request("POST", path, body, timeout=read_timeout)
        try:
            for message in _json_lines(response):
                if message.get("done") or "results" in message:  # "results": a daemon from before streaming
                    if not message.get("ok", True):
                        raise DaemonError(message.get("error", f"{what} failed"))
                    return message
                if "event" in message and on_event is not None:
                    on_event(message["event"])
                if "waiting" in message and on_waiting is not None:
                    on_waiting(message["waiting"])
        except TimeoutError as error:
            raise self._unresponsive(read_timeout) from error
        except (OSError, http.client.HTTPException) as error:
            raise DaemonError(f"the connection to the daemon broke before the {what} finished: {error}") from error
        finally:
            response.close()
        raise DaemonError(f"the daemon closed the connection before the {what} finished")

    # -- API ----------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            self._json("GET", "/status", timeout=2.0)
            return True
        except (DaemonNotRunning, DaemonUnresponsive, OSError):
            return False

    def status(self) -> dict[str, Any]:
        return self._json("GET", "/status")

    def up(self, model: str, on_event: Callable[[dict[str, Any]], None] | None = None,
           on_waiting: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Load model; on_event sees each load event, on_waiting each heartbeat (state, stage,
        elapsed_s) while nothing else happens; returns the final result line."""
        return self._stream("/up", {"model": model}, on_event, on_waiting, "load")

    def down(self, model: str | None = None, *, all_models: bool = False,
             on_event: Callable[[dict[str, Any]], None] | None = None,
             on_waiting: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Stop model (or every model); returns each stop's proof once the processes are gone."""
        body: dict[str, Any] = {"all": True} if all_models else {"model": model}
        return self._stream("/down", body, on_event, on_waiting, "stop")["results"]

    def logs(self, model: str, *, start: int | None = None, lines: int = 200, follow: bool = False) -> Iterator[str]:
        query: dict[str, Any] = {"model": model, "lines": lines, "follow": int(follow)}
        if start is not None:
            query["start"] = start
        response = self._request("GET", f"/logs?{urlencode(query)}", timeout=NO_TIMEOUT if follow else CLIENT_DEFAULT)
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


def _json_lines(response: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    for raw in response:
        if not raw.strip():
            continue
        try:
            message = json.loads(raw)
        except ValueError:
            raise DaemonError(f"the daemon sent a line that is not JSON: {raw[:200]!r}") from None
        if isinstance(message, dict):
            yield message


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
