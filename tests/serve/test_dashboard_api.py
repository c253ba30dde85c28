"""The dashboard's server side, without a browser: the public shell and files (no data in them), the
pushed feed behind the key, the admin routes the page adds (sleep, wake, /gpus), the refusal on an
open bind without a key, the GPU view's ours-or-not, `bawt-vllm ui`, and the wheel carrying the files."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPResponse
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dashboard_browser
import pytest
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime.pool import Pool
from bawt_vllm.supervisor.serve.dashboard import STATIC_DIR, is_public, static_files
from bawt_vllm.supervisor.serve.ui.views import gpu_rows, read_gpus
from dashboard_browser import KEY, dashboard_config, require_chromium
from dashboard_gpus import GIB, FakeGpus
from helpers import RunningDaemon, http, standin_entry, standin_settings, tracked, write_models_yaml

REPO = Path(__file__).resolve().parents[2]
WITH_KEY = {"BAWT_VLLM_API_KEY": KEY}
NO_KEY = {"BAWT_VLLM_API_KEY": ""}
AUTH = {"Authorization": f"Bearer {KEY}"}


def root_of(daemon: RunningDaemon) -> str:
    return daemon.gateway().removesuffix("/v1")


def error_code(body: Any) -> str | None:
    assert isinstance(body, dict) and "error" in body, body
    return body["error"]["code"]


def open_feed(root: str, headers: dict[str, str] | None = None) -> tuple[HTTPConnection, HTTPResponse]:
    parts = urlsplit(root)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=20)
    connection.request("GET", "/ui/api/feed", headers=headers or {})
    return connection, connection.getresponse()


def frames(response: HTTPResponse) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event name, payload) for each server-sent event as it arrives; comments skipped."""
    name, data = "message", []
    while line := response.readline():
        text = line.decode().rstrip("\n")
        if text.startswith("event:"):
            name = text[6:].strip()
        elif text.startswith("data:"):
            data.append(text[5:].strip())
        elif not text and data:
            yield name, json.loads("\n".join(data))
            name, data = "message", []


