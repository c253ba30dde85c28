"""The gateway's admin API against a daemon running the stand-in: llama-swap's /running and /unload,
/upstream/{model}/... to a model's own server, per-model load/unload/status/logs, the gateway key,
and the refusal on a gateway bound beyond loopback without a key."""

from __future__ import annotations

import json
import time
from http.client import HTTPConnection
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from bawt_vllm.supervisor.serve.admin import is_loopback
from helpers import RunningDaemon, free_port, http, run_port_range, standin_entry, standin_settings, write_models_yaml

KEY = {"BAWT_VLLM_API_KEY": "s3cret"}
AUTH = {"Authorization": "Bearer s3cret"}
NO_KEY = {"BAWT_VLLM_API_KEY": ""}
ADMIN_ROUTES = [("GET", "/running"), ("POST", "/unload"), ("GET", "/unload"), ("GET", "/models"),
                ("GET", "/models/m"), ("POST", "/models/m/load"), ("POST", "/models/m/unload"),
                ("GET", "/models/m/logs"), ("GET", "/upstream/m/metrics"), ("POST", "/upstream/m/v1/completions")]


def gateway_port() -> int:
    """A free port outside this run's model port range (the config refuses one inside it)."""
    low, high = run_port_range()
    return next(port for port in iter(free_port, None) if not low <= port <= high)


def config_for(tmp_path: Path, **settings: Any) -> Path:
    models = {"m": standin_entry(env={"FAKE_VLLM_BODY_FILE": str(tmp_path / "body.json")}),
              "idle": standin_entry(), "slashy": standin_entry(served_model_name="org/slashy"),
              "broken": standin_entry("exit_during_load")}
    merged = standin_settings(tmp_path, **{"gateway_port": gateway_port(), **settings})
    return write_models_yaml(tmp_path / "models.yaml", models, **merged)


def root_of(daemon: RunningDaemon) -> str:
    return daemon.gateway().removesuffix("/v1")


def state(daemon: RunningDaemon, alias: str) -> str:
    return next(row["state"] for row in daemon.client.status()["models"] if row["alias"] == alias)


