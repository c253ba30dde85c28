"""How the CLI shows things: the ps, status and gpus tables, load events, and the progress display
while `up` or `down` waits (a spinner on a terminal, "still loading" lines in a log).

Presentation only: it asks the daemon nothing. rich is imported inside the functions that use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

STILL_WAITING_EVERY_S = 30.0  # off a terminal, `up`/`down` print a "still loading" line this often

Listener = Callable[[dict[str, Any]], None]


# -- values --------------------------------------------------------------------------------------
def indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def dash(value: Any) -> str:
    return "-" if value is None else str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.1f} GiB"


# -- tables --------------------------------------------------------------------------------------
def print_models_table(rows: list[dict[str, Any]]) -> None:
    """`ps`: one line per model."""
    from rich.console import Console
    from rich.table import Table

    table = Table("MODEL", "STATE", "GPU", "PORT", "PID", "UPTIME", "VRAM", "IN FLIGHT", "IDLE", box=None)
    for row in rows:
        running = bool(row.get("pid"))
        gpus = ",".join(str(g) for g in row.get("gpus") or []) or ("cpu" if running else "-")
        table.add_row(row["alias"], row["state"], gpus, dash(row.get("port") if running else None),
                      dash(row.get("pid")), duration(row.get("uptime_s")), gib(row.get("vram_bytes")),
                      dash(row.get("in_flight") if running else None), duration(row.get("idle_s")))
    Console().print(table)


def daemon_summary(payload: dict[str, Any]) -> list[str]:
    """`status`: the daemon's lines, then one per model."""
    daemon = payload["daemon"]
    return [
        f"daemon pid {daemon['pid']}, up {duration(daemon['uptime_s'])}, gateway {daemon['gateway']}/v1",
        f"config {daemon['config']}; {daemon['gpus']} GPU(s)",
        *(f"  {row['alias']}: {row['state']}" for row in payload["models"]),
    ]


def print_gpus_table(gpus: list[dict[str, Any]]) -> None:
    """`gpus`: one line per GPU, with the pids on it."""
    from rich.console import Console
    from rich.table import Table

    view = Table("GPU", "name", "used", "total", "processes")
    for gpu in gpus:
        procs = ", ".join(str(p["pid"]) for p in gpu.get("processes", []))
        view.add_row(str(gpu["index"]), gpu["name"], gib(gpu["used_bytes"]), gib(gpu["total_bytes"]), procs)
    Console().print(view)


# -- events and heartbeats -----------------------------------------------------------------------
def event_line(event: dict[str, Any]) -> str:
    label = event.get("stage") or event.get("state")
    return f"  [{label}] {event.get('message', '')[:160]}"


def show_event(event: dict[str, Any]) -> None:
    typer.echo(event_line(event), err=True)


def waiting_label(waiting: dict[str, Any]) -> str | None:
    return waiting.get("stage") or waiting.get("state")


def still_waiting(verb: str) -> Listener:
    """For a log, not a terminal: a 'still loading' line at most every STILL_WAITING_EVERY_S
    (from the daemon's heartbeats), so a long silent load stage is visibly alive."""
    shown = [0.0]

    def show(waiting: dict[str, Any]) -> None:
        elapsed = float(waiting.get("elapsed_s") or 0.0)
        if elapsed - shown[0] >= STILL_WAITING_EVERY_S:
            shown[0] = elapsed
            typer.echo(f"  still {verb} {waiting.get('model') or 'every model'}: "
                       f"{waiting_label(waiting) or 'waiting'} ({elapsed:.0f}s)", err=True)
    return show


# -- progress while `up` / `down` wait -----------------------------------------------------------
class Progress:
    """The listeners to hand the control client's up() or down()."""

    __slots__ = ("on_event", "on_waiting")

    def __init__(self, *, on_event: Listener | None, on_waiting: Listener) -> None:
        self.on_event = on_event
        self.on_waiting = on_waiting


@contextmanager
def loading(model: str) -> Iterator[Progress]:
    """Show a load: each stage as it comes; on a terminal, with a spinner and the time so far."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield Progress(on_event=show_event, on_waiting=still_waiting("loading"))
        return
    started = time.monotonic()
    with console.status(f"loading {model}") as status:
        def show(label: str | None) -> None:
            status.update(f"loading {model}: {label or 'waiting'} ({time.monotonic() - started:.0f}s)")

        def on_event(event: dict[str, Any]) -> None:
            console.print(event_line(event), markup=False, highlight=False)
            show(event.get("stage") or event.get("state"))

        # Heartbeats (a silent load stage) move the clock on, so a long load never looks hung.
        yield Progress(on_event=on_event, on_waiting=lambda waiting: show(waiting_label(waiting)))


@contextmanager
def stopping(model: str | None) -> Iterator[Progress]:
    """Show a stop of model (None: every model); on a terminal, a spinner with the time it takes."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield Progress(on_event=None, on_waiting=still_waiting("stopping"))
        return
    started = time.monotonic()
    with console.status(f"stopping {model or 'every model'}") as status:
        def on_waiting(waiting: dict[str, Any]) -> None:
            status.update(f"stopping {waiting.get('model') or model or 'every model'} "
                          f"({time.monotonic() - started:.0f}s)")

        yield Progress(on_event=None, on_waiting=on_waiting)