def first(found: Iterator[tuple[str, dict[str, Any]]], wanted: Any, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    for name, payload in found:
        if wanted(name, payload):
            return payload
        assert time.monotonic() < deadline, f"no matching frame within {timeout} s"
    raise AssertionError("the feed ended")


def states(snapshot: dict[str, Any]) -> dict[str, str]:
    return {row["alias"]: row["state"] for row in snapshot["models"]}


def test_only_the_shell_and_its_files_are_public() -> None:
    assert is_public("/ui") and is_public("/ui/") and is_public("/ui/static/dashboard.js")
    assert not is_public("/ui/api/feed") and not is_public("/uix") and not is_public("/models")


def test_the_shell_and_its_files_need_no_key_and_hold_no_data(tmp_path: Path) -> None:
    with RunningDaemon(dashboard_config(tmp_path), env=WITH_KEY) as daemon:
        root = root_of(daemon)
        for path in ("/ui", "/ui/"):
            status, headers, page = http("GET", root + path)
            assert status == 200 and headers["Content-Type"].startswith("text/html"), (path, status)
            assert "script-src 'self'" in headers["Content-Security-Policy"]
            assert "/ui/static/dashboard.js" in page and "/ui/static/dashboard.css" in page
        shown = "".join(http("GET", root + f"/ui/static/{name}")[2] for name in static_files())
        for secret in ("chat", "broken", "the stand-in vllm serve", KEY):
            assert secret not in page + shown, secret
        status, headers, _ = http("GET", root + "/ui/static/dashboard.js")
        assert status == 200 and headers["Content-Type"].startswith("text/javascript")
        assert http("GET", root + "/ui/static/nothing.js")[0] == 404
        assert "http://" not in page + shown and "https://" not in page + shown, "the page fetches from elsewhere"


def test_the_feed_needs_the_key_and_pushes_each_event_and_snapshot(tmp_path: Path) -> None:
    with RunningDaemon(dashboard_config(tmp_path), env=WITH_KEY) as daemon:
        root = root_of(daemon)
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            connection, response = open_feed(root, headers)
            try:
                body = json.loads(response.read())
                assert response.status == 401 and error_code(body) == "invalid_api_key", body
                assert "models" not in body
            finally:
                connection.close()
        parts = urlsplit(root)
        sneaky = HTTPConnection(parts.hostname, parts.port, timeout=20)
        try:  # dot segments cannot make the feed look like a public static file
            sneaky.request("GET", "/ui/static/../api/feed")
            assert sneaky.getresponse().status in (401, 404)
        finally:
            sneaky.close()
        connection, response = open_feed(root, AUTH)
        try:
            assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
            found = frames(response)
            assert next(found)[0] == "backlog"
            name, snapshot = next(found)
            assert name == "snapshot" and states(snapshot) == {"m": "stopped", "chat": "stopped", "broken": "stopped"}
            assert snapshot["gpus"] == [] and all(row["sleep_capable"] == (row["alias"] == "chat")
                                                  for row in snapshot["models"])
            assert http("POST", root + "/models/m/load", headers=AUTH)[0] == 200
            loading = first(found, lambda name, p: name == "snapshot" and states(p)["m"] == "starting")
            row = next(r for r in loading["models"] if r["alias"] == "m")
            assert row["loading_since"] and 0 <= row["progress"] <= 1 and row["stage"]
            first(found, lambda name, p: name == "event" and p["alias"] == "m" and p["kind"] == "ready")
            ready = first(found, lambda name, p: name == "snapshot")
            assert states(ready)["m"] == "ready"
            assert daemon.stop() == 0  # an open feed does not hold the daemon's shutdown up
            assert first(found, lambda name, p: name == "closing")["message"] == "bawt-vllm is shutting down"
        finally:
            connection.close()


def test_sleep_and_wake_a_sleep_mode_model_by_name(tmp_path: Path) -> None:
    with RunningDaemon(dashboard_config(tmp_path), env=NO_KEY) as daemon:
        root = root_of(daemon)
        status, _, body = http("POST", root + "/models/m/sleep")
        assert status == 409 and error_code(body) == "not_sleepable" and "sleep_level" in body["error"]["message"]
        status, _, body = http("POST", root + "/models/chat/sleep")
        assert status == 409 and error_code(body) == "not_sleepable" and "stopped" in body["error"]["message"]
        status, _, body = http("POST", root + "/models/chat/wake")
        assert status == 409 and error_code(body) == "not_sleeping"
        assert error_code(http("POST", root + "/models/nope/sleep")[2]) == "model_not_found"

        assert http("POST", root + "/models/chat/load")[0] == 200
        status, _, body = http("POST", root + "/models/chat/sleep")
        assert status == 200 and body["alias"] == "chat" and "asleep" in body["proof"], body
        assert http("GET", root + "/models/chat")[2]["state"] == "sleeping"
        status, _, row = http("POST", root + "/models/chat/wake")
        assert status == 200 and row["state"] == "ready", row
        assert http("GET", root + "/gpus")[2] == {"gpus": []}  # no GPU on this machine: none listed


def test_data_routes_are_refused_on_an_open_bind_without_a_key(tmp_path: Path) -> None:
    with RunningDaemon(dashboard_config(tmp_path, gateway_host="0.0.0.0"), env=NO_KEY) as daemon:
        root = root_of(daemon)
        assert http("GET", root + "/ui")[0] == 200  # the shell: no data, nothing to refuse
        for method, path in (("GET", "/ui/api/feed"), ("GET", "/gpus"), ("POST", "/models/chat/sleep"),
                             ("POST", "/models/chat/wake")):
            status, _, body = http(method, root + path, body=b"" if method == "POST" else None)
            assert status == 403 and error_code(body) == "admin_refused", (path, status, body)
        assert all(row["state"] == "stopped" for row in daemon.client.status()["models"])


def test_the_gpu_view_names_our_models_and_what_is_not_ours(tmp_path: Path) -> None:
    models = {"a": standin_entry(gpu_memory_utilization=0.4), "whole": standin_entry()}
    config = load_config(write_models_yaml(tmp_path / "models.yaml", models, **standin_settings(tmp_path)))
    gpus = FakeGpus(gpus=2, per_model=6 * GIB, foreign={1: (4242, 3 * GIB)})
    pool = tracked(Pool(config, inventory=gpus))
    gpus.watch(pool)

    async def scenario() -> list[dict[str, Any]]:
        try:
            for alias in ("a", "whole"):
                await pool.up(alias, timeout=20)
            return gpu_rows(pool, await read_gpus(pool))
        finally:
            await pool.close()

    rows = {row["index"]: row for row in asyncio.run(scenario())}
    assert {row["budget_used"] for row in rows.values()} == {0.4, None}
    by_alias = {process["alias"]: (index, process) for index, row in rows.items() for process in row["processes"]}
    a_gpu, whole_gpu = by_alias["a"][0], by_alias["whole"][0]
    assert a_gpu != whole_gpu and by_alias["a"][1]["used_bytes"] == 6 * GIB
    assert rows[1]["foreign_bytes"] == 3 * GIB and rows[0]["foreign_bytes"] == 0
    assert by_alias[None][1]["pid"] == 4242, "a process bawt-vllm did not start is named as not ours"


def test_ui_prints_the_dashboards_address(tmp_path: Path) -> None:
    config = dashboard_config(tmp_path)
    with RunningDaemon(config, env=NO_KEY) as daemon:
        done = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", "ui", "--no-open", "--config",
                               str(config)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **WITH_KEY})
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == root_of(daemon) + "/ui/"
        assert "$BAWT_VLLM_API_KEY" in done.stderr
        assert http("GET", done.stdout.strip())[0] == 200


def test_the_wheel_carries_the_pages_files() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "bawt_vllm.supervisor.serve.ui" in project["packages"]
    globs = project["package-data"]["bawt_vllm.supervisor.serve.ui"]
    shipped = {path.name for pattern in globs for path in (STATIC_DIR.parent).glob(pattern)}
    assert {"index.html", "dashboard.js", "dom.js", "gpus.js", "dashboard.css"} <= shipped
    assert {path.name for path in STATIC_DIR.iterdir()} <= shipped


def test_a_missing_chromium_skips_the_browser_tests_except_under_ci(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(dashboard_browser, "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install chromium"):
        require_chromium()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_chromium()