def raw_get(root: str, target: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET target exactly as written (no client-side dot resolution); (status, JSON or text)."""
    parts = urlsplit(root)
    connection = HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("GET", target, headers=headers or {})
        response = connection.getresponse()
        text = response.read().decode()
    finally:
        connection.close()
    try:
        return response.status, json.loads(text)
    except ValueError:
        return response.status, text


def error_code(body: Any) -> str | None:
    assert isinstance(body, dict) and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]["code"]


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
                                                ("localhost", True), ("[::1]", True), ("0.0.0.0", False),
                                                ("::", False), ("192.168.1.5", False), ("gpu-box", False)])
def test_loopback_is_127_8_and_1_and_localhost(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_every_admin_route_needs_the_gateway_key(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path), env=KEY) as daemon:
        root = root_of(daemon)
        for method, path in ADMIN_ROUTES:
            status, _, body = http(method, root + path, body=b"{}" if method == "POST" else None)
            assert status == 401 and error_code(body) == "invalid_api_key", (method, path, status, body)
        assert all(row["state"] == "stopped" for row in daemon.client.status()["models"]), "a refused route loaded"
        assert http("GET", root + "/running", headers=AUTH)[2] == {"running": []}
        assert http("GET", root + "/health")[0] == 200


def test_a_model_is_loaded_inspected_and_unloaded_by_name(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path), env=KEY) as daemon:
        root = root_of(daemon)
        status, _, row = http("POST", root + "/models/m/load", headers=AUTH)
        assert status == 200 and row["alias"] == "m" and row["state"] == "ready", row
        assert state(daemon, "m") == "ready"

        running = http("GET", root + "/running", headers=AUTH)[2]["running"]
        assert [(r["model"], r["state"]) for r in running] == [("m", "ready")]
        assert running[0]["proxy"].startswith("http://") and running[0]["bawt"]["in_flight"] == 0

        status, _, shown = http("GET", root + "/models/m?events=3", headers=AUTH)
        assert status == 200 and shown["state"] == "ready" and len(shown["events"]) == 3
        assert shown["events"][-1]["kind"] == "ready" and shown["events"][-1]["state"] == "ready"
        assert error_code(http("GET", root + "/models/m?events=lots", headers=AUTH)[2]) == "invalid_request"
        assert {row["alias"] for row in http("GET", root + "/models", headers=AUTH)[2]["models"]} == \
            {"m", "idle", "slashy", "broken"}

        status, _, proof = http("POST", root + "/models/m/unload", headers=AUTH)
        assert status == 200 and proof["was_running"] and proof["clean"] and proof["alias"] == "m", proof
        assert proof["processes_checked"] >= 1 and "none alive" in proof["proof"]
        assert state(daemon, "m") == "stopped"
        assert http("GET", root + "/running", headers=AUTH)[2] == {"running": []}

        status, _, proof = http("POST", root + "/models/idle/unload", headers=AUTH)
        assert status == 200 and proof["was_running"] is False
        status, _, body = http("POST", root + "/models/nope/load", headers=AUTH)
        assert status == 404 and error_code(body) == "model_not_found"
        assert error_code(http("GET", root + "/models/nope", headers=AUTH)[2]) == "model_not_found"
        status, _, body = http("POST", root + "/models/broken/load", headers=AUTH)
        assert status == 502 and error_code(body) == "model_load_failed" and "out of memory" in body["error"]["message"]


def test_unload_answers_like_llama_swap_and_proves_each_stop(tmp_path: Path) -> None:
    """On loopback without a key, the admin API is open (as the OpenAI routes are)."""
    with RunningDaemon(config_for(tmp_path), env=NO_KEY) as daemon:
        root = root_of(daemon)
        for alias in ("m", "idle"):
            assert http("POST", f"{root}/models/{alias}/load")[0] == 200
        status, headers, text = http("POST", root + "/unload", headers={"Accept": "text/plain"})
        assert (status, text) == (200, "OK") and headers["Content-Type"].startswith("text/plain")
        assert state(daemon, "m") == state(daemon, "idle") == "stopped"

        assert http("POST", root + "/models/m/load")[0] == 200
        status, _, body = http("GET", root + "/unload", headers={"Accept": "application/json"})
        assert status == 200 and body["msg"] == "ok", body
        proofs = {proof["alias"]: proof for proof in body["stopped"]}
        assert proofs["m"]["was_running"] and proofs["m"]["clean"]
        assert proofs["idle"]["was_running"] is False
        assert state(daemon, "m") == "stopped"


def test_upstream_reaches_the_models_own_server_and_never_loads(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path), env=KEY) as daemon:
        root = root_of(daemon)
        status, _, body = http("GET", root + "/upstream/idle/metrics", headers=AUTH)
        assert status == 409 and error_code(body) == "model_not_loaded"
        assert state(daemon, "idle") == "stopped", "the route loaded a model"
        assert error_code(http("GET", root + "/upstream/nope/metrics", headers=AUTH)[2]) == "model_not_found"

        assert http("POST", root + "/models/m/load", headers=AUTH)[0] == 200
        status, _, text = http("GET", root + "/upstream/m/metrics", headers=AUTH)
        assert status == 200 and 'vllm:num_requests_running{model_name="m"}' in text
        # vLLM's /version; the stand-in has none: the 404 is its own body, not the gateway's.
        status, _, body = http("GET", root + "/upstream/m/version", headers=AUTH)
        assert (status, body) == (404, {"error": {"message": "not found"}})
        # A POST reaches the model's own server as sent, with the instance's key (the stand-in wants it).
        sent = b'{"model": "m",   "prompt": "x", "keep_alive": 0}'
        status, _, reply = http("POST", root + "/upstream/m/v1/completions", body=sent, headers=AUTH)
        assert status == 200 and reply["choices"][0]["text"] == "standin reply", reply
        assert (tmp_path / "body.json").read_bytes() == sent
        assert state(daemon, "m") == "ready", "a body sent through /upstream is not the gateway's business"

        # Dot segments are resolved under the model's server and may not climb out of it.
        status, text = raw_get(root, "/upstream/m/v1/../metrics", AUTH)
        assert status == 200 and "vllm:num_requests_running" in text
        for escape in ("/upstream/m/../idle/metrics", "/upstream/m/%2e%2e/idle/metrics", "/upstream/m/v1/../../x"):
            status, body = raw_get(root, escape, AUTH)
            assert status == 404 and error_code(body) == "unknown_url", (escape, body)

        # A served name may hold a slash: the shortest leading part that names a model is the model.
        assert http("POST", root + "/models/org/slashy/load", headers=AUTH)[0] == 200
        status, _, text = http("GET", root + "/upstream/org/slashy/metrics", headers=AUTH)
        assert status == 200 and 'model_name="org/slashy"' in text


def test_logs_are_tailed_and_followed(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path), env=KEY) as daemon:
        root = root_of(daemon)
        status, _, body = http("GET", root + "/models/idle/logs", headers=AUTH)
        assert status == 404 and error_code(body) == "no_log"
        assert http("POST", root + "/models/m/load", headers=AUTH)[0] == 200
        status, headers, text = http("GET", root + "/models/m/logs?lines=50", headers=AUTH)
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert "Application startup complete." in text
        assert len(http("GET", root + "/models/m/logs?lines=1", headers=AUTH)[2].splitlines()) == 1
        status, _, body = http("GET", root + "/models/m/logs?lines=many", headers=AUTH)
        assert status == 400 and error_code(body) == "invalid_request"

        parts = urlsplit(root)
        connection = HTTPConnection(parts.hostname, parts.port, timeout=15)
        try:
            connection.request("GET", "/models/m/logs?follow=1&lines=0", headers=AUTH)
            following = connection.getresponse()
            assert following.status == 200
            assert http("POST", root + "/models/m/unload", headers=AUTH)[2]["clean"]
            deadline = time.monotonic() + 15
            seen = ""
            while "Shutting down" not in seen and time.monotonic() < deadline:
                seen += following.readline().decode()
            assert "Shutting down" in seen, seen
            assert "Application startup complete." not in seen, "follow repeated the log's start"
        finally:
            connection.close()


def test_the_admin_api_is_refused_on_an_open_bind_without_a_key(tmp_path: Path) -> None:
    """Bound to 0.0.0.0 without a key: every admin route is 403 (it could stop models and read
    logs for anyone); the OpenAI routes are still served, as before (the daemon warns)."""
    with RunningDaemon(config_for(tmp_path, gateway_host="0.0.0.0"), env=NO_KEY) as daemon:
        root = root_of(daemon)
        for method, path in ADMIN_ROUTES:
            status, _, body = http(method, root + path, body=b"{}" if method == "POST" else None)
            assert status == 403 and error_code(body) == "admin_refused", (method, path, status, body)
            assert "$BAWT_VLLM_API_KEY" in body["error"]["message"] and "127.0.0.1" in body["error"]["message"]
        assert state(daemon, "m") == "stopped", "a refused load loaded"
        assert http("GET", root + "/v1/models")[0] == 200
        status, _, reply = http("POST", root + "/v1/completions", body={"model": "m", "prompt": "x"})
        assert status == 200 and reply["choices"], reply
