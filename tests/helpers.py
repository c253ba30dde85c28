"""Small helpers shared by tests: models.yaml writers, process checks, async runners."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml

STANDIN_VLLM = Path(__file__).parent / "standin" / "vllm"
T = TypeVar("T")


def write_models_yaml(path: Path, models: dict[str, dict[str, Any]], **settings: Any) -> Path:
    document = {"bawt_vllm": settings, "models": models}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def standin_entry(mode: str = "ok", **extra: Any) -> dict[str, Any]:
    env = {"FAKE_VLLM_MODE": mode, **extra.pop("env", {})}
    return {"type": "vllm", "model_id": "standin/model", "tool_support": "none", "env": env, **extra}


def run_port_range(width: int = 100) -> list[int]:
    """A port window of this test run's own (by pid), so concurrent runs do not share ports."""
    import os

    low = 20000 + (os.getpid() % 300) * width
    return [low, low + width - 1]


def standin_settings(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "vllm_executable": str(STANDIN_VLLM),
        "state_dir": str(tmp_path / "state"),
        "port_range": run_port_range(),
        "stop_grace_s": 2.0,
        "health_interval_s": 0.2,
        "restart_backoff_s": 0.05,
        "restart_backoff_max_s": 0.2,
        "max_restarts": 2,
        "ready_stall_timeout_s": 10,
        "max_cpu_instances": 4,
        "eviction_wait_s": 0.5,
    }
    settings.update(overrides)
    return settings


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free right now, outside this run's instance port range (a gateway
    port inside it is refused by the config check)."""
    import socket

    low, high = run_port_range()
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if not low <= port <= high:
            return port


_POOLS: list[Any] = []


def tracked(pool: T) -> T:
    """Register a Pool so whatever it started is killed after the test, even a failed one."""
    _POOLS.append(pool)
    return pool


def kill_pool_leftovers() -> None:
    """SIGKILL every process tree a tracked pool still holds, and reap them (test teardown)."""
    import contextlib
    import os

    for pool in _POOLS:
        for instance in pool.instances.values():
            process = instance.process
            if process is None:
                continue
            # Only processes proven to be the tree's (pid + start time, descendants, its token).
            for member in process.refresh(everywhere=True):
                found = member.process()
                if found is not None:
                    with contextlib.suppress(psutil.Error):
                        found.kill()
            for member in process.known_members():
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(member.pid, 0)
    _POOLS.clear()


@contextlib.asynccontextmanager
async def gateway_serving(gateway: Any) -> AsyncIterator[tuple[str, int]]:
    """A Gateway started on 127.0.0.1 as the daemon starts it, closed afterwards: (base URL, port)."""
    try:
        await gateway.start("127.0.0.1", 0)
        yield f"http://127.0.0.1:{gateway.port}", gateway.port
    finally:
        await gateway.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def alive(pids: Iterable[int]) -> list[int]:
    """The pids that are still running (zombies count as gone)."""
    living = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                living.append(pid)
        except psutil.NoSuchProcess:
            continue
    return living


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll predicate until true or the deadline passes; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class LineReader:
    """A subprocess's text output, line by line, waited on with a deadline.

    A thread does the blocking reads, so a silent or hung process fails the test at the
    deadline instead of hanging it.
    """

    def __init__(self, stream: Any) -> None:
        import queue
        import threading

        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: Any) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def wait_for(self, needle: str, timeout: float) -> str:
        """The first line containing needle; AssertionError at the deadline or end of output."""
        import queue

        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"output ended before a line with {needle!r}")
            if needle in line:
                return line
        raise AssertionError(f"no line with {needle!r} within {timeout:.0f} s")


class ForegroundSupervisor:
    """`bawt-vllm up ALIAS --foreground` in a subprocess, to be killed by a test.

    On exit, the supervisor and every process its state record names are SIGKILLed.
    """

    def __init__(self, config: Path, alias: str) -> None:
        import subprocess
        import sys

        self.record = Path(yaml.safe_load(config.read_text())["bawt_vllm"]["state_dir"]) / "instances" / f"{alias}.json"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bawt_vllm.supervisor.cli", "up", alias, "--foreground", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self._seen: list[int] = []
        self.output = LineReader(self.process.stdout)

    def __enter__(self) -> ForegroundSupervisor:
        return self

    def wait_ready(self, timeout: float) -> None:
        self.output.wait_for("is ready at", timeout)

    def members(self) -> list[int]:
        """The tree's pids as the supervisor's state record names them."""
        import json

        pids = [int(pid) for pid, _ in json.loads(self.record.read_text())["members"]]
        self._seen = sorted(set(self._seen) | set(pids))
        return pids

    def __exit__(self, *exc: object) -> None:
        import contextlib
        import os
        import signal

        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        for pid in alive(self._seen):
            os.kill(pid, signal.SIGKILL)


class RunningDaemon:
    """`bawt-vllm daemon` in a subprocess; stopped (and its tree checked) on exit."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys

        self.config = config
        self.state_dir = Path(yaml.safe_load(config.read_text())["bawt_vllm"]["state_dir"])
        self.socket = self.state_dir / "control.sock"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bawt_vllm.supervisor.cli", "daemon", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    def __enter__(self) -> RunningDaemon:
        from bawt_vllm.supervisor.control.client import DaemonClient

        self.client = DaemonClient(self.socket)
        if not wait_until(lambda: self.client.ping() or self.process.poll() is not None, 30):
            raise AssertionError("daemon did not answer within 30 s")
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited: {self.process.stdout.read()}")
        return self

    def gateway(self) -> str:
        return self.client.status()["daemon"]["gateway"] + "/v1"

    def stop(self, timeout: float = 60) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except Exception:
            import os

            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise

    def output(self) -> str:
        return self.process.stdout.read() if self.process.stdout else ""

    def __exit__(self, *exc: object) -> None:
        import json
        import os
        import signal

        self.stop()
        # Whatever the test did, nothing the daemon started may outlive it.
        for record in (self.state_dir / "instances").glob("*.json"):
            for pid, _created in json.loads(record.read_text()).get("members", []):
                if alive([int(pid)]):
                    os.kill(int(pid), signal.SIGKILL)


