"""The habits of the command line: --version, -h everywhere, completion, examples in every
command's help, documented exit codes, one meaning per short flag, and the `ps`/`status` fast path."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from bawt_vllm.supervisor.cli import app as app_module
from bawt_vllm.supervisor.cli import examples, fastpath
from bawt_vllm.supervisor.cli.fastpath import FastCall
from helpers import standin_entry, standin_settings, write_models_yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "bawt_vllm.supervisor.cli"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def invoke(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app_module.app, list(args), prog_name="bawt-vllm", env=env)


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command's path under the root (groups included), e.g. ('config', 'check').

    Duck-typed: typer 0.26+ builds on its own copy of click, not the click package."""
    paths = [prefix] if prefix else []
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            paths += command_paths(sub, (*prefix, name))
    return paths


def leaf_paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app_module.app)
    paths = command_paths(root)
    return [path for path in paths if not any(other[: len(path)] == path and other != path for other in paths)]


ALL_PATHS = command_paths(typer.main.get_command(app_module.app))


@pytest.fixture
def daemonless_config(tmp_path: Path) -> Path:
    return write_models_yaml(tmp_path / "models.yaml", {"a": standin_entry(), "b": standin_entry()},
                             **standin_settings(tmp_path))


# -- version, help, completion -------------------------------------------------------------------
def test_version_prints_the_installed_distributions_version():
    expected = importlib.metadata.version("bawt-vllm")
    done = cli("--version")
    assert (done.returncode, done.stdout) == (0, f"bawt-vllm {expected}\n"), done.stderr
    import bawt_vllm.supervisor as supervisor

    assert supervisor.__version__ == expected


