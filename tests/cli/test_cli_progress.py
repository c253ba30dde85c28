"""`up`, `ps` and `chat` as a user sees them: the load's progress and its one last line, `--json`,
Ctrl-C during `up`, `chat` on a model that is not loaded, and the ps columns (IDLE, UNTIL,
RESTARTS, LAST ERROR)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bawt_vllm.supervisor.cli import render
from helpers import RunningDaemon, free_port, standin_entry, standin_settings, wait_until, write_models_yaml

CLI = [sys.executable, "-m", "bawt_vllm.supervisor.cli"]
COLUMN = {name: index for index, name in enumerate(render.MODEL_COLUMNS)}


def cli(*args: str, config: Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "--config", str(config)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def rows(config: Path) -> dict[str, dict[str, Any]]:
    return {row["alias"]: row for row in json.loads(cli("ps", "--json", config=config).stdout)}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDaemon]:
    tmp_path = tmp_path_factory.mktemp("progress")
    models = {
        "m": standin_entry(),
        "slow": standin_entry(env={"FAKE_VLLM_LOAD_S": "2.6"}),  # silent while it "loads weights"
        "talk": standin_entry(env={"FAKE_VLLM_LOAD_S": "1"}),
        "hung": standin_entry("never_ready"),
        "broken": standin_entry("exit_during_load"),
        "ttl": standin_entry(idle_ttl_s=600),
    }
    settings = standin_settings(tmp_path, gateway_port=free_port(), ready_stall_timeout_s=120, max_restarts=0,
                                max_cpu_instances=len(models))  # nothing is evicted under a test
    with RunningDaemon(write_models_yaml(tmp_path / "models.yaml", models, **settings)) as running:
        yield running


# -- up ----------------------------------------------------------------------------------------------
def test_up_ends_with_one_ready_line_and_shows_ready_once(daemon):
    up = cli("up", "m", config=daemon.config)
    assert up.returncode == 0, up.stderr
    assert re.search(r"^m is ready in \d+\.\ds \(http://127\.0\.0\.1:\d+/v1, pid \d+\)$", up.stdout, re.M), up.stdout
    assert up.stdout.count("is ready") == 1
    assert up.stderr.count("[ready]") <= 1, up.stderr  # the instance's own ready event is not repeated
    again = cli("up", "m", config=daemon.config)
    assert "m is ready (already loaded: http://" in again.stdout


def test_up_json_prints_the_daemons_result_and_nothing_else_on_stdout(daemon):
    up = cli("up", "ttl", "--json", config=daemon.config)
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert (result["done"], result["ok"], result["model"]["alias"], result["model"]["state"]) == \
        (True, True, "ttl", "ready")
    assert result["gateway"].endswith("/v1") and "type: openai" in result["llm_bawt_entry"]


def test_up_json_of_a_failed_load_prints_the_failure_as_json(daemon):
    up = cli("up", "broken", "--json", config=daemon.config)
    assert up.returncode == 1
    result = json.loads(up.stdout)
    assert (result["ok"], result["code"]) == (False, "start_failed") and "broken" in result["error"]
    assert "bawt-vllm: " in up.stderr


def test_up_json_and_foreground_do_not_go_together(daemon):
    refused = cli("up", "m", "--json", "--foreground", config=daemon.config)
    assert refused.returncode == 2 and "--foreground" in refused.stderr


def test_the_spinner_on_a_terminal_shows_the_stage_and_a_ticking_clock(daemon):
    up = cli("up", "slow", config=daemon.config, env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert up.returncode == 0, up.stderr
    clocks = set(re.findall(r"loading slow(?:: [a-z ]+)? \((\d+)s\)", up.stderr))
    assert {"0", "1", "2"} <= clocks, up.stderr  # a silent 2.6 s stage: the clock moved without a daemon line
    assert "loading slow: loading weights" in up.stderr
    assert "slow is ready in" in up.stdout


def test_ctrl_c_during_up_stops_waiting_and_the_load_goes_on(daemon):
    waiting = subprocess.Popen([*CLI, "up", "hung", "--config", str(daemon.config)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: rows(daemon.config)["hung"]["state"] == "starting", 30)
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 130, err
    said = "stopped waiting; hung keeps loading in the daemon — `bawt-vllm down hung` cancels it"
    assert err.count(said) == 1 and "Traceback" not in err and "Aborted" not in err, err
    assert out == ""
    row = rows(daemon.config)["hung"]
    assert row["state"] == "starting", "Ctrl-C stops the waiting, not the load"
    cells = render.model_cells(row)
    assert cells[COLUMN["IDLE"]] == "" and cells[COLUMN["UNTIL"]] == "-", "IDLE is blank while a model loads"
    assert cli("down", "hung", config=daemon.config).returncode == 0


def test_ctrl_c_in_any_command_exits_130(daemon):
    assert cli("up", "m", config=daemon.config).returncode == 0
    following = subprocess.Popen([*CLI, "logs", "m", "-f", "--config", str(daemon.config)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        assert following.stdout is not None and following.stdout.readline(), "the log's tail came"
        following.send_signal(signal.SIGINT)
        _out, err = following.communicate(timeout=30)
    finally:
        if following.poll() is None:
            following.kill()
            following.wait()
    assert following.returncode == 130 and "Traceback" not in err, err


# -- chat --------------------------------------------------------------------------------------------
def test_chat_on_a_model_not_loaded_shows_the_load_then_answers(daemon):
    assert rows(daemon.config)["talk"]["state"] == "stopped"
    chat = cli("chat", "talk", "hi", "--max-tokens", "5", config=daemon.config)
    assert chat.returncode == 0, chat.stderr
    assert "[starting] start requested" in chat.stderr and "[loading weights]" in chat.stderr, chat.stderr
    assert chat.stdout.split() == ["t0", "t1", "t2", "t3", "t4"]
    again = cli("chat", "talk", "hi", config=daemon.config)
    assert again.returncode == 0 and "start requested" not in again.stderr, "a ready model is not loaded again"


# -- ps ----------------------------------------------------------------------------------------------
def test_ps_shows_until_restarts_and_last_error_columns(daemon):
    assert cli("up", "ttl", config=daemon.config).returncode == 0
    cli("up", "broken", config=daemon.config)
    table = cli("ps", config=daemon.config)
    assert table.returncode == 0 and table.stdout.splitlines()[0].split("  ")[0] == "MODEL"
    for column in ("IDLE", "UNTIL", "RESTARTS", "LAST ERROR"):
        assert column in table.stdout.splitlines()[0]
    found = rows(daemon.config)
    ttl, broken = render.model_cells(found["ttl"]), render.model_cells(found["broken"])
    assert re.fullmatch(r"\d+m", ttl[COLUMN["UNTIL"]]), ttl  # time left of the 600 s idle TTL
    assert ttl[COLUMN["RESTARTS"]] == "0" and ttl[COLUMN["LAST ERROR"]] == "-"
    assert broken[COLUMN["LAST ERROR"]] != "-" and len(broken[COLUMN["LAST ERROR"]]) <= render.LAST_ERROR_WIDTH
    assert broken[COLUMN["LAST ERROR"]].split()[0] in found["broken"]["last_error"]


def test_the_fast_path_imports_no_pydantic_with_a_daemon_running(daemon):
    """`ps` against a running daemon: no pydantic (the config is not validated), no typer app."""
    done = subprocess.run([*CLI, "ps", "--config", str(daemon.config)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "bawt_vllm.supervisor.control.client" in imported and "bawt_vllm.supervisor.cli.app" not in imported
    assert not {name for name in imported if name.split(".")[0] in ("pydantic", "rich", "aiohttp", "openai")}


def test_ps_without_a_daemon_exits_0_with_a_hint_on_stderr(tmp_path):
    config = write_models_yaml(tmp_path / "models.yaml", {"a": standin_entry()}, **standin_settings(tmp_path))
    for args in (["ps"], ["ps", "--json"]):
        done = cli(*args, config=config)
        assert done.returncode == 0, done.stderr
        assert done.stderr == "no daemon is running: `bawt-vllm up MODEL` starts one\n"
    assert json.loads(done.stdout) == [{"alias": "a", "state": "stopped"}]


# -- ps cells, without a daemon ----------------------------------------------------------------------
def row(**values: Any) -> dict[str, Any]:
    return {"alias": "m", "state": "ready", "pid": 10, "port": 8500, "gpus": [0], "restarts": 0,
            "last_error": None, "idle_s": 5.0, "idle_ttl_s": None, "unload_in_s": None, "in_flight": 0, **values}


@pytest.mark.parametrize(("values", "idle", "until"), [
    ({"state": "starting", "idle_s": 3.0}, "", "-"),  # an old daemon's idle time during a load: still blank
    ({"state": "starting", "idle_s": None, "idle_ttl_s": 60}, "", ""),
    ({"idle_s": None, "in_flight": 1}, "", "-"),  # serving a request is not idle
    ({"idle_s": 30.0, "idle_ttl_s": 600, "unload_in_s": 570.0}, "30s", "10m"),
    ({"idle_s": 5.0}, "5s", "-"),  # no TTL
    ({"state": "stopped", "pid": None, "idle_s": None, "idle_ttl_s": 600}, "-", "-"),
])
def test_idle_and_until_cells(values, idle, until):
    cells = render.model_cells(row(**values))
    assert (cells[COLUMN["IDLE"]], cells[COLUMN["UNTIL"]]) == (idle, until)


def test_last_error_is_one_short_line():
    error = "load stalled: no log progress for 300s (stage: engine starting)\nlog: /x/y.log\nlast log lines: ..."
    cell = render.model_cells(row(last_error=error, restarts=2))[COLUMN["LAST ERROR"]]
    assert cell == "load stalled: no log progress for 300s…" and len(cell) <= render.LAST_ERROR_WIDTH
    assert render.model_cells(row(restarts=2))[COLUMN["RESTARTS"]] == "2"
    assert render.one_line("short", 40) == "short"


def test_the_table_aligns_columns_and_keeps_blank_cells():
    lines = render.columns([["A", "BB", "C"], ["aaa", "", "c"]])
    assert lines == ["A    BB  C", "aaa      c"]


# -- the spinner's parts -----------------------------------------------------------------------------
def test_the_spinner_text_names_the_stage_and_the_time_so_far():
    text = render.SpinnerText("loading", "m")
    assert text() == "loading m (0s)"
    text.label, text.started = "loading weights", text.started - 65
    assert text() == "loading m: loading weights (1m05s)"


def test_ticking_redraws_between_events_and_stops_with_the_block():
    drawn: list[int] = []
    with render.ticking(lambda: drawn.append(1), every_s=0.02):
        assert wait_until(lambda: len(drawn) >= 3, 10), "no redraw without events"
    after = len(drawn)
    assert not wait_until(lambda: len(drawn) > after, 0.2), "redraws went on after the block"
