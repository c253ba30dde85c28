"""`config init` (the starter models.yaml, atomic, never over a file without --force), `config check`
(--json, and whether the config can run here), and the hint when no models.yaml is found."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from bawt_vllm.supervisor.cli import app as app_module
from bawt_vllm.supervisor.cli.configcmd import starter_text
from bawt_vllm.supervisor.config.loading import check_config
from helpers import standin_entry, standin_settings, write_models_yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
NO_CONFIG_VARS = ("BAWT_VLLM_CONFIG", "LLM_BAWT_MODELS_CONFIG_PATH")


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app_module.app, list(args), prog_name="bawt-vllm", env=env)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty XDG config home, and no models.yaml named by the environment."""
    for name in NO_CONFIG_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config-home"))
    monkeypatch.setattr("bawt_vllm.supervisor.config.paths.SYSTEM_CONFIG_PATH", tmp_path / "etc" / "models.yaml",
                        raising=False)
    return tmp_path / "config-home"


# -- config init ---------------------------------------------------------------------------------
def test_init_writes_the_starter_file_where_bawt_vllm_looks_first(home):
    done = invoke("config", "init")
    target = home / "bawt-vllm" / "models.yaml"
    assert done.exit_code == 0, done.output
    assert target.read_text() == (REPO / "models.yaml.example").read_text()
    assert f"wrote {target}" in done.stdout and "next:" in done.stdout
    assert "bawt-vllm config check" in done.stdout and "--config" not in done.stdout  # found by default
    assert check_config(target) == [], "the starter file is a valid models.yaml"
    assert [p.name for p in target.parent.iterdir()] == ["models.yaml"], "no temporary file is left"


def test_init_to_a_path_says_to_pass_that_path(home, tmp_path):
    target = tmp_path / "elsewhere" / "models.yaml"
    done = invoke("config", "init", str(target))
    assert done.exit_code == 0, done.output
    assert target.read_text() == starter_text()
    assert f"bawt-vllm config check --config {target}" in done.stdout
    assert f"bawt-vllm up ALIAS --config {target}" in done.stdout


def test_init_never_overwrites_without_force(home, tmp_path):
    target = tmp_path / "models.yaml"
    target.write_text("models: {}  # mine\n")
    refused = invoke("config", "init", str(target))
    assert refused.exit_code == 1 and "already exists" in refused.stderr and "--force" in refused.stderr
    assert target.read_text() == "models: {}  # mine\n"


def test_init_force_replaces_and_keeps_the_old_file(home, tmp_path):
    target = tmp_path / "models.yaml"
    target.write_text("models: {}  # mine\n")
    done = invoke("config", "init", str(target), "--force")
    assert done.exit_code == 0, done.output
    assert target.read_text() == starter_text()
    assert (tmp_path / "models.yaml.bak").read_text() == "models: {}  # mine\n"
    assert "models.yaml.bak" in done.stdout


def test_init_writes_through_a_symlink(home, tmp_path):
    real = tmp_path / "dotfiles" / "models.yaml"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "models.yaml"
    link.symlink_to(real)
    assert invoke("config", "init", str(link), "--force").exit_code == 0
    assert link.is_symlink() and real.read_text() == starter_text()


def test_init_into_a_directory_is_bad_usage(home, tmp_path):
    done = invoke("config", "init", str(tmp_path))
    assert done.exit_code == 2 and "is a directory" in done.stderr


def test_init_gets_the_mode_the_umask_allows(home, tmp_path):
    previous = os.umask(0o077)
    try:
        assert invoke("config", "init", str(tmp_path / "models.yaml")).exit_code == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "models.yaml").stat().st_mode) == 0o600


def test_the_packaged_starter_file_is_the_top_level_example():
    top, packaged = REPO / "models.yaml.example", REPO / "supervisor" / "config" / "models.yaml.example"
    assert packaged.read_bytes() == top.read_bytes(), \
        "models.yaml.example changed: cp models.yaml.example supervisor/config/models.yaml.example"
    assert starter_text() == top.read_text()


# -- no models.yaml anywhere ---------------------------------------------------------------------
@pytest.mark.parametrize("args", [["ps"], ["status"], ["up", "m"], ["config", "check"], ["config", "check", "--json"]])
def test_no_models_yaml_says_how_to_make_one_once(home, args):
    done = invoke(*args)
    assert done.exit_code == 2
    assert "no models.yaml found" in done.stderr and done.stderr.count("`bawt-vllm config init`") == 1, done.stderr


def test_a_missing_explicit_config_suggests_init_of_that_path(home, tmp_path):
    missing = tmp_path / "nope.yaml"
    done = invoke("ps", "--config", str(missing))
    assert done.exit_code == 2 and f"`bawt-vllm config init {missing}`" in done.stderr


# -- config check --------------------------------------------------------------------------------
def runnable(tmp_path: Path, **settings: Any) -> Path:
    return write_models_yaml(tmp_path / "models.yaml", {"m": standin_entry()}, **standin_settings(tmp_path, **settings))


def test_check_json_of_a_good_config(tmp_path):
    done = invoke("config", "check", "--json", "--config", str(runnable(tmp_path)))
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"ok": True, "config": str(tmp_path / "models.yaml"), "problems": [],
                                       "models": ["m"], "skipped": {}}


def test_check_json_lists_each_problem_with_file_alias_and_key(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"m": {"type": "vllm", "max_model_len": -1}}}))
    done = invoke("config", "check", "--json", "--config", str(path))
    assert done.exit_code == 2
    report = json.loads(done.stdout)
    assert report["ok"] is False and report["config"] == str(path)
    assert all(set(problem) == {"file", "alias", "key", "message"} for problem in report["problems"])
    assert {(p["alias"], p["key"]) for p in report["problems"]} >= {("m", "model_id"), ("m", "max_model_len")}


def test_check_reports_a_missing_vllm_program_as_a_problem_exit_1(tmp_path):
    path = runnable(tmp_path, vllm_executable=str(tmp_path / "no-vllm-here"))
    text = invoke("config", "check", "--config", str(path))
    assert text.exit_code == 1
    assert "bawt_vllm.vllm_executable" in text.stderr and "keep it from running here" in text.stderr
    report = json.loads(invoke("config", "check", "--json", "--config", str(path)).stdout)
    assert report["ok"] is False and report["models"] == ["m"]
    assert [(p["alias"], p["key"]) for p in report["problems"]] == [(None, "bawt_vllm.vllm_executable")]


def test_check_reports_a_model_directory_without_config_json(tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    path = write_models_yaml(tmp_path / "models.yaml", {"m": standin_entry(model_id=str(empty))},
                             **standin_settings(tmp_path))
    done = invoke("config", "check", "--config", str(path))
    assert done.exit_code == 1 and "models.m.model_id" in done.stderr and "config.json" in done.stderr
    (empty / "config.json").write_text("{}")
    assert invoke("config", "check", "--config", str(path)).exit_code == 0
