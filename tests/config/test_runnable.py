"""config/runnable.py: what `config check` looks up on this machine (the vLLM program, local model dirs)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.config.runnable import executable_problem, runnable_problems


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def plain_file(path: Path) -> Path:
    path.write_text("x")
    return path


def model_dir(path: Path, *, with_config: bool = True) -> Path:
    path.mkdir(parents=True)
    if with_config:
        (path / "config.json").write_text("{}")
    return path


def config(tmp_path: Path, models: dict, **settings) -> Path:
    settings.setdefault("vllm_executable", str(executable(tmp_path / "vllm")))
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"bawt_vllm": {"state_dir": str(tmp_path / "state"), **settings},
                                    "models": models}))
    return path


def problems(path: Path, environ: dict[str, str] | None = None) -> list[tuple[str | None, str | None, str]]:
    return [(p.alias, p.key, p.message) for p in runnable_problems(load_config(path, environ={}), environ or {})]


def vllm_entry(model_id: str, **extra) -> dict:
    return {"type": "vllm", "model_id": model_id, "tool_support": "none", **extra}


def test_a_config_that_can_run_has_no_problems(tmp_path):
    local = model_dir(tmp_path / "models" / "tiny")
    path = config(tmp_path, {"hub": vllm_entry("Qwen/Qwen2.5-7B-Instruct"), "local": vllm_entry(str(local))})
    assert problems(path) == []


def test_a_vllm_executable_missing_from_path_is_a_problem_naming_the_key(tmp_path):
    path = config(tmp_path, {"m": vllm_entry("org/m")}, vllm_executable="vllm-that-is-nowhere")
    [(alias, key, message)] = problems(path, {"PATH": str(tmp_path)})
    assert (alias, key) == (None, "bawt_vllm.vllm_executable")
    assert "'vllm-that-is-nowhere' is not on PATH" in message and "full path" in message


def test_a_bare_name_found_on_path_is_fine(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "vllm")
    path = config(tmp_path, {"m": vllm_entry("org/m")}, vllm_executable="vllm")
    assert problems(path, {"PATH": f"/nonexistent{os.pathsep}{bin_dir}"}) == []
    assert len(problems(path, {"PATH": "/nonexistent"})) == 1


@pytest.mark.parametrize(("make", "says"), [
    (lambda d: d / "missing", "does not exist"),
    (lambda d: d, "is not a file"),  # a directory
    (lambda d: plain_file(d / "plain"), "is not executable"),
])
def test_a_path_to_something_not_runnable_is_a_problem(tmp_path, make, says):
    target = make(tmp_path)
    assert says in (executable_problem(str(target), "") or "")


def test_a_relative_path_is_a_problem_since_the_daemon_has_its_own_working_directory(tmp_path):
    assert "relative path" in (executable_problem("venv/bin/vllm", "") or "")
    assert executable_problem(str(executable(tmp_path / "vllm")), "") is None


def test_a_local_model_directory_without_config_json_is_a_problem(tmp_path):
    empty = model_dir(tmp_path / "half-copied", with_config=False)
    path = config(tmp_path, {"m": vllm_entry(str(empty))})
    [(alias, key, message)] = problems(path)
    assert (alias, key) == ("m", "model_id")
    assert "has no config.json" in message and str(empty) in message


def test_a_local_model_id_that_does_not_exist_or_is_a_file_is_a_problem(tmp_path):
    a_file = tmp_path / "weights.safetensors"
    a_file.write_text("x")
    path = config(tmp_path, {"gone": vllm_entry(str(tmp_path / "gone")), "file": vllm_entry(str(a_file))})
    found = {alias: message for alias, _key, message in problems(path)}
    assert "does not exist" in found["gone"] and "is not a directory" in found["file"]


def test_a_hub_id_is_not_looked_up_on_disk(tmp_path):
    path = config(tmp_path, {"m": vllm_entry("no-such-org/no-such-model")})
    assert problems(path) == []


def test_the_path_key_of_a_vllm_entry_is_checked_like_a_model_directory(tmp_path):
    empty = model_dir(tmp_path / "empty", with_config=False)
    path = config(tmp_path, {"m": vllm_entry("org/m", path=str(empty))})
    assert [(alias, key) for alias, key, _ in problems(path)] == [("m", "path")]


def test_a_gguf_path_that_is_not_a_file_is_a_problem(tmp_path):
    entry = {"type": "gguf", "backend": "vllm", "path": str(tmp_path / "model.gguf"), "tool_support": "none"}
    path = config(tmp_path, {"g": entry})
    [(alias, key, message)] = problems(path)
    assert (alias, key) == ("g", "path") and "is not a file" in message
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert problems(path) == []


def test_load_config_itself_does_not_look_for_the_program(tmp_path):
    """The daemon and the tests load configs whose program is a stand-in or not there yet."""
    path = config(tmp_path, {"m": vllm_entry(str(tmp_path / "nowhere"))}, vllm_executable="/nonexistent/vllm")
    assert load_config(path, environ={}).settings.vllm_executable == "/nonexistent/vllm"