def test_the_version_is_read_only_when_asked_for():
    """importlib.metadata is not imported by `import bawt_vllm.supervisor` (the CLI's fast paths)."""
    done = subprocess.run([sys.executable, "-c", "import sys, bawt_vllm.supervisor; "
                           "print('importlib.metadata' in sys.modules)"], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize("path", ALL_PATHS, ids=" ".join)
def test_dash_h_is_help_on_every_command(path):
    short, long = invoke(*path, "-h"), invoke(*path, "--help")
    assert short.exit_code == 0, short.output
    assert "Usage: bawt-vllm" in short.output and short.output == long.output


def test_top_level_help_documents_the_exit_codes_and_completion():
    shown = invoke("-h").output
    for words in ("0 ok", "1 the operation failed", "2 bad usage", "130 interrupted"):
        assert words in shown, shown
    assert "--install-completion" in shown and "--show-completion" in shown
    assert "--version" in shown


def test_the_readme_documents_the_same_exit_codes():
    readme = (REPO / "README.md").read_text()
    for line in ("| 0 | ", "| 1 | ", "| 2 | ", "| 130 | "):
        assert line in readme, f"README's exit status table lacks {line!r}"
    assert "bawt-vllm --install-completion" in readme


def test_shell_completion_completes_commands():
    done = subprocess.run([*CLI], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                          env={**os.environ, "_BAWT_VLLM_COMPLETE": "complete_bash",
                               "COMP_WORDS": "bawt-vllm config i", "COMP_CWORD": "2"})
    assert done.returncode == 0 and done.stdout.split() == ["init"], done.stderr


# -- examples ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", leaf_paths(), ids=" ".join)
def test_every_command_has_examples_in_its_help(path):
    assert " ".join(path) in examples.EXAMPLES, f"add examples for `{' '.join(path)}` to cli/examples.py"
    shown = invoke(*path, "-h").output
    assert "Examples:" in shown and f"$ bawt-vllm {' '.join(path)}" in shown, shown


def example_args(line: str) -> list[str]:
    """An example's arguments: before a pipe or a `   (comment)`, without the program name."""
    command = line.split(" | ")[0].split("   (")[0]
    words = shlex.split(command)
    assert words[0] == "bawt-vllm", line
    return words[1:]


@pytest.mark.parametrize(("path", "line"), [(p, line) for p, lines in examples.EXAMPLES.items() for line in lines])
def test_every_example_names_a_real_command_and_real_options(path, line):
    args = example_args(line)
    assert " ".join(args).startswith(path)
    parsed = invoke(*args, "--help")  # an unknown option or command fails before --help is acted on
    assert parsed.exit_code == 0, parsed.output


# -- flags -----------------------------------------------------------------------------------------
def test_each_short_flag_means_one_thing_across_commands():
    meanings: dict[str, set[str]] = {}
    root = typer.main.get_command(app_module.app)
    ctx = root.context_class(root)
    for path in [(), *ALL_PATHS]:
        command = root
        for name in path:
            command = command.commands[name]
        for param in command.get_params(ctx):
            longs = [opt for opt in param.opts if opt.startswith("--")]
            for opt in param.opts:
                if not opt.startswith("--"):
                    meanings.setdefault(opt, set()).update(longs)
    clashes = {short: longs for short, longs in meanings.items() if len(longs) > 1}
    assert not clashes, clashes
    assert meanings["-f"] == {"--follow"}


def test_up_has_no_short_foreground_flag():
    refused = invoke("up", "m", "-f")
    assert refused.exit_code == 2 and "No such option" in refused.output


# -- the ps / status fast path -------------------------------------------------------------------
@pytest.mark.parametrize(("argv", "call"), [
    (["ps"], FastCall("ps")),
    (["ps", "--json"], FastCall("ps", None, True)),
    (["status", "-c", "x.yaml"], FastCall("status", Path("x.yaml"))),
    (["ps", "--config", "x.yaml", "--json"], FastCall("ps", Path("x.yaml"), True)),
    (["ps", "--config=x.yaml"], FastCall("ps", Path("x.yaml"))),
    (["ps", "-h"], None),
    (["ps", "--help"], None),
    (["ps", "--json", "--json"], None),
    (["ps", "-c", "a", "-c", "b"], None),
    (["ps", "-c"], None),
    (["ps", "-c", "--json"], None),
    (["ps", "--config="], None),
    (["ps", "extra"], None),
    (["ps", "-cx.yaml"], None),
    (["up", "m"], None),
    (["--version"], None),
    ([], None),
])
def test_the_fast_path_takes_only_the_plain_forms(argv, call):
    assert fastpath.parse(argv) == call


def test_the_program_answers_plain_ps_without_importing_the_typer_app(daemonless_config):
    script = ("import json, sys\n"
              "from bawt_vllm.supervisor.cli import fastpath\n"
              f"sys.argv = ['bawt-vllm', 'ps', '--json', '--config', {str(daemonless_config)!r}]\n"
              "try:\n    fastpath.main()\n"
              "except SystemExit as done:\n"
              "    print(json.dumps({'code': done.code, 'app': 'bawt_vllm.supervisor.cli.app' in sys.modules}),"
              " file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stderr.splitlines()[-1]) == {"code": 0, "app": False}, done.stderr
    assert [row["alias"] for row in json.loads(done.stdout)] == ["a", "b"]


def test_the_program_hands_anything_else_to_the_typer_app(daemonless_config, monkeypatch):
    ran: list[bool] = []
    monkeypatch.setattr(app_module, "run", lambda: ran.append(True))
    monkeypatch.setattr(sys, "argv", ["bawt-vllm", "ps", "-h"])
    fastpath.main()
    assert ran == [True]


def test_the_installed_script_is_the_fast_path():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["bawt-vllm"] == "bawt_vllm.supervisor.cli.fastpath:main"
    assert "from .fastpath import main" in (REPO / "supervisor" / "cli" / "__main__.py").read_text()


@pytest.mark.parametrize("args", [["ps"], ["ps", "--json"], ["status"], ["status", "--json"]])
def test_the_fast_path_answers_exactly_as_typer_does(daemonless_config, args):
    fast = cli(*args, "--config", str(daemonless_config))
    typed = invoke(*args, "--config", str(daemonless_config))
    assert (fast.returncode, fast.stdout, fast.stderr) == (typed.exit_code, typed.stdout, typed.stderr)
