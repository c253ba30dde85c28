"""Long waits over the control socket, and the control API's edges.

A load or a stop may rightly be silent for minutes; the daemon proves it is alive with
heartbeat lines, so the client's read timeout catches a dead daemon, never a long wait.
The daemons here run with the control API's timings shortened (heartbeat 0.2 s, body read
0.5 s) and the client's read timeout cut to 1 s, against waits of 3 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from bawt_vllm.supervisor.cli import app as cli_module
from bawt_vllm.supervisor.cli import render as cli_render
from bawt_vllm.supervisor.control import client as client_module
from bawt_vllm.supervisor.control.client import DaemonClient, DaemonUnresponsive, _UnixConnection
from helpers import RunningDaemon, free_port, standin_entry, standin_settings, write_models_yaml

SILENT_S = 3.0  # a load stage, or a stop grace, with no output at all
READ_TIMEOUT_S = 1.0  # the client's read timeout in these tests: well under SILENT_S
TUNED = {"HEARTBEAT_S": 0.2, "BODY_READ_TIMEOUT_S": 0.5}
# `bawt-vllm daemon`, with the control module's constants set from $BAWT_TEST_CONTROL first.
LAUNCH = """\
import json, os
from bawt_vllm.supervisor.control import server as control
for name, value in json.loads(os.environ["BAWT_TEST_CONTROL"]).items():
    setattr(control, name, value)
from bawt_vllm.supervisor.cli.app import main
main()
"""


class TunedDaemon(RunningDaemon):
    """RunningDaemon (stopped and its tree checked on exit) with the control API's timings shortened."""

    def __init__(self, config: Path, constants: dict[str, float] = TUNED) -> None:
        self.config = config
        self.state_dir = Path(yaml.safe_load(config.read_text())["bawt_vllm"]["state_dir"])
        self.socket = self.state_dir / "control.sock"
        self.process = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, "daemon", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "BAWT_TEST_CONTROL": json.dumps(constants)})


def config_for(tmp_path: Path, models: dict[str, dict[str, Any]], **settings: Any) -> Path:
    merged = standin_settings(tmp_path, gateway_port=free_port(), **settings)
    return write_models_yaml(tmp_path / "models.yaml", models, **merged)


def slow_load(mode: str = "ok") -> dict[str, Any]:
    return standin_entry(mode, env={"FAKE_VLLM_LOAD_S": str(SILENT_S)})


@pytest.fixture
def short_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "STREAM_READ_TIMEOUT_S", READ_TIMEOUT_S)


# -- A. waits bounded by the daemon's rules, not by a socket timeout ------------------------------
def test_up_outlasts_a_silent_load_longer_than_the_read_timeout(tmp_path, short_reads):
    config = config_for(tmp_path, {"slow": slow_load()})
    with TunedDaemon(config) as daemon:
        client = DaemonClient(daemon.socket, timeout=READ_TIMEOUT_S)
        heartbeats: list[dict[str, Any]] = []
        started = time.monotonic()
        result = client.up("slow", on_waiting=heartbeats.append)
        assert time.monotonic() - started >= SILENT_S
        assert result["ok"] and result["model"]["state"] == "ready"
        assert len(heartbeats) >= 5, heartbeats
        assert {beat["model"] for beat in heartbeats} == {"slow"}
        assert {beat["state"] for beat in heartbeats} == {"starting"}
        assert "loading weights" in {beat["stage"] for beat in heartbeats}
        elapsed = [beat["elapsed_s"] for beat in heartbeats]
        assert elapsed == sorted(elapsed) and elapsed[-1] >= SILENT_S - 1


def test_down_outlasts_a_stop_grace_longer_than_the_read_timeout(tmp_path, short_reads):
    config = config_for(tmp_path, {"stubborn": standin_entry("ignore_sigterm")}, stop_grace_s=SILENT_S)
    with TunedDaemon(config) as daemon:
        client = DaemonClient(daemon.socket, timeout=READ_TIMEOUT_S)
        client.up("stubborn")
        heartbeats: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        [result] = client.down("stubborn", on_event=events.append, on_waiting=heartbeats.append)
        assert result["was_running"] and result["clean"] and result["sigkilled"], result
        assert result["took_s"] >= SILENT_S
        assert {beat["state"] for beat in heartbeats} == {"stopping"} and len(heartbeats) >= 5
        assert [event["state"] for event in events] == ["stopping", "stopped"]


