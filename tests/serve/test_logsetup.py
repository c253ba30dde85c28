"""Where the daemon's log goes and how it looks (supervisor/serve/logsetup.py): journal priorities when
stderr is systemd's journal stream, a rotated file when the CLI starts it, timestamps otherwise;
and a start that fails says why in one line, in the foreground and through `up`."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bawt_vllm.supervisor.serve import logsetup
from bawt_vllm.supervisor.serve.logsetup import JournalFormatter, log_handler, syslog_priority, writes_to_journal
from daemon_harness import config_for
from helpers import daemon_pid, standin_entry, stop_daemon

CLI = [sys.executable, "-m", "bawt_vllm.supervisor.cli"]


def record(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord("t", level, __file__, 1, message, None, None)


def journal_value(path: Path) -> str:
    status = os.stat(path)
    return f"{status.st_dev}:{status.st_ino}"


def test_syslog_priorities_follow_sd_daemon() -> None:
    assert [syslog_priority(level) for level in (logging.ERROR, logging.WARNING, logging.INFO, logging.DEBUG)] \
        == [3, 4, 6, 7]
    assert syslog_priority(logging.CRITICAL) == 2
    assert syslog_priority(logging.INFO + 5) == 6  # a custom level takes the standard one below it


def test_journal_lines_carry_the_priority_on_every_line_and_no_timestamp() -> None:
    formatter = JournalFormatter()
    assert formatter.format(record(logging.WARNING, "m: unhealthy: 503")) == "<4>m: unhealthy: 503"
    assert formatter.format(record(logging.ERROR, "reload refused:\nline two")) == "<3>reload refused:\n<3>line two"


def test_the_journal_is_recognised_by_device_and_inode_not_by_the_variable_alone(tmp_path: Path) -> None:
    journal, elsewhere = tmp_path / "journal", tmp_path / "elsewhere"
    journal.write_text("")
    elsewhere.write_text("")
    with open(journal, "w") as stream, open(elsewhere, "w") as other:
        environ = {"JOURNAL_STREAM": journal_value(journal)}
        assert writes_to_journal(stream, environ)
        assert not writes_to_journal(other, environ)  # inherited variable, stderr redirected: not the journal
        assert not writes_to_journal(stream, {})
        assert not writes_to_journal(stream, {"JOURNAL_STREAM": "garbage"})
    assert not writes_to_journal(io.StringIO(), environ)  # no file descriptor at all


def test_the_handler_is_journal_or_timestamped_by_where_stderr_goes(tmp_path: Path) -> None:
    journal = tmp_path / "journal"
    with open(journal, "w") as stream:
        handler = log_handler(stream=stream, environ={"JOURNAL_STREAM": journal_value(journal)})
        handler.handle(record(logging.INFO, "m: ready in 1.0s"))
        plain = log_handler(stream=stream, environ={})
        plain.handle(record(logging.INFO, "m: stopped"))
    first, second = journal.read_text().splitlines()
    assert first == "<6>m: ready in 1.0s"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO m: stopped", second), second


def test_the_log_file_is_rotated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logsetup, "LOG_FILE_MAX_BYTES", 200)
    path = tmp_path / "state" / "daemon.log"
    handler = log_handler(path)
    try:
        for index in range(40):
            handler.handle(record(logging.INFO, f"line {index:02d} " + "x" * 40))
    finally:
        handler.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["daemon.log", *(f"daemon.log.{n}" for n in range(1, 6))]
    assert "line 39" in path.read_text()
    assert all(p.stat().st_size <= 200 for p in path.parent.iterdir())


# -- end to end ----------------------------------------------------------------------------------
@pytest.fixture
def taken_port() -> Iterator[int]:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        yield blocker.getsockname()[1]
    finally:
        blocker.close()


def test_a_taken_gateway_port_is_one_line_naming_the_port_and_the_setting(tmp_path: Path, taken_port: int) -> None:
    config = config_for(tmp_path, {"m": standin_entry()}, gateway_port=taken_port)
    daemon = subprocess.run([*CLI, "daemon", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert daemon.returncode == 1
    assert daemon.stdout == ""
    lines = [line for line in daemon.stderr.splitlines() if "NVML" not in line]  # a GPU-less host says so first
    assert len(lines) == 1, daemon.stderr
    assert f"127.0.0.1:{taken_port}" in lines[0] and "bawt_vllm.gateway_port" in lines[0], lines[0]
    assert "ERROR bawt-vllm daemon not started: the gateway cannot listen" in lines[0]


def test_under_the_journal_the_same_line_carries_the_error_priority(tmp_path: Path, taken_port: int) -> None:
    config = config_for(tmp_path, {"m": standin_entry()}, gateway_port=taken_port)
    journal = tmp_path / "journal"
    with open(journal, "w") as stderr:
        environ = {**os.environ, "JOURNAL_STREAM": journal_value(journal)}
        code = subprocess.run([*CLI, "daemon", "--config", str(config)], stdout=subprocess.DEVNULL, stderr=stderr,
                              env=environ, timeout=60).returncode
    assert code == 1
    lines = journal.read_text().splitlines()
    assert lines[-1].startswith("<3>bawt-vllm daemon not started: the gateway cannot listen on 127.0.0.1:")
    assert all(re.match(r"<[3467]>", line) for line in lines), lines


def test_up_that_starts_a_daemon_on_a_taken_port_shows_why(tmp_path: Path, taken_port: int) -> None:
    config = config_for(tmp_path, {"m": standin_entry()}, gateway_port=taken_port)
    up = subprocess.run([*CLI, "up", "m", "--config", str(config)], capture_output=True, text=True, timeout=90)
    assert up.returncode == 1
    assert "the daemon exited with code 1" in up.stderr
    assert f"the gateway cannot listen on 127.0.0.1:{taken_port}" in up.stderr, up.stderr
    assert "bawt_vllm.gateway_port" in up.stderr and "Traceback" not in up.stderr
    assert (tmp_path / "state" / "daemon.log").exists() and (tmp_path / "state" / "daemon.out").exists()


def test_a_daemon_started_by_up_writes_its_own_log_and_keeps_raw_output_apart(tmp_path: Path) -> None:
    config = config_for(tmp_path, {"m": standin_entry()})
    state = tmp_path / "state"
    up = subprocess.run([*CLI, "up", "m", "--config", str(config)], capture_output=True, text=True, timeout=90)
    pid = daemon_pid(state)
    try:
        assert up.returncode == 0, up.stderr
        assert f"log: {state / 'daemon.log'}" in up.stderr
        log = (state / "daemon.log").read_text()
        assert re.search(r"INFO m: ready in \d+\.\ds at http://", log), log
        assert (state / "daemon.out").read_text() == ""  # nothing printed outside logging
        status = json.loads(subprocess.run([*CLI, "status", "--json", "--config", str(config)], capture_output=True,
                                           text=True, timeout=60).stdout)
        assert status["daemon"]["pid"] == pid
    finally:
        stop_daemon(pid)
    assert "INFO m: gone in" in (state / "daemon.log").read_text()


def test_a_start_that_dies_before_logging_shows_its_raw_output(tmp_path: Path) -> None:
    from bawt_vllm.supervisor.control.client import DaemonError, start_daemon

    state = tmp_path / "state"
    state.mkdir()
    (state / "daemon.log").mkdir()  # the log file cannot be opened: the daemon can only say so on stderr
    config = config_for(tmp_path, {"m": standin_entry()})
    with pytest.raises(DaemonError) as failed:
        start_daemon(config, state / "control.sock", state / "daemon.log", timeout_s=60)
    assert "the daemon exited with code 1" in str(failed.value)
    assert f"cannot write its log {state / 'daemon.log'}" in str(failed.value), str(failed.value)
