"""keep_alive in a request body (Ollama's meaning): parsed, taken out before the body goes to vLLM,
0 unloading the model once no request is in flight for it, others overriding its idle TTL (the
pool's keep_alive), a bad value refused."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import pytest
from bawt_vllm.supervisor.serve.keepalive import FOREVER, KeepAliveError, parse_keep_alive
from helpers import (
    RunningDaemon,
    free_port,
    http,
    run_port_range,
    standin_entry,
    standin_settings,
    stream_lines,
    wait_until,
    write_models_yaml,
)


@pytest.mark.parametrize(("value", "seconds"), [
    (0, 0.0), (0.0, 0.0), ("0", 0.0), ("-0", 0.0), (30, 30.0), (2.5, 2.5), ("30s", 30.0), ("5m", 300.0),
    ("1h30m", 5400.0), ("1.5h", 5400.0), (".5m", 30.0), ("250ms", 0.25), ("+10s", 10.0), ("1h0m0.5s", 3600.5),
    (-1, FOREVER), ("-1m", FOREVER), (-0.5, FOREVER), (None, None)])
def test_keep_alive_values(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["300", "5 minutes", "5M", "", "m", "1h 30m", " 5m", "1d", True, False, [1],
                                   {"s": 1}, math.nan, math.inf, "NaN"])
def test_bad_keep_alive_values_are_refused(value: object) -> None:
    with pytest.raises(KeepAliveError, match="keep_alive must be a number of seconds or a duration"):
        parse_keep_alive(value)


def test_a_number_without_a_unit_in_a_string_gets_a_hint() -> None:
    with pytest.raises(KeepAliveError, match='needs a unit: "300s"'):
        parse_keep_alive("300")


def gateway_port() -> int:
    """A free port outside this run's model port range (the config refuses one inside it)."""
    low, high = run_port_range()
    return next(port for port in iter(free_port, None) if not low <= port <= high)


def config_for(tmp_path: Path, **entry: Any) -> Path:
    env = {"FAKE_VLLM_BODY_FILE": str(tmp_path / "body.json"), "FAKE_VLLM_TOKENS": "30",
           "FAKE_VLLM_TOKEN_S": "0.05", **entry.pop("env", {})}
    models = {"m": standin_entry(env=env, **entry), "other": standin_entry()}
    return write_models_yaml(tmp_path / "models.yaml", models,
                             **standin_settings(tmp_path, gateway_port=gateway_port()))


def row(daemon: RunningDaemon, alias: str = "m") -> dict[str, Any]:
    return next(r for r in daemon.client.status()["models"] if r["alias"] == alias)


def test_keep_alive_0_unloads_after_the_request_and_never_reaches_vllm(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path)) as daemon:
        base = daemon.gateway()
        sent = {"model": "m", "prompt": "x", "keep_alive": 0, "max_tokens": 2}
        status, _, reply = http("POST", base + "/completions", body=sent)
        assert status == 200 and reply["choices"][0]["text"] == "standin reply", reply
        received = json.loads((tmp_path / "body.json").read_text())
        assert received == {"model": "m", "prompt": "x", "max_tokens": 2}, received
        assert wait_until(lambda: row(daemon)["state"] == "stopped", 15), row(daemon)
        assert row(daemon, "other")["state"] == "stopped"

        # Streamed: the whole stream arrives, then the model goes.
        lines = list(stream_lines(base + "/chat/completions",
                                  {"model": "m", "stream": True, "messages": [], "keep_alive": "0s"}))
        assert "data: [DONE]" in lines and not any('"error"' in line for line in lines), lines
        assert "keep_alive" not in json.loads((tmp_path / "body.json").read_text())
        assert wait_until(lambda: row(daemon)["state"] == "stopped", 15), row(daemon)


def test_keep_alive_0_waits_for_the_other_requests_in_flight(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path)) as daemon:
        base = daemon.gateway()
        stream = stream_lines(base + "/chat/completions", {"model": "m", "stream": True, "messages": []})
        first = next(line for line in stream if line.startswith("data:"))  # the stream is in flight now
        assert "t0" in first
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.extend(stream))
        reader.start()
        try:
            status, _, _ = http("POST", base + "/completions", body={"model": "m", "prompt": "x", "keep_alive": 0})
            assert status == 200
            assert row(daemon)["state"] == "ready", "unloaded under a stream still in flight"
        finally:
            reader.join(30)
        assert "data: [DONE]" in rest and not any('"error"' in line for line in rest), rest
        assert wait_until(lambda: row(daemon)["state"] == "stopped", 15), row(daemon)


def test_without_keep_alive_the_body_is_forwarded_byte_for_byte(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path)) as daemon:
        sent = b'{"model":"m",   "prompt":"x" ,"max_tokens":1}'
        assert http("POST", daemon.gateway() + "/completions", body=sent)[0] == 200
        assert (tmp_path / "body.json").read_bytes() == sent
        # keep_alive null says nothing, but is still taken out.
        assert http("POST", daemon.gateway() + "/completions",
                    body={"model": "m", "prompt": "x", "keep_alive": None})[0] == 200
        assert json.loads((tmp_path / "body.json").read_text()) == {"model": "m", "prompt": "x"}
        assert row(daemon)["state"] == "ready"


def test_a_bad_keep_alive_is_refused_before_anything_loads(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path)) as daemon:
        for bad in ("5 minutes", "300", True, [1], {"m": 5}):
            status, _, body = http("POST", daemon.gateway() + "/completions",
                                   body={"model": "m", "prompt": "x", "keep_alive": bad})
            error = body["error"]
            assert status == 400 and error["param"] == "keep_alive" and error["code"] == "invalid_request", body
            assert '"5m"' in error["message"] and "negative" in error["message"], error
        assert row(daemon)["state"] == "stopped", "a refused request loaded the model"
        assert not (tmp_path / "body.json").exists(), "a refused body reached vLLM"


def test_a_positive_keep_alive_is_accepted_and_taken_out(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path)) as daemon:
        for value in ("30m", 600, -1):
            status, _, _ = http("POST", daemon.gateway() + "/completions",
                                body={"model": "m", "prompt": "x", "keep_alive": value})
            assert status == 200
            assert "keep_alive" not in json.loads((tmp_path / "body.json").read_text())
            assert row(daemon)["state"] == "ready"


def test_keep_alive_overrides_the_idle_ttl_until_the_next_one(tmp_path: Path) -> None:
    with RunningDaemon(config_for(tmp_path, idle_ttl_s=30)) as daemon:
        assert http("POST", daemon.gateway() + "/completions",
                    body={"model": "m", "prompt": "x", "keep_alive": "1h"})[0] == 200
        assert row(daemon)["idle_ttl_s"] == 3600
        assert http("POST", daemon.gateway() + "/completions",
                    body={"model": "m", "prompt": "x", "keep_alive": -1})[0] == 200
        assert row(daemon)["idle_ttl_s"] is None and row(daemon)["unload_in_s"] is None
