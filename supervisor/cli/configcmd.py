"""`bawt-vllm config check` and `config init`: validate models.yaml (and whether it can run here),
or write a commented starter one.

`check` exits 2 when the file itself is wrong (every problem at once, each with file, model and
key) and 1 when it is valid but cannot run on this machine (no vLLM program, a local model
directory without config.json). `init` copies the starter file shipped in the package (the
repository's `models.yaml.example`) atomically, never over an existing file without --force.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    ConfigOption,
    JsonOption,
    config_not_found,
    fail,
    find_config_or_fail,
)

if TYPE_CHECKING:
    from ..config.problems import ConfigProblem
    from ..config.schema import Config

STARTER_NAME = "models.yaml.example"  # package data of bawt_vllm.supervisor.config


def config_check(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Validate models.yaml and check it can run here (vLLM found, local models complete): every problem at once."""
    path = _config_path(config, json_output)
    problems, loaded, code = _checked(path)
    if json_output:
        typer.echo(json.dumps(_check_report(path, problems, loaded), indent=1))
        raise typer.Exit(code)
    for problem in problems:
        typer.echo(str(problem), err=True)
    if loaded is None:
        raise fail(f"{len(problems)} problem(s) in {path}", code)
    if problems:
        raise fail(f"{path} is valid, but {len(problems)} problem(s) keep it from running here", code)
    typer.echo(f"{path}: ok, {len(loaded.models)} model(s) to supervise"
               + (f" ({', '.join(loaded.models)})" if loaded.models else ""))
    for alias, why in loaded.skipped.items():
        typer.echo(f"  skipped {alias}: {why}")


def _checked(path: Path) -> tuple[list[ConfigProblem], Config | None, int]:
    """(problems, the config when the file is valid, exit status): the file's own problems exit 2;
    a valid file that cannot run here (runnable_problems) exits 1."""
    from ..config.loading import check_config, load_config
    from ..config.runnable import runnable_problems

    problems = check_config(path)
    if problems:
        return problems, None, EXIT_USAGE
    loaded = load_config(path)
    problems = runnable_problems(loaded)
    return problems, loaded, EXIT_FAILED if problems else EXIT_OK


def _config_path(config: Path | None, json_output: bool) -> Path:
    """The models.yaml to check; none found exits 2 (with --json, the places looked in as problems)."""
    if not json_output:
        return find_config_or_fail(config)
    from ..config.paths import find_config_path
    from ..config.problems import ConfigError

    try:
        return find_config_path(config)
    except ConfigError as error:
        typer.echo(json.dumps(_check_report(None, error.problems, None), indent=1))
        raise config_not_found(error, config) from None


def _check_report(path: Path | None, problems: list[ConfigProblem], loaded: Config | None) -> dict[str, Any]:
    """`config check --json`: ok, the file, each problem as {file, alias, key, message}, and what it runs."""
    return {
        "ok": not problems,
        "config": None if path is None else str(path),
        "problems": [{"file": str(p.file), "alias": p.alias, "key": p.key, "message": p.message} for p in problems],
        "models": [] if loaded is None else list(loaded.models),
        "skipped": {} if loaded is None else dict(loaded.skipped),
    }


def config_init(
    path: Annotated[Path | None, typer.Argument(help="Where to write it (default: ~/.config/bawt-vllm/models.yaml, "
                                                "where bawt-vllm looks first).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file (the old one is kept as .bak).")]
    = False,
) -> None:
    """Write a commented starter models.yaml (every setting and key explained) and say what to do next."""
    from ..config.paths import own_models_path

    target = path.expanduser() if path is not None else own_models_path()
    if target.is_dir():
        raise fail(f"{target} is a directory: name the file to write, e.g. {target / 'models.yaml'}", EXIT_USAGE)
    if target.exists() and not force:
        raise fail(f"{target} already exists; edit it, or pass --force to replace it with the starter file")
    backup = _write_starter(target, force=force)
    typer.echo(f"wrote {target}: a starter models.yaml, every setting and key explained in its comments"
               + (f" (the old file is {backup})" if backup else ""))
    for line in next_steps(target):
        typer.echo(line)


def starter_text() -> str:
    """The starter models.yaml shipped with bawt-vllm (a copy of the repository's models.yaml.example)."""
    from importlib.resources import files

    from .. import config as config_package

    return files(config_package).joinpath(STARTER_NAME).read_text(encoding="utf-8")


def _write_starter(target: Path, *, force: bool) -> Path | None:
    """Write the starter file atomically (through a symlink, to its target); the backup of what it replaced."""
    from ..config.atomic import write_atomically

    real = target.resolve() if target.is_symlink() else target
    backup = real.with_name(real.name + ".bak") if force and real.exists() else None
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        if backup is not None:
            write_atomically(backup, real.read_bytes(), _new_file_mode())
        written = write_atomically(real, starter_text().encode("utf-8"), _new_file_mode(), overwrite=force)
    except OSError as error:
        raise fail(f"cannot write {target}: {error.strerror or error}") from None
    if not written:  # created by someone else since the check above
        raise fail(f"{target} already exists; edit it, or pass --force to replace it with the starter file")
    return backup


def _new_file_mode() -> int:
    """A new file's mode under this process's umask (what `touch` would make)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def next_steps(target: Path) -> list[str]:
    """What to run after `config init`; with --config when bawt-vllm would not find target by itself."""
    flag = "" if _found_by_default(target) else f" --config {target}"
    return [
        "next:",
        f"  1. edit it: keep or adapt the example models, or add one from Hugging Face: bawt-vllm add ORG/NAME{flag}",
        f"  2. bawt-vllm config check{flag}    (every problem at once; also whether vLLM and the models are found)",
        f"  3. bawt-vllm up ALIAS{flag}        (then `bawt-vllm ps`, `bawt-vllm chat ALIAS`)",
    ]


def _found_by_default(target: Path) -> bool:
    from ..config.paths import find_config_path
    from ..config.problems import ConfigError

    try:
        return find_config_path(None).resolve() == target.resolve()
    except ConfigError:
        return False
