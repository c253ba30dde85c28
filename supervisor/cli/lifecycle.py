"""The commands that run models and watch them: `up`, `down`, `ps`, `status`, `logs`, `reload`.

Each asks the daemon through the control client (common.fast_client / daemon_client) and shows
the answer with render; the ones that can answer without a daemon read the config or the logs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import render
from .common import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ConfigOption,
    JsonOption,
    daemon_client,
    fail,
    fast_client,
    load_or_fail,
    require_known,
    say,
)

if TYPE_CHECKING:
    from ..config.schema import Config, ModelEntry
    from ..control.protocol import StopProof, UpDone


def up(
    model: Annotated[str, typer.Argument(help="Alias from models.yaml.")],
    config: ConfigOption = None,
    foreground: Annotated[bool, typer.Option("--foreground", help="Supervise in this terminal until Ctrl-C, "
                                             "without a daemon.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the daemon's result as JSON on stdout "
                                              "(the load's progress still goes to stderr).")] = False,
) -> None:
    """Load MODEL (starting the daemon if none runs) and wait until it is ready.

    Ctrl-C stops the waiting, not the load: `bawt-vllm down MODEL` cancels that."""
    if foreground and json_output:
        raise fail("--json reports the daemon's result; it cannot be combined with --foreground", EXIT_USAGE)
    loaded = load_or_fail(config)
    require_known(loaded, model)
    if foreground:
        raise typer.Exit(_run_in_foreground(loaded, model))
    result, progress = load_with_progress(loaded, model, json_output=json_output)
    if json_output:
        typer.echo(json.dumps(result, indent=1))
        return
    typer.echo(render.ready_line(model, result["model"], progress))
    typer.echo(f"gateway: {result['gateway']}  (model: {model})")
    typer.echo("llm-bawt entry:\n" + render.indent(result["llm_bawt_entry"]))


def load_with_progress(loaded: Config, model: str, *, json_output: bool = False) -> tuple[UpDone, render.Progress]:
    """Have the daemon (started if none runs) load model, showing the load on stderr; its result.

    A failed load exits 1 (with --json, its result line on stdout too); Ctrl-C exits 130 and
    says that the load goes on in the daemon."""
    from ..control.client import DaemonError

    _say_if_weights_missing(loaded.entry(model))
    client = daemon_client(loaded, autostart=True)
    try:
        with render.loading(model) as progress:
            # models.yaml may know model while the running daemon read an older file: catch it up.
            result = client.up(model, on_event=progress.on_event, on_waiting=progress.on_waiting,
                               reload_if_unknown=_say_reloaded)
    except DaemonError as error:
        if json_output:
            typer.echo(json.dumps({"done": True, "ok": False, "error": str(error), "code": error.code.value}))
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        typer.echo(f"stopped waiting; {model} keeps loading in the daemon — `bawt-vllm down {model}` cancels it",
                   err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    return result, progress


def _run_in_foreground(loaded: Config, model: str) -> int:
    """Supervise model in this process until a signal; its exit status."""
    import asyncio

    from ..runtime.statefile import StateDirBusy
    from ..serve.foreground import run_foreground

    try:
        return asyncio.run(run_foreground(loaded, model, say))
    except StateDirBusy as error:
        raise fail(f"{error}; stop it first (`bawt-vllm daemon stop` for a daemon, Ctrl-C for a foreground `up`), "
                   "or drop --foreground to ask the daemon") from None


def _say_reloaded(changes: list[str]) -> None:
    for change in changes:
        typer.echo(f"daemon reloaded the config: {change}", err=True)


def _say_if_weights_missing(entry: ModelEntry) -> None:
    from ..runtime.weights import weights_present

    try:
        present = weights_present(entry)
    except Exception:  # the check is advice only; the load itself reports real problems
        return
    if not present:
        typer.echo(f"{entry.alias}: weights are not on disk yet; they will be downloaded before loading "
                   f"(`bawt-vllm pull {entry.alias}` does it ahead, with progress)", err=True)


def down(
    model: Annotated[str | None, typer.Argument(help="Alias to stop.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Stop every model.")] = False,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop MODEL (or --all) and print the proof that it is gone."""
    if (model is None) == (not all_models):
        raise fail("name a model or pass --all", 2)
    from ..control.client import DaemonError, DaemonNotRunning

    client = fast_client(config)
    try:
        with render.stopping(model) as progress:
            results = client.down(model, all_models=all_models, on_event=progress.on_event,
                                  on_waiting=progress.on_waiting)
    except DaemonNotRunning:
        if model is not None:
            require_known(load_or_fail(config), model)
        results = []
    except DaemonError as error:
        raise fail(str(error)) from None
    if json_output:
        typer.echo(json.dumps(results, indent=1))
        return
    _print_stops(results)


