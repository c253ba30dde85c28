"""`DaemonClient`: the Python API over the daemon's control socket (the CLI and VLLMClient use it).

The one way to reach a daemon: `DaemonClient.for_state_dir` / `for_config_file` find its socket,
`ensure_running` starts one if none answers, `up(..., reload_if_unknown=True)` catches a daemon
up with a models.yaml edited after it started. Standard library only, so `bawt-vllm ps` does not
pay for aiohttp or the openai SDK.
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
from typing import Any, Final, cast
from urllib.parse import urlencode

from . import protocol
from .protocol import (
    DOWN,
    EVENTS,
    GPUS,
    LOGS,
    RELOAD,
    STATUS,
    UP,
    DownDone,
    DownRequest,
    ErrorCode,
    LogsRequest,
    StopProof,
    UpDone,
    UpRequest,
    error_code,
)

DAEMON_START_TIMEOUT_S = 30.0
# The daemon sends a line at least every protocol.HEARTBEAT_S (5 s) while it loads or stops a
# model; silence for three heartbeats means it is stopped or hung, never that the wait is long.
STREAM_READ_TIMEOUT_S = protocol.STREAM_READ_TIMEOUT_S


class _Timeout(enum.Enum):
    CLIENT_DEFAULT = "the client's own timeout"


CLIENT_DEFAULT: Final = _Timeout.CLIENT_DEFAULT
NO_TIMEOUT: Final = None
"""No socket timeout at all: for a stream that may rightly stay silent (`logs --follow`)."""
Timeout = float | None | _Timeout


class DaemonError(RuntimeError):
    """The daemon answered with an error; `code` says which kind (protocol.ErrorCode)."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.code = code


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

    # -- finding the daemon -----------------------------------------------------------------
    @classmethod
    def for_state_dir(cls, state_dir: Path) -> DaemonClient:
        """The client of the daemon that owns state_dir."""
        from ..config.paths import control_socket

        return cls(control_socket(state_dir))

    @classmethod
    def for_config_file(cls, config_path: Path) -> DaemonClient:
        """The client of the daemon of a models.yaml, found by reading only its state_dir (fast: no
        validation of the whole file; a file the quick reader cannot read raises its error)."""
        from ..config.paths import quick_state_dir

        return cls.for_state_dir(quick_state_dir(config_path))

    @property
    def state_dir(self) -> Path:
        return self.socket_path.parent

    def ensure_running(self, config_path: Path, on_start: Callable[[Path], None] | None = None) -> None:
        """Start a daemon for config_path unless one answers; on_start hears of it (with its log's path)."""
        if self.ping():
            return
        log_path = self.state_dir / "daemon.log"
        if on_start is not None:
            on_start(log_path)
        start_daemon(config_path, self.socket_path, log_path)

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
                payload = json.loads(text)
            except ValueError:
                payload = None
            message = payload.get("error", text) if isinstance(payload, dict) else text
            raise DaemonError(str(message), error_code(payload))
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
                        raise DaemonError(message.get("error", f"{what} failed"), error_code(message))
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
            self._json("GET", STATUS, timeout=2.0)
            return True
        except (DaemonNotRunning, DaemonUnresponsive, OSError):
            return False

    def status(self) -> dict[str, Any]:
        return self._json("GET", STATUS)

    def up(self, model: str, on_event: Callable[[dict[str, Any]], None] | None = None,
           on_waiting: Callable[[dict[str, Any]], None] | None = None, *,
           reload_if_unknown: Callable[[list[str]], None] | None = None) -> UpDone:
        """Load model; on_event sees each load event, on_waiting each heartbeat (state, stage,
        elapsed_s) while nothing else happens; returns the final result line.

        With reload_if_unknown, a daemon that does not know model (it read an older models.yaml)
        reloads its config once, the callback hears what changed, and the load is asked again.
        """
        request = UpRequest(model=model)
        try:
            return cast(UpDone, self._stream(UP, dict(request), on_event, on_waiting, "load"))
        except DaemonError as error:
            if error.code is not ErrorCode.UNKNOWN_MODEL or reload_if_unknown is None:
                raise
        reload_if_unknown(self.reload())
        return cast(UpDone, self._stream(UP, dict(request), on_event, on_waiting, "load"))

    def down(self, model: str | None = None, *, all_models: bool = False,
             on_event: Callable[[dict[str, Any]], None] | None = None,
             on_waiting: Callable[[dict[str, Any]], None] | None = None) -> list[StopProof]:
        """Stop model (or every model); returns each stop's proof once the processes are gone."""
        request = DownRequest(all=True) if all_models else DownRequest(model=model or "")
        done = cast(DownDone, self._stream(DOWN, dict(request), on_event, on_waiting, "stop"))
        return done["results"]

    def logs(self, model: str, *, start: int | None = None, lines: int = 200, follow: bool = False) -> Iterator[str]:
        query = LogsRequest(model, lines=lines, start=start, follow=follow).query()
        response = self._request("GET", f"{LOGS}?{query}", timeout=NO_TIMEOUT if follow else CLIENT_DEFAULT)
        try:
            while chunk := response.read1(65536):
                yield chunk.decode("utf-8", "replace")
        finally:
            response.close()

    def gpus(self) -> list[dict[str, Any]]:
        return self._json("GET", GPUS)["gpus"]

    def events(self, model: str) -> dict[str, Any]:
        return self._json("GET", f"{EVENTS}?{urlencode({'model': model})}")

    def reload(self) -> list[str]:
        return self._json("POST", RELOAD)["changes"]


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
