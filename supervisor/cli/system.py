"""The commands about the daemon process and the machine: `daemon` (run it here), `service install`
(run it under systemd), and `gpus` (what NVML sees).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from . import render
from .common import ConfigOption, JsonOption, fail


def daemon(config: ConfigOption = None) -> None:
    """Run the daemon in the foreground (what systemd runs): control socket + OpenAI gateway."""
    from ..runtime.statefile import StateDirBusy
    from ..serve.daemon import run_daemon

    try:
        raise typer.Exit(run_daemon(config))
    except StateDirBusy as error:
        raise fail(str(error)) from None


def service_install(
    user: Annotated[bool, typer.Option("--user", help="A user unit (~/.config/systemd/user) instead of a system one.")]
    = False,
    config: ConfigOption = None,
    unit_dir: Annotated[Path | None, typer.Option("--unit-dir", help="Where to write the unit.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the unit; write nothing.")] = False,
) -> None:
    """Write the systemd unit with this installation's paths and print the systemctl commands."""
    from ..serve.systemd import default_executable, install_service, render_unit

    config_path = config.expanduser().resolve() if config else None
    try:
        result = install_service(user=user, config=config_path, unit_dir=unit_dir, dry_run=dry_run)
    except (OSError, ValueError) as error:
        raise fail(str(error)) from None
    if dry_run:
        typer.echo(render_unit(user=user, executable=default_executable(), config=config_path))
        typer.echo(f"# would be written to {result.unit_path}", err=True)
        return
    typer.echo(f"wrote {result.unit_path}")
    if result.env_path is not None:
        typer.echo(f"wrote {result.env_path} (settings and secrets; mode 0600)")
    typer.echo("next:")
    for command in result.commands:
        typer.echo(f"  {command}")


def gpus(json_output: JsonOption = False) -> None:
    """GPUs as NVML sees them, with the processes on each."""
    from ..runtime.gpus import describe, detect_inventory

    table = describe(detect_inventory().snapshot())
    if json_output:
        typer.echo(json.dumps(table, indent=1))
        return
    if not table:
        typer.echo("no GPU (NVML found none): models run on the CPU")
        return
    render.print_gpus_table(table)