def test_down_all_streams_until_every_model_is_stopped(tmp_path, short_reads):
    config = config_for(tmp_path, {"a": standin_entry("ignore_sigterm"), "b": standin_entry()},
                        stop_grace_s=SILENT_S)
    with TunedDaemon(config) as daemon:
        client = DaemonClient(daemon.socket, timeout=READ_TIMEOUT_S)
        client.up("a")
        client.up("b")
        heartbeats: list[dict[str, Any]] = []
        results = client.down(all_models=True, on_waiting=heartbeats.append)
        assert sorted((r["alias"], r["was_running"], r["clean"]) for r in results) == [("a", True, True),
                                                                                        ("b", True, True)]
        assert heartbeats and heartbeats[-1]["model"] == "a", "the wait names the model still stopping"


def test_a_frozen_daemon_ends_the_wait_with_a_clear_error(tmp_path, short_reads):
    config = config_for(tmp_path, {"hung": standin_entry("never_ready")})
    with TunedDaemon(config) as daemon:
        client = DaemonClient(daemon.socket)
        outcome: list[BaseException] = []

        def freeze_daemon(_event: dict[str, Any]) -> None:
            os.kill(daemon.process.pid, signal.SIGSTOP)

        def load() -> None:
            try:
                client.up("hung", on_event=freeze_daemon)
            except BaseException as error:
                outcome.append(error)

        waiter = threading.Thread(target=load, daemon=True)
        started = time.monotonic()
        try:
            waiter.start()
            waiter.join(READ_TIMEOUT_S + 10)
            assert not waiter.is_alive(), "the client still waits on a frozen daemon"
        finally:
            os.kill(daemon.process.pid, signal.SIGCONT)
        assert time.monotonic() - started < READ_TIMEOUT_S + 5
        [error] = outcome
        assert isinstance(error, DaemonUnresponsive), repr(error)
        assert "sent nothing for 1s" in str(error) and "stopped or hung" in str(error)
        assert client.status()["daemon"]["pid"] == daemon.process.pid, "the daemon goes on once continued"


def test_cli_up_and_down_show_they_are_still_waiting(tmp_path, short_reads, monkeypatch):
    from typer.testing import CliRunner

    monkeypatch.setattr(cli_render, "STILL_WAITING_EVERY_S", 1.0)
    config = config_for(tmp_path, {"slow": slow_load("ignore_sigterm")}, stop_grace_s=SILENT_S)
    with TunedDaemon(config):
        runner = CliRunner()
        up = runner.invoke(cli_module.app, ["up", "slow", "--config", str(config)])
        assert up.exit_code == 0, up.output
        assert "slow is ready" in up.stdout
        assert "still loading slow: loading weights" in up.stderr, up.stderr
        down = runner.invoke(cli_module.app, ["down", "slow", "--config", str(config)])
        assert down.exit_code == 0, down.output
        assert "slow: gone in" in down.stdout and "SIGKILLed" in down.stdout
        assert "still stopping slow: stopping" in down.stderr, down.stderr


# -- B. the control API's edges -------------------------------------------------------------------
@pytest.fixture(scope="module")
def edge_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    tmp_path = tmp_path_factory.mktemp("edges")
    with TunedDaemon(config_for(tmp_path, {"m": standin_entry(served_model_name="served-m")})) as daemon:
        yield daemon


