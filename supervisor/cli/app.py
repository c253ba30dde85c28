"""The `bawt-vllm` command line: thin, over the same Python API a script would use.

Heavy modules (aiohttp, psutil, pydantic models, the openai SDK) are imported inside the
commands that need them, so `bawt-vllm ps` and `--help` start fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
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
STILL_WAITING_EVERY_S = 30.0  # off a terminal, `up`/`down` print a "still loading" line this often


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"bawt-vllm: {message}", err=True)
    return typer.Exit(code)


def _load(config_path: Path | None) -> Any:
    from ..config.loading import ConfigError, load_config

    try:
        return load_config(config_path)
    except ConfigError as error:
        raise _fail(str(error), 2) from None


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate models.yaml and print every problem at once."""
    from ..config.loading import ConfigError, check_config, find_config_path

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
    foreground: Annotated[bool, typer.Option("--foreground", "-f", help="Supervise in this terminal until Ctrl-C, "
                                             "without a daemon.")] = False,
) -> None:
    """Load MODEL (starting the daemon if none runs) and wait until it is ready."""
    loaded = _load(config)
    _known(loaded, model)
    if foreground:
        import asyncio

        from ..runtime.statefile import StateDirBusy
        from ..serve.foreground import run_foreground

        try:
            raise typer.Exit(asyncio.run(run_foreground(loaded, model, _say)))
        except StateDirBusy as error:
            raise _fail(f"{error}; stop it first, or drop --foreground to ask the daemon") from None
    _say_if_weights_missing(loaded.entry(model))
    client = _client(loaded, autostart=True)
    from ..control.client import DaemonError

    try:
        try:
            result = _up_with_progress(client, model)
        except DaemonError as error:
            if "unknown model" not in str(error):
                raise
            # models.yaml knows it but the running daemon read an older file: catch it up.
            for change in client.reload():
                typer.echo(f"daemon reloaded the config: {change}", err=True)
            result = _up_with_progress(client, model)
    except DaemonError as error:
        raise _fail(str(error)) from None
    info = result["model"]
    typer.echo(f"{model} is ready ({info['endpoint']}, pid {info['pid']})")
    typer.echo(f"gateway: {result['gateway']}  (model: {model})")
    typer.echo("llm-bawt entry:\n" + _indent(result["llm_bawt_entry"]))


@app.command()
def down(
    model: Annotated[str | None, typer.Argument(help="Alias to stop.")] = None,
    all_models: Annotated[bool, typer.Option("--all", help="Stop every model.")] = False,
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop MODEL (or --all) and print the proof that it is gone."""
    if (model is None) == (not all_models):
        raise _fail("name a model or pass --all", 2)
    from ..control.client import DaemonError, DaemonNotRunning

    try:
        results = _down_with_progress(_fast_client(config), model, all_models)
    except DaemonNotRunning:
        if model is not None:
            _known(_load(config), model)
        results = []
    except DaemonError as error:
        raise _fail(str(error)) from None
    if json_output:
        typer.echo(json.dumps(results, indent=1))
        return
    if not any(r["was_running"] for r in results):
        typer.echo("nothing was running")
    for result in results:
        if result["was_running"]:
            typer.echo(result["summary"])
    if not all(r["clean"] for r in results if r["was_running"]):
        raise typer.Exit(1)


@app.command()
def ps(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """Every configured model: state, GPU, port, pid, uptime, VRAM, requests in flight, idle time."""
    from ..control.client import DaemonNotRunning

    try:
        rows = _fast_client(config).status()["models"]
    except DaemonNotRunning:
        rows = [{"alias": alias, "state": "stopped"} for alias in _load(config).models]
    if json_output:
        typer.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("MODEL", "STATE", "GPU", "PORT", "PID", "UPTIME", "VRAM", "IN FLIGHT", "IDLE", box=None)
    for row in rows:
        gpus = ",".join(str(g) for g in row.get("gpus") or []) or ("cpu" if row.get("pid") else "-")
        table.add_row(row["alias"], row["state"], gpus, _dash(row.get("port") if row.get("pid") else None),
                      _dash(row.get("pid")), _duration(row.get("uptime_s")), _gib(row.get("vram_bytes")),
                      _dash(row.get("in_flight") if row.get("pid") else None), _duration(row.get("idle_s")))
    Console().print(table)


@app.command()
def status(config: ConfigOption = None, json_output: JsonOption = False) -> None:
    """The daemon: pid, gateway, config, uptime, and each model's state."""
    from ..control.client import DaemonNotRunning

    try:
        payload = _fast_client(config).status()
    except DaemonNotRunning:
        if json_output:
            typer.echo(json.dumps({"daemon": None, "models": []}))
        raise _fail("no daemon is running (`bawt-vllm up MODEL` or `bawt-vllm daemon` starts one)") from None
    if json_output:
        typer.echo(json.dumps(payload, indent=1))
        return
    daemon = payload["daemon"]
    typer.echo(f"daemon pid {daemon['pid']}, up {_duration(daemon['uptime_s'])}, gateway {daemon['gateway']}/v1")
    typer.echo(f"config {daemon['config']}; {daemon['gpus']} GPU(s)")
    for row in payload["models"]:
        typer.echo(f"  {row['alias']}: {row['state']}")


@app.command()
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
        for chunk in _fast_client(config).logs(model, start=start, lines=lines, follow=follow):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    except DaemonNotRunning:
        loaded = _load(config)
        _known(loaded, model)
        _print_log_file(loaded, model, start, lines)
    except DaemonError as error:
        raise _fail(str(error)) from None


@app.command()
def reload(config: ConfigOption = None) -> None:
    """Make the daemon re-read models.yaml (like SIGHUP): changed or removed models are stopped."""
    from ..control.client import DaemonError

    try:
        changes = _fast_client(config).reload()
    except DaemonError as error:
        raise _fail(str(error)) from None
    for change in changes or ["nothing changed for running models"]:
        typer.echo(change)
    if any(change.startswith("refused") for change in changes):
        raise typer.Exit(1)


@app.command()
def daemon(config: ConfigOption = None) -> None:
    """Run the daemon in the foreground (what systemd runs): control socket + OpenAI gateway."""
    from ..runtime.statefile import StateDirBusy
    from ..serve.daemon import run_daemon

    try:
        raise typer.Exit(run_daemon(config))
    except StateDirBusy as error:
        raise _fail(str(error)) from None


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Alias to talk to.")],
    prompt: Annotated[str | None, typer.Argument(help="One question; without it, an interactive chat.")] = None,
    config: ConfigOption = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest reply.")] = 512,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
) -> None:
    """Chat with MODEL through the gateway, streaming tokens as they come (loads it if needed)."""
    loaded = _load(config)
    _known(loaded, model)
    daemon_client = _client(loaded, autostart=True)
    import os

    from openai import OpenAI, OpenAIError

    gateway = daemon_client.status()["daemon"]["gateway"] + "/v1"
    key_env = loaded.settings.api_key_env
    client = OpenAI(base_url=gateway, api_key=(os.environ.get(key_env) if key_env else None) or "unused",
                    max_retries=0, timeout=3600)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    questions = [prompt] if prompt is not None else _prompts(model)
    for question in questions:
        history.append({"role": "user", "content": question})
        try:
            answer = _stream_reply(client, model, history, max_tokens)
        except OpenAIError as error:
            raise _fail(_openai_message(error)) from None
        history.append({"role": "assistant", "content": answer})


