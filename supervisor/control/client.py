"""`DaemonClient`: the Python API over the daemon's control socket (the CLI and VLLMClient use it).

The one way to reach a daemon: `DaemonClient.for_state_dir` / `for_config_file` find its socket
(`find`: the daemon of that state dir, else the system service's in /run/bawt-vllm), `ensure_running`
starts one if none answers at all, `up(..., reload_if_unknown=True)` catches a daemon up with a
models.yaml edited after it started, `stop_daemon` + `wait_gone` end it. Standard library only,
so `bawt-vllm ps` does not pay for aiohttp or the openai SDK.
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
    SHUTDOWN,
    STATUS,
    UP,
    DownDone,
    DownRequest,
    ErrorCode,
    LogsRequest,
    ShutdownDone,
    StopProof,
    UpDone,
    UpRequest,
    error_code,
)

DAEMON_START_TIMEOUT_S = 30.0
DAEMON_EXIT_TIMEOUT_S = 60.0
"""After `daemon stop` has stopped every model, how long the daemon may take to close its sockets and exit."""
CONNECT_PROBE_TIMEOUT_S = 1.0
DAEMON_LOG_NAME = "daemon.log"  # what the daemon logs, written (and rotated) by the daemon itself
DAEMON_OUTPUT_NAME = "daemon.out"  # its raw stdout and stderr: what it printed before (or instead of) logging
DAEMON_OUTPUT_MAX_BYTES = 1024 * 1024  # daemon.out is started afresh when a start finds it bigger
FAILURE_TAIL_LINES = 15
# A background daemon is a user daemon: it binds its socket where the CLI waits (not in a
# systemd unit's $RUNTIME_DIRECTORY the CLI may run under) and does not talk to that unit's manager.
_NOT_INHERITED = ("RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "JOURNAL_STREAM")
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


class DaemonForbidden(DaemonError):
    """A daemon listens, but its socket (mode 0600) belongs to another user: the system service's."""


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
    def __init__(self, socket_path: Path, *, timeout: float | None = 30.0, home: Path | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        # The socket of the daemon ensure_running starts when none answers (a state dir's own).
        self.home_socket = home or socket_path

    # -- finding the daemon -----------------------------------------------------------------
    @classmethod
    def find(cls, state_dir: Path, *, system_socket: Path | None = None) -> DaemonClient:
        """The client of the first daemon that listens: state_dir's own, else the system service's
        (system_socket, default `paths.system_control_socket()`: /run/bawt-vllm/control.sock). With
        neither, state_dir's, which says "not running" and is where ensure_running starts one.

        A system socket that exists but is not ours to use is chosen too: the commands then say
        that a daemon runs and who may talk to it, rather than that none runs.
        """
        from ..config.paths import control_socket, system_control_socket

        own = control_socket(state_dir)
        system = system_control_socket() if system_socket is None else system_socket
        for path in dict.fromkeys((own, system)):
            if _listens(path) is not False:
                return cls(path, home=own)
        return cls(own, home=own)

    @classmethod
    def for_state_dir(cls, state_dir: Path) -> DaemonClient:
        """The client of the daemon that owns state_dir, or else of the system service (`find`)."""
        return cls.find(state_dir)

    @classmethod
    def for_config_file(cls, config_path: Path) -> DaemonClient:
        """The client of the daemon of a models.yaml, found by reading only its state_dir (fast: no
        validation of the whole file; a file the quick reader cannot read raises its error)."""
        from ..config.paths import quick_state_dir

        return cls.for_state_dir(quick_state_dir(config_path))

    @property
    def state_dir(self) -> Path:
        """The state dir of the daemon this client would start (its log is there)."""
        return self.home_socket.parent

    def ensure_running(self, config_path: Path, on_start: Callable[[Path], None] | None = None) -> None:
        """Start a daemon for config_path unless one answers (the system service's counts: its
        gateway port would be taken anyway); on_start hears of it (with its log's path)."""
        if self.ping():
            return
        self.socket_path = self.home_socket
        if self.ping():
            return
        log_path = self.state_dir / DAEMON_LOG_NAME
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
        except PermissionError as error:
            connection.close()
            raise DaemonForbidden(f"a bawt-vllm daemon listens on {self.socket_path}, but its socket belongs to "
                                  "another user: run this as that user (the system service's is bawt-vllm) "
                                  "or as root") from error
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

    def stop_daemon(self, on_event: Callable[[dict[str, Any]], None] | None = None,
                    on_waiting: Callable[[dict[str, Any]], None] | None = None) -> ShutdownDone:
        """Stop every model, then the daemon; returns the stops' proofs and the daemon's pid once
        the models are gone. The daemon exits after that: wait_gone(pid) waits for it."""
        return cast(ShutdownDone, self._stream(SHUTDOWN, {}, on_event, on_waiting, "stop of the daemon"))

    def wait_gone(self, pid: int | None, timeout_s: float = DAEMON_EXIT_TIMEOUT_S) -> bool:
        """Wait until nothing listens on the socket and process pid (if known) has exited; False
        at the deadline."""
        deadline = time.monotonic() + timeout_s
        while _listens(self.socket_path) is not False or (pid is not None and pid_alive(pid)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


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


def _listens(path: Path, timeout_s: float = CONNECT_PROBE_TIMEOUT_S) -> bool | None:
    """Whether something accepts connections on the Unix socket path; None when one may be there
    but we may not connect (permission denied)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(path))
        except PermissionError:
            return None
        except OSError:  # no such file, nothing listening, not a socket, a full backlog past the timeout
            return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether process pid runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel (a zombie then counts as alive)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _text_since(path: Path, offset: int) -> str:
    """What was written to path from offset on (all of it if the file is now shorter: rotated, truncated)."""
    try:
        with open(path, "rb") as handle:
            if _size(path) >= offset:
                handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _failure_tail(sources: list[tuple[Path, int]]) -> str:
    """The last lines a failed start wrote to its log and to its raw output, in that order."""
    lines = [line for path, offset in sources for line in _text_since(path, offset).splitlines() if line.strip()]
    return "\n".join(lines[-FAILURE_TAIL_LINES:]) or f"(it wrote nothing; see {sources[0][0]})"


def start_daemon(config_path: Path, socket_path: Path, log_path: Path,
                 timeout_s: float = DAEMON_START_TIMEOUT_S) -> int:
    """Start `bawt-vllm daemon` in the background and wait until it answers; its pid.

    The daemon writes log_path itself (rotated); its raw stdout and stderr, such as a traceback
    from before its logging is set up, go to daemon.out beside it. A start that fails is
    explained by the end of what it wrote to either.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    output_path = log_path.with_name(DAEMON_OUTPUT_NAME)
    mode = "ab" if _size(output_path) < DAEMON_OUTPUT_MAX_BYTES else "wb"
    sources = [(log_path, _size(log_path)), (output_path, 0 if mode == "wb" else _size(output_path))]
    environment = {key: value for key, value in os.environ.items() if key not in _NOT_INHERITED}
    with open(output_path, mode) as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "bawt_vllm.supervisor.cli", "daemon", "--config", str(config_path),
             "--log-file", str(log_path)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            env={**environment, "PYTHONUNBUFFERED": "1"})
    client = DaemonClient(socket_path)
    deadline = time.monotonic() + timeout_s
    while not client.ping():
        if process.poll() is not None:
            raise DaemonError(f"the daemon exited with code {process.returncode}:\n{_failure_tail(sources)}")
        if time.monotonic() > deadline:
            raise DaemonError(f"the daemon did not answer within {timeout_s:.0f}s; see {log_path} and {output_path}")
        time.sleep(0.05)
    return process.pid