def control(daemon: RunningDaemon, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    """(status, parsed JSON body) of one request on the control socket."""
    connection = _UnixConnection(daemon.socket, 10)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.getheader("Content-Type", "").startswith("application/json"), response.getheaders()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.mark.parametrize(("method", "path", "body", "status", "says", "code"), [
    ("POST", "/up", b"{not json", 400, "the request body is not valid JSON", "bad_request"),
    ("POST", "/down", b"\xff\xfe", 400, "the request body is not valid JSON", "bad_request"),
    ("POST", "/up", b"[1, 2]", 400, "the request body must be a JSON object, not an array", "bad_request"),
    ("POST", "/down", b'"m"', 400, "the request body must be a JSON object, not a string", "bad_request"),
    ("POST", "/up", b'{"model": 5}', 400, "'model' must be a string (an alias), not a number", "bad_request"),
    ("POST", "/down", b'{"model": ["m"]}', 400, "'model' must be a string (an alias), not an array", "bad_request"),
    ("POST", "/down", b'{"all": "yes"}', 400, "'all' must be true or false, not a string", "bad_request"),
    ("POST", "/up", b"", 400, "name a model", "bad_request"),
    ("GET", "/nowhere", None, 404, "Not Found: GET /nowhere", "no_route"),
    ("GET", "/up", None, 405, "Method Not Allowed: GET /up", "method_not_allowed"),
    ("GET", "/logs?model=m&lines=ten", None, 400, "'lines' must be an integer, not 'ten'", "bad_request"),
    ("GET", "/logs?model=m&lines=-1", None, 400, "'lines' must be at least 0, not -1", "bad_request"),
    ("GET", "/logs?model=m&start=first", None, 400, "'start' must be an integer, not 'first'", "bad_request"),
])
def test_bad_requests_get_a_json_error_naming_the_problem(edge_daemon, method, path, body, status, says, code):
    got, payload = control(edge_daemon, method, path, body)
    assert (got, payload.get("code"), set(payload)) == (status, code, {"error", "code"}), payload
    assert payload["error"].startswith(says), payload["error"]




def test_a_half_sent_body_gets_408_and_holds_no_handler(edge_daemon):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(10)
        raw.connect(str(edge_daemon.socket))
        raw.sendall(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100\r\n\r\n{\"mod")
        started = time.monotonic()
        head = raw.recv(65536).decode()
    assert head.startswith("HTTP/1.1 408 "), head
    assert "did not arrive within 0.5s" in head
    assert time.monotonic() - started < 5
    assert control(edge_daemon, "GET", "/status")[0] == 200


def test_models_are_named_by_alias_or_served_name(edge_daemon):
    status, payload = control(edge_daemon, "GET", "/events?model=served-m")
    assert status == 200 and payload["model"] == "m" and payload["state"] == "stopped"


# -- B. reload: results and errors of the callback pass through as JSON -------------------------------
def serve_reload(tmp_path: Path, reload: Callable[[], Awaitable[list[str]]], calls: int) -> list[tuple[int, Any]]:
    """(status, JSON) of `calls` concurrent POST /reload to an in-process control API."""
    from aiohttp.test_utils import TestClient, TestServer
    from bawt_vllm.supervisor.config.loading import load_config
    from bawt_vllm.supervisor.control.server import ControlApi
    from bawt_vllm.supervisor.runtime.pool import Pool

    config = load_config(config_for(tmp_path, {"m": standin_entry()}))

    async def scenario() -> list[tuple[int, Any]]:
        api = ControlApi(Pool(config), gateway_url="http://127.0.0.1:1", reload=reload)
        async with TestClient(TestServer(api.app())) as http:
            async def one() -> tuple[int, Any]:
                response = await http.post("/reload")
                return response.status, await response.json()
            return list(await asyncio.gather(*(one() for _ in range(calls))))

    return asyncio.run(scenario())


def test_reload_errors_come_back_as_json(tmp_path):
    busy = asyncio.Lock()

    async def reload() -> list[str]:
        if busy.locked():
            raise RuntimeError("a reload is already running")
        async with busy:
            await asyncio.sleep(0.1)
            return ["m: entry changed, stopped"]

    answers = sorted(serve_reload(tmp_path, reload, calls=2), key=lambda answer: answer[0])
    assert answers == [(200, {"changes": ["m: entry changed, stopped"]}),
                       (500, {"error": "reload failed: RuntimeError: a reload is already running",
                              "code": "reload_failed"})]