def _print_stops(results: list[StopProof]) -> None:
    """Each stop's proof; exit 1 if one of them did not end clean."""
    render.print_stops(results)
    if not all(r["clean"] for r in results if r["was_running"]):
        raise typer.Exit(1)


def ps(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Every configured model: state, GPU, port, pid, uptime, VRAM, in flight, idle, restarts, last error.

    IDLE is blank while a model loads or serves a request; UNTIL is the time left before its idle
    unload (bawt_vllm.idle_ttl_s or the entry's). Without a daemon every model is listed as
    stopped (exit status 0; a hint on stderr)."""
    from ..control.client import DaemonError, DaemonNotRunning

    try:
        rows = fast_client(config).status()["models"]
    except DaemonNotRunning:
        rows = [{"alias": alias, "state": "stopped"} for alias in load_or_fail(config).models]
        typer.echo("no daemon is running: `bawt-vllm up MODEL` starts one", err=True)
    except DaemonError as error:  # a daemon that is not ours to use, or that does not answer
        raise fail(str(error)) from None
    if json_output:
        typer.echo(json.dumps(rows, indent=1))
        return
    render.print_models_table(rows)


def status(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """The daemon: pid, gateway, config, uptime, and each model's state."""
    from ..control.client import DaemonError, DaemonNotRunning

    try:
        payload = fast_client(config).status()
    except DaemonNotRunning:
        if json_output:
            typer.echo(json.dumps({"daemon": None, "models": []}))
        raise fail("no daemon is running (`bawt-vllm up MODEL` or `bawt-vllm daemon` starts one)") from None
    except DaemonError as error:
        raise fail(str(error)) from None
    if json_output:
        typer.echo(json.dumps(payload, indent=1))
        return
    for line in render.daemon_summary(payload):
        typer.echo(line)


def logs(
    model: Annotated[str, typer.Argument(help="Alias.")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False,
    start: Annotated[int | None, typer.Option("--start", help="Which start's log (1 = the first).")] = None,
    lines: Annotated[int, typer.Option("--lines", "-n", help="How many lines of the end to show.")] = 200,
    config: ConfigOption = None,
) -> None:
    """Print MODEL's vllm serve log (the current start's, or --start N)."""
    from ..control.client import DaemonError, DaemonNotRunning

    try:
        for chunk in fast_client(config).logs(model, start=start, lines=lines, follow=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except DaemonNotRunning:
        loaded = load_or_fail(config)
        require_known(loaded, model)
        _print_log_file(loaded, model, start, lines)
    except DaemonError as error:
        raise fail(str(error)) from None


def _print_log_file(loaded: Config, model: str, start: int | None, lines: int) -> None:
    """Without a daemon: the end of the log file of model's start (latest, or number start)."""
    from ..runtime.logfiles import find_log, log_dir, read_log_tail

    logs = log_dir(Path(loaded.settings.state_dir))
    path = find_log(logs, model, start)
    if path is None:
        raise fail(f"{model} has no log in {logs}" + ("" if start is None else f" for start {start}"))
    typer.echo("\n".join(read_log_tail(path, lines)))


def reload(config: ConfigOption = None) -> None:
    """Make the daemon re-read models.yaml (like SIGHUP): changed or removed models are stopped."""
    from ..control.client import DaemonError

    try:
        changes = fast_client(config).reload()
    except DaemonError as error:
        raise fail(str(error)) from None
    for change in changes or ["nothing changed for running models"]:
        typer.echo(change)
    if any(change.startswith("refused") for change in changes):
        raise typer.Exit(1)
