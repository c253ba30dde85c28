"""The commands about the daemon process and the machine: `daemon` (run it here), `daemon stop`
(stop every model, then the daemon), `service install` (run it under systemd), and `gpus`
(what NVML sees).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import render
from .common import ConfigOption, JsonOption, fail, fast_client

if TYPE_CHECKING:
    from ..control.client import DaemonClient

LogFileOption = Annotated[
    Path | None,
    typer.Option("--log-file", help="Write the log to this file, rotated at 10 MiB (5 kept), instead of stderr. "
                 "`up` starts a daemon with <state_dir>/daemon.log.", show_default=False),
]

daemon_app = typer.Typer(
    invoke_without_command=True, no_args_is_help=False,
    help="Run the daemon in the foreground (what systemd runs): control socket + OpenAI gateway. "
         "`daemon stop` stops it.")


@daemon_app.callback(invoke_without_command=True)
def daemon(ctx: typer.Context, config: ConfigOption = None, log_file: LogFileOption = None) -> None:
    """Run the daemon in the foreground (what systemd runs): control socket + OpenAI gateway."""
    if ctx.invoked_subcommand is not None:
        ctx.obj = config  # `daemon --config X stop` means the daemon of X too
        return
    from ..runtime.statefile import StateDirBusy
    from ..serve.daemon import run_daemon

    try:
        raise typer.Exit(run_daemon(config, log_file))
    except StateDirBusy as error:
        raise fail(str(error)) from None


@daemon_app.command("stop")
def daemon_stop(ctx: typer.Context, config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Stop every model (printing each proof, like `down --all`), then the daemon; wait until it is gone."""
    from ..control.client import DaemonError, DaemonNotRunning
    from ..control.protocol import ErrorCode

    client = _client_for_stop(config or ctx.obj)
    try:
        with render.stopping(None) as progress:
            done = client.stop_daemon(on_event=progress.on_event, on_waiting=progress.on_waiting)
    except DaemonNotRunning:
        if json_output:
            typer.echo(json.dumps({"results": [], "pid": None}))
            return
        typer.echo("no bawt-vllm daemon is running")
        return
    except DaemonError as error:
        if error.code is ErrorCode.NO_ROUTE:
            raise fail("this daemon predates `daemon stop`: stop it with SIGTERM (its pid: `bawt-vllm status`); "
                       "it stops every model first") from None
        if error.code is ErrorCode.STOP_FAILED:
            _wait_gone(client, None)  # its pool is closed: it exits whatever went wrong
        raise fail(str(error)) from None
    if json_output:
        typer.echo(json.dumps({"results": done["results"], "pid": done["pid"]}, indent=1))
    else:
        render.print_stops(done["results"])
    _wait_gone(client, done["pid"])
    if not json_output:
        typer.echo(f"daemon (pid {done['pid']}) stopped")
    if not all(r["clean"] for r in done["results"] if r["was_running"]):
        raise typer.Exit(1)


def _client_for_stop(config: Path | None) -> DaemonClient:
    """The daemon of config (or of the system service, `DaemonClient.find`); with no models.yaml
    anywhere, the default state dir's daemon or the system one: stopping needs no config."""
    from ..config.paths import default_state_dir, find_config_path
    from ..config.problems import ConfigError
    from ..control.client import DaemonClient

    if config is None:
        try:
            find_config_path(None)
        except ConfigError:
            return DaemonClient.find(default_state_dir())
    return fast_client(config)


def _wait_gone(client: DaemonClient, pid: int | None) -> None:
    """Until the daemon's socket stops answering and its process has exited; exit 1 at the deadline."""
    from ..control.client import DAEMON_EXIT_TIMEOUT_S, DAEMON_LOG_NAME

    if not client.wait_gone(pid):
        who = "the daemon" if pid is None else f"the daemon (pid {pid})"
        own = client.socket_path == client.home_socket  # else the system service's, logging to the journal
        where = client.state_dir / DAEMON_LOG_NAME if own else "journalctl -u bawt-vllm"
        raise fail(f"{who} stopped every model but did not exit within {DAEMON_EXIT_TIMEOUT_S:.0f}s; "
                   f"see its log ({where})")


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


def gpus(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """GPUs as NVML sees them, with the processes on each and, from a running daemon, our models on
    each with their memory budgets."""
    from ..config.paths import find_config_path
    from ..config.problems import ConfigError
    from ..control.client import DaemonClient, DaemonError
    from ..runtime.gpus import describe, detect_inventory

    try:
        table = DaemonClient.for_config_file(find_config_path(config)).gpus()
    except (ConfigError, DaemonError, OSError, ValueError):  # no daemon, or no config: NVML directly
        table = describe(detect_inventory().snapshot())
    if json_output:
        typer.echo(json.dumps(table, indent=1))
        return
    if not table:
        typer.echo("no GPU (NVML found none): models run on the CPU")
        return
    render.print_gpus_table(table)
