"""The daemon logs every lifecycle event as one readable line, chosen by event kind (supervisor/serve/eventlog.py)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from bawt_vllm.supervisor.runtime.states import Event, EventKind, Stage, State
from bawt_vllm.supervisor.runtime.stops import StopResult
from bawt_vllm.supervisor.serve.eventlog import EventLog
from daemon_harness import FileLoggedDaemon, config_for
from helpers import standin_entry, wait_until

LOG = Path("/state/logs/m.2.log")


class Lines(logging.Handler):
    """Every record the EventLog emits, as (level name, text)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelname, record.getMessage()))


@pytest.fixture
def lines() -> Lines:
    return Lines()


@pytest.fixture
def events(lines: Lines) -> EventLog:
    logger = logging.getLogger("test.eventlog")
    logger.handlers[:] = [lines]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return EventLog(logger)


def instance(**fields: Any) -> Any:
    """Only what the EventLog reads of an Instance."""
    defaults: dict[str, Any] = {
        "alias": "m", "pid": 4242, "log_path": LOG, "last_error": None,
        "placement": SimpleNamespace(port=20001, gpus=(0, 1)), "endpoint": "http://127.0.0.1:20001/v1",
        "entry": SimpleNamespace(idle_ttl_s=None), "settings": SimpleNamespace(idle_ttl_s=300.0),
    }
    return SimpleNamespace(**{**defaults, **fields})


def feed(log: EventLog, at: float, kind: EventKind, message: str = "any wording at all",
         stage: Stage | None = None, of: Any = None) -> None:
    log.observe(of or instance(), Event(at, kind, State.STARTING, message, stage))


def test_a_load_is_told_from_the_request_to_ready_with_its_load_time(events: EventLog, lines: Lines) -> None:
    feed(events, 9.0, EventKind.START_REQUESTED)
    feed(events, 10.0, EventKind.LAUNCHED)
    feed(events, 12.0, EventKind.STAGE, "INFO Starting to load model", Stage.LOADING_WEIGHTS)
    feed(events, 31.3, EventKind.READY)
    assert lines.lines == [
        ("INFO", "m: start requested (port 20001, GPU 0,1)"),
        ("INFO", f"m: launched pid 4242 (log {LOG})"),
        ("INFO", "m: load stage 'loading weights': INFO Starting to load model"),
        ("INFO", "m: ready in 21.3s at http://127.0.0.1:20001/v1"),
    ]


def test_a_crash_names_its_exit_code_and_log_and_the_restart_its_backoff(events: EventLog, lines: Lines) -> None:
    crashed = instance(last_error=SimpleNamespace(exit_code=1))
    feed(events, 1.0, EventKind.EXITED, "vllm serve exited with code 1 after being ready", of=crashed)
    feed(events, 1.1, EventKind.RESTARTING, "vllm serve exited with code 1 after being ready; restart 1/3 in 2.0s",
         of=crashed)
    feed(events, 9.0, EventKind.FAILED, "gave up after 3 restart(s)", of=crashed)
    assert lines.lines == [
        ("WARNING", f"m: crashed with exit code 1 (log {LOG}): vllm serve exited with code 1 after being ready"),
        ("WARNING", f"m: restarting after backoff: vllm serve exited with code 1 after being ready; "
                    f"restart 1/3 in 2.0s (log {LOG})"),
        ("ERROR", f"m: failed: gave up after 3 restart(s) (log {LOG})"),
    ]


def test_lines_are_chosen_by_kind_never_by_the_message(events: EventLog, lines: Lines) -> None:
    hung = instance(last_error=SimpleNamespace(exit_code=None), placement=SimpleNamespace(port=20002, gpus=()))
    feed(events, 1.0, EventKind.STAGE, "ready in 3s; crashed with exit code 9", Stage.KV_CACHE)
    feed(events, 2.0, EventKind.EXITED, "ready", of=hung)
    feed(events, 3.0, EventKind.START_REQUESTED, "restarting", of=hung)
    feed(events, 4.0, EventKind.READY, "failed")  # no launch seen: no load time to tell
    assert lines.lines == [
        ("INFO", "m: load stage 'kv cache': ready in 3s; crashed with exit code 9"),
        ("WARNING", f"m: went down (log {LOG}): ready"),
        ("INFO", "m: start requested (port 20002, CPU)"),
        ("INFO", "m: ready at http://127.0.0.1:20001/v1"),
    ]


