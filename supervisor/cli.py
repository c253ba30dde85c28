"""The `bawt-vllm` command line: thin, over the same Python API a script would use.

Heavy modules (aiohttp, psutil, pydantic models, the openai SDK) are imported inside the
commands that need them, so `bawt-vllm ps` and `--help` start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Supervise `vllm serve` processes: start, watch, route, and fully stop local LLMs.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect models.yaml.")
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="models.yaml (default: $BAWT_VLLM_CONFIG, ~/.config/bawt-vllm/models.yaml, "
                 "then llm-bawt's models.yaml)", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"bawt-vllm: {message}", err=True)
    return typer.Exit(code)


def _load(config_path: Path | None) -> Any:
    from .config import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as error:
        raise _fail(str(error), 2) from None


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate models.yaml and print every problem at once."""
    from .config import ConfigError, check_config, find_config_path

    try:
        path = find_config_path(config)
        problems = check_config(path)
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    if problems:
        for problem in problems:
            typer.echo(str(problem), err=True)
        raise _fail(f"{len(problems)} problem(s) in {path}", 2)
    loaded = _load(path)
    typer.echo(f"{path}: ok, {len(loaded.models)} model(s) to supervise"
               + (f" ({', '.join(loaded.models)})" if loaded.models else ""))
    for alias, why in loaded.skipped.items():
        typer.echo(f"  skipped {alias}: {why}")


@app.command()
def up(
    model: Annotated[str, typer.Argument(help="Alias from models.yaml.")],
    config: ConfigOption = None,
    foreground: Annotated[bool, typer.Option("--foreground", "-f", help="Supervise in this terminal until Ctrl-C.")]
    = False,
) -> None:
    """Start MODEL and wait until it is ready."""
    import asyncio

    from .config import UnknownModelError
    from .foreground import run_foreground

    loaded = _load(config)
    try:
        loaded.entry(model)
    except UnknownModelError as error:
        raise _fail(str(error.args[0] if error.args else error), 2) from None
    code = asyncio.run(run_foreground(loaded, model, _say))
    raise typer.Exit(code)


@app.command()
def gpus(json_output: JsonOption = False) -> None:
    """GPUs as NVML sees them."""
    from .gpus import describe, detect_inventory

    table = describe(detect_inventory().snapshot())
    if json_output:
        typer.echo(json.dumps(table, indent=1))
        return
    if not table:
        typer.echo("no GPU (NVML found none): models run on the CPU")
        return
    from rich.console import Console
    from rich.table import Table

    view = Table("GPU", "name", "used", "total", "processes")
    for gpu in table:
        procs = ", ".join(str(p["pid"]) for p in gpu.get("processes", []))
        view.add_row(str(gpu["index"]), gpu["name"], _gib(gpu["used_bytes"]), _gib(gpu["total_bytes"]), procs)
    Console().print(view)


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.1f} GiB"


def _say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
