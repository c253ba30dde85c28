"""Log files of `vllm serve` starts (supervisor/runtime/logfiles.py): naming, keeping, finding, following."""

from __future__ import annotations

from pathlib import Path

from bawt_vllm.supervisor.runtime.logfiles import LOG_FILES_KEPT, LogFollower, find_log, next_log_path


def test_find_log_never_leaves_the_log_directory(tmp_path: Path) -> None:
    logs = tmp_path / "state" / "logs"
    logs.mkdir(parents=True)
    (tmp_path / "state" / "secret.1.log").write_text("not a model's log")
    assert find_log(logs, "../secret", 1) is None
    assert find_log(logs, "../secret") is None


def test_each_start_gets_the_next_number_and_old_logs_are_pruned(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    for _ in range(LOG_FILES_KEPT + 3):
        next_log_path(logs, "m").write_text("started\n")
    (logs / "m2.1.log").write_text("another model's log\n")
    numbers = sorted(int(p.name.split(".")[1]) for p in logs.glob("m.*.log"))
    assert numbers == list(range(4, LOG_FILES_KEPT + 4))
    assert find_log(logs, "m", 4) == logs / "m.4.log"
    assert find_log(logs, "m", 1) is None
    assert (logs / "m2.1.log").exists(), "pruning touched another alias's logs"


def test_a_follower_from_the_end_reads_only_what_comes_after(tmp_path: Path) -> None:
    path = tmp_path / "m.1.log"
    path.write_bytes(b"old line\n")
    follower = LogFollower(path, from_end=True)
    try:
        assert follower.read_chunk() == b""
        with open(path, "ab") as log:
            log.write(b"new \rprogress\rline\n")
        assert follower.read_chunk() == b"new \rprogress\rline\n"
        assert follower.read_chunk() == b""
    finally:
        follower.close()


def test_a_follower_splits_lines_on_every_line_ending_and_keeps_a_tail(tmp_path: Path) -> None:
    path = tmp_path / "m.1.log"
    follower = LogFollower(path, tail_lines=2)
    try:
        assert follower.read() == [], "a log not yet created reads as empty"
        path.write_bytes(b"one\r\ntwo\rthree\nfour")
        assert follower.read() == ["one", "two", "three"]
        assert follower.tail() == ["two", "three", "four"], "the tail holds the last lines and the unfinished one"
    finally:
        follower.close()