def test_unhealthy_evictions_idle_unloads_and_stops_say_why(events: EventLog, lines: Lines) -> None:
    feed(events, 1.0, EventKind.UNHEALTHY, "/health answered 503")
    feed(events, 2.0, EventKind.RECOVERED)
    feed(events, 3.0, EventKind.EVICTED, "evicted (least recently used) for big")
    feed(events, 4.0, EventKind.IDLE_UNLOADED, "idle TTL", of=instance(entry=SimpleNamespace(idle_ttl_s=60.0)))
    feed(events, 5.0, EventKind.STOPPING, "config reload: entry changed")
    feed(events, 6.0, EventKind.STOPPED, "stopped in 0.20s")
    assert lines.lines == [
        ("WARNING", "m: unhealthy: /health answered 503"),
        ("INFO", "m: healthy again"),
        ("INFO", "m: evicted: evicted (least recently used) for big"),
        ("INFO", "m: unloading: idle for 60s (its idle TTL)"),
        ("INFO", "m: stopping: config reload: entry changed"),
        ("DEBUG", "m: stopped: stopped in 0.20s"),  # the proof, from the stop listener, says it at info
    ]


def test_each_stop_of_a_running_tree_is_logged_with_its_proof(events: EventLog, lines: Lines) -> None:
    events.observe_stop(StopResult("m", 0.31, was_running=True, processes_checked=2))
    events.observe_stop(StopResult("n", 0.0, was_running=False))
    events.observe_stop(StopResult("o", 2.5, was_running=True, processes_checked=3, survivors=[77]))
    assert lines.lines == [
        ("INFO", "m: gone in 0.31s (2 process(es) of the tree checked, none alive)"),
        ("ERROR", "o: NOT CLEAN in 2.50s (3 process(es) of the tree checked, STILL ALIVE: [77])"),
    ]


# -- end to end: a daemon whose model crashes, restarts, and gives up ---------------------------
def test_a_daemon_logs_a_crash_the_restart_and_a_stop_with_its_proof(tmp_path: Path) -> None:
    models = {"crashy": standin_entry("die_after_ready", env={"FAKE_VLLM_DIE_AFTER_S": "0.5"}),
              "ok": standin_entry()}
    with FileLoggedDaemon(config_for(tmp_path, models, max_restarts=1)) as daemon:
        daemon.client.up("ok")
        daemon.client.down("ok")
        daemon.client.up("crashy")
        assert wait_until(lambda: _state(daemon, "crashy") == "failed", 30), daemon.output()
    text = daemon.output()
    crashy = [line for line in _messages(text) if line.startswith("crashy: ")]
    expected = [
        r"crashy: start requested \(port \d+, CPU\)",
        r"crashy: launched pid \d+ \(log .*crashy\.1\.log\)",
        r"crashy: ready in \d+\.\ds at http://127\.0\.0\.1:\d+/v1",
        r"crashy: crashed with exit code 1 \(log .*crashy\.1\.log\): vllm serve exited with code 1 .*",
        r"crashy: restarting after backoff: .*restart 1/1 in .* \(log .*crashy\.1\.log\)",
        r"crashy: launched pid \d+ \(log .*crashy\.2\.log\)",
        r"crashy: ready in \d+\.\ds at .*",
        r"crashy: crashed with exit code 1 \(log .*crashy\.2\.log\): .*",
        r"crashy: failed: .*gave up after 1 restart\(s\) \(log .*crashy\.2\.log\)",
    ]
    assert _in_order(expected, crashy), "\n".join(crashy)
    assert any(re.fullmatch(r"ok: gone in \d+\.\d\ds \(\d+ process\(es\) of the tree checked, none alive\)", line)
               for line in _messages(text)), text
    assert "load stage 'loading weights'" in text
    assert "Traceback" not in text


def _state(daemon: FileLoggedDaemon, alias: str) -> str:
    return next(row["state"] for row in daemon.client.status()["models"] if row["alias"] == alias)


def _messages(text: str) -> list[str]:
    """The log lines without their timestamp and level."""
    return [re.sub(r"^\S+ \S+ [A-Z]+ ", "", line) for line in text.splitlines()]


def _in_order(patterns: list[str], lines: list[str]) -> bool:
    """Each pattern matches a line, in this order (other lines may come between)."""
    remaining = iter(lines)
    return all(any(re.fullmatch(pattern, line) for line in remaining) for pattern in patterns)