def http(method: str, url: str, *, body: bytes | dict[str, Any] | None = None, timeout: float = 30,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON or text) for one plain HTTP request."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, head, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        status, head, raw = error.code, dict(error.headers), error.read()
    text = raw.decode("utf-8", "replace")
    try:
        return status, head, json.loads(text)
    except ValueError:
        return status, head, text


def stream_lines(url: str, payload: dict[str, Any], timeout: float = 30, headers: dict[str, str] | None = None):
    """Yield the lines of a streaming POST as they arrive (an open http.client response)."""
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    connection.request("POST", parts.path, body=json.dumps(payload),
                       headers={"Content-Type": "application/json", **(headers or {})})
    response = connection.getresponse()
    try:
        while line := response.readline():
            yield line.decode().rstrip("\r\n")
    finally:
        connection.close()


def daemon_pid(state_dir: Path) -> int | None:
    """The pid of the daemon holding state_dir's lock (as the lock file names it), if any."""
    import re

    try:
        text = (state_dir / "supervisor.lock").read_text()
    except FileNotFoundError:
        return None
    found = re.search(r"daemon \(pid (\d+)\)", text)
    return int(found.group(1)) if found and alive([int(found.group(1))]) else None


def stop_daemon(pid: int | None, timeout: float = 60) -> None:
    """SIGTERM an auto-started daemon and wait until it is gone."""
    import os
    import signal

    if pid is None or not alive([pid]):
        return
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not alive([pid]), timeout):
        os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"daemon {pid} did not stop within {timeout:.0f}s of SIGTERM")
