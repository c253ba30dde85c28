"""The `bawt-vllm` program's entry point (`main`): `ps` and `status` in their plain forms run here,
without importing the typer app (app.py and every command module) or building it.

`ps` is what a user (or a status bar) runs most, and it must answer in well under 200 ms. Building
and invoking the typer command costs time that grows with typer's own choices (typer 0.29 builds a
pydantic TypeAdapter per parameter: about +150 ms), so the plain forms are parsed here by hand:

    ps | status   [--json]   [-c PATH | --config PATH | --config=PATH]   (each at most once)

Anything else (`-h`, an unknown or repeated flag, a value that starts with '-') goes to the typer
app (`app.run`), so every error message and all help stay typer's. The commands themselves are
the same functions typer would call.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import typer

from . import lifecycle
from .common import EXIT_INTERRUPTED

COMMANDS: dict[str, Callable[..., None]] = {"ps": lifecycle.ps, "status": lifecycle.status}
CONFIG_FLAGS = ("-c", "--config")


@dataclass(frozen=True)
class FastCall:
    command: str
    config: Path | None = None
    json_output: bool = False


def parse(argv: Sequence[str]) -> FastCall | None:
    """The call argv asks for when it is a plain `ps` or `status`; None for anything else."""
    if not argv or argv[0] not in COMMANDS:
        return None
    config: str | None = None
    json_output = False
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--json" and not json_output:
            json_output = True
        elif arg in CONFIG_FLAGS and config is None:
            config = next(rest, None)
            if not config or config.startswith("-"):
                return None
        elif arg.startswith("--config=") and config is None:
            config = arg.partition("=")[2]
            if not config:
                return None
        else:
            return None
    return FastCall(argv[0], None if config is None else Path(config), json_output)


def run(argv: Sequence[str]) -> int | None:
    """Run argv if it is a plain `ps` or `status`: its exit status; None when typer must handle it."""
    call = parse(argv)
    if call is None:
        return None
    try:
        COMMANDS[call.command](config=call.config, json_output=call.json_output)
    except typer.Exit as done:
        return done.exit_code
    return 0


def main() -> None:
    """`bawt-vllm`: a plain `ps` or `status` answered here, anything else by the typer app."""
    try:
        code = run(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    if code is not None:
        sys.exit(code)
    from .app import run as run_app

    run_app()