def _prompts(model: str) -> Any:
    typer.echo(f"chatting with {model}; an empty line or Ctrl-D ends", err=True)
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        if not line.strip():
            return
        yield line


def _stream_reply(client: Any, model: str, history: list[dict[str, str]], max_tokens: int) -> str:
    pieces = []
    stream = client.chat.completions.create(model=model, messages=history, max_tokens=max_tokens, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            sys.stdout.write(pieces[-1])
            sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(pieces)


def _openai_message(error: Exception) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", error))
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(error)


service_app = typer.Typer(no_args_is_help=True, help="Run the daemon under systemd.")
app.add_typer(service_app, name="service")


@service_app.command("install")
def service_install(
    user: Annotated[bool, typer.Option("--user", help="A user unit (~/.config/systemd/user) instead of a system one.")]
    = False,
    config: ConfigOption = None,
    unit_dir: Annotated[Path | None, typer.Option("--unit-dir", help="Where to write the unit.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the unit; write nothing.")] = False,
) -> None:
    """Write the systemd unit with this installation's paths and print the systemctl commands."""
    from ..serve.systemd import install_service, render_unit

    config_path = config.expanduser().resolve() if config else None
    try:
        result = install_service(user=user, config=config_path, unit_dir=unit_dir, dry_run=dry_run)
    except (OSError, ValueError) as error:
        raise _fail(str(error)) from None
    if dry_run:
        typer.echo(render_unit(user=user, executable=_executable(), config=config_path))
        typer.echo(f"# would be written to {result.unit_path}", err=True)
        return
    typer.echo(f"wrote {result.unit_path}")
    if result.env_path is not None:
        typer.echo(f"wrote {result.env_path} (settings and secrets; mode 0600)")
    typer.echo("next:")
    for command in result.commands:
        typer.echo(f"  {command}")


def _executable() -> str:
    from ..serve.systemd import default_executable

    return default_executable()


@app.command()
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
    from rich.console import Console
    from rich.table import Table

    view = Table("GPU", "name", "used", "total", "processes")
    for gpu in table:
        procs = ", ".join(str(p["pid"]) for p in gpu.get("processes", []))
        view.add_row(str(gpu["index"]), gpu["name"], _gib(gpu["used_bytes"]), _gib(gpu["total_bytes"]), procs)
    Console().print(view)


def _known(loaded: Any, model: str) -> None:
    from ..config.loading import UnknownModelError

    try:
        loaded.entry(model)
    except UnknownModelError as error:
        raise _fail(str(error), 2) from None


def _client(loaded: Any, *, autostart: bool = False) -> Any:
    """A client for this config's daemon; with autostart, start one if none answers."""
    from ..config.paths import control_socket
    from ..control.client import DaemonClient, DaemonError, start_daemon

    state_dir = Path(loaded.settings.state_dir)
    client = DaemonClient(control_socket(state_dir))
    if autostart and not client.ping():
        typer.echo(f"no daemon running: starting one (log: {state_dir / 'daemon.log'})", err=True)
        try:
            start_daemon(loaded.path, client.socket_path, state_dir / "daemon.log")
        except DaemonError as error:
            raise _fail(str(error)) from None
    return client


def _say_if_weights_missing(entry: Any) -> None:
    from ..catalog.hub import weights_present

    try:
        present = weights_present(entry)
    except Exception:  # the check is advice only; the load itself reports real problems
        return
    if not present:
        typer.echo(f"{entry.alias}: weights are not on disk yet; they will be downloaded before loading "
                   f"(`bawt-vllm pull {entry.alias}` does it ahead, with progress)", err=True)


def _fast_client(config_path: Path | None) -> Any:
    """A client for the daemon, found without validating the whole config (keeps `ps` fast)."""
    from ..config.paths import ConfigError, control_socket, find_config_path, quick_state_dir
    from ..control.client import DaemonClient

    try:
        state_dir = quick_state_dir(find_config_path(config_path))
    except ConfigError as error:
        raise _fail(str(error), 2) from None
    except Exception:  # unreadable or malformed: let the full loader explain what is wrong
        state_dir = Path(_load(config_path).settings.state_dir)
    return DaemonClient(control_socket(state_dir))


def _up_with_progress(client: Any, model: str) -> dict[str, Any]:
    """Ask the daemon to load model, showing each load stage; on a terminal, with a spinner."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return client.up(model, on_event=_show_event, on_waiting=_still_waiting("loading"))
    import time

    started = time.monotonic()
    with console.status(f"loading {model}") as status:
        def show(label: str | None) -> None:
            status.update(f"loading {model}: {label or 'waiting'} ({time.monotonic() - started:.0f}s)")

        def on_event(event: dict[str, Any]) -> None:
            console.print(_event_line(event), markup=False, highlight=False)
            show(event.get("stage") or event.get("state"))

        # Heartbeats (a silent load stage) move the clock on, so a long load never looks hung.
        return client.up(model, on_event=on_event, on_waiting=lambda waiting: show(_waiting_label(waiting)))


def _down_with_progress(client: Any, model: str | None, all_models: bool) -> list[dict[str, Any]]:
    """Ask the daemon to stop model (or all); on a terminal, a spinner with the time it takes."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        return client.down(model, all_models=all_models, on_waiting=_still_waiting("stopping"))
    import time

    started = time.monotonic()
    with console.status(f"stopping {model or 'every model'}") as status:
        def on_waiting(waiting: dict[str, Any]) -> None:
            status.update(f"stopping {waiting.get('model') or model or 'every model'} "
                          f"({time.monotonic() - started:.0f}s)")

        return client.down(model, all_models=all_models, on_waiting=on_waiting)


def _waiting_label(waiting: dict[str, Any]) -> str | None:
    return waiting.get("stage") or waiting.get("state")


def _still_waiting(verb: str) -> Callable[[dict[str, Any]], None]:
    """For a log, not a terminal: a 'still loading' line at most every STILL_WAITING_EVERY_S
    (from the daemon's heartbeats), so a long silent load stage is visibly alive."""
    shown = [0.0]

    def show(waiting: dict[str, Any]) -> None:
        elapsed = float(waiting.get("elapsed_s") or 0.0)
        if elapsed - shown[0] >= STILL_WAITING_EVERY_S:
            shown[0] = elapsed
            typer.echo(f"  still {verb} {waiting.get('model') or 'every model'}: "
                       f"{_waiting_label(waiting) or 'waiting'} ({elapsed:.0f}s)", err=True)
    return show


def _event_line(event: dict[str, Any]) -> str:
    label = event.get("stage") or event.get("state")
    return f"  [{label}] {event.get('message', '')[:160]}"


def _show_event(event: dict[str, Any]) -> None:
    typer.echo(_event_line(event), err=True)


def _print_log_file(loaded: Any, model: str, start: int | None, lines: int) -> None:
    from ..config.paths import find_log, log_dir
    from ..runtime.readiness import read_log_tail

    logs = log_dir(Path(loaded.settings.state_dir))
    path = find_log(logs, model, start)
    if path is None:
        raise _fail(f"{model} has no log in {logs}" + ("" if start is None else f" for start {start}"))
    typer.echo("\n".join(read_log_tail(path, lines)))


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.1f} GiB"


def _say(line: str) -> None:
    print(line, flush=True)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


from . import models  # noqa: E402,F401  (registers entries, add, pull)
