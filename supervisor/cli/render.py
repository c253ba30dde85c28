"""How the CLI shows things: the ps, status and gpus tables, load events, and the progress display
while `up` or `down` waits (a spinner on a terminal, "still loading" lines in a log).

Presentation only: it asks the daemon nothing. rich is imported inside the functions that use it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer

STILL_WAITING_EVERY_S = 30.0  # off a terminal, `up`/`down` print a "still loading" line this often
TICK_S = 0.5  # on a terminal, the spinner's clock is redrawn this often, between the daemon's lines too
LAST_ERROR_WIDTH = 40  # `ps` shows this much of a model's last error, on one line
STARTING = "starting"  # the state a loading model is in (runtime.states.State.STARTING)

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


def clock(seconds: float) -> str:
    """Time so far on a spinner: 42s, 3m05s."""
    whole = int(seconds)
    return f"{whole}s" if whole < 60 else f"{whole // 60}m{whole % 60:02d}s"


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.1f} GiB"


def one_line(text: str | None, width: int) -> str:
    """text on one line, at most width characters (an ellipsis where it was cut); '-' for none."""
    if not text:
        return "-"
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + "…"


# -- tables --------------------------------------------------------------------------------------
MODEL_COLUMNS = ("MODEL", "STATE", "GPU", "PORT", "PID", "UPTIME", "VRAM", "IN FLIGHT", "IDLE", "UNTIL",
                 "RESTARTS", "LAST ERROR")


def model_cells(row: dict[str, Any]) -> list[str]:
    """One `ps` row. IDLE and UNTIL (time left before the idle unload) are blank while a model
    loads or serves a request, '-' where they do not apply (not running; no idle TTL)."""
    running = bool(row.get("pid"))
    gpus = ",".join(str(g) for g in row.get("gpus") or []) or ("cpu" if running else "-")
    if row.get("gpu_budget") is not None and row.get("gpus"):
        gpus += f" ({row['gpu_budget']:g})"  # its share of the GPU it shares with others
    return [row["alias"], row["state"], gpus, dash(row.get("port") if running else None), dash(row.get("pid")),
            duration(row.get("uptime_s")), gib(row.get("vram_bytes")),
            dash(row.get("in_flight") if running else None), _idle(row, running), _until(row, running),
            dash(row.get("restarts")), one_line(row.get("last_error"), LAST_ERROR_WIDTH)]


def _idle(row: dict[str, Any], running: bool) -> str:
    if row.get("state") == STARTING or (running and row.get("idle_s") is None):
        return ""
    return duration(row.get("idle_s"))


def _until(row: dict[str, Any], running: bool) -> str:
    if not running or not row.get("idle_ttl_s"):
        return "-"
    if row.get("state") == STARTING or row.get("unload_in_s") is None:
        return ""
    return duration(row["unload_in_s"])


def print_models_table(rows: list[dict[str, Any]]) -> None:
    """`ps`: one line per model (plain aligned columns: no rich, which `ps` would wait ~40 ms for)."""
    for line in columns([list(MODEL_COLUMNS), *(model_cells(row) for row in rows)]):
        typer.echo(line)


def columns(lines: list[list[str]]) -> list[str]:
    """Cells aligned in columns two spaces apart, trailing blanks dropped."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
            for line in lines]


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

    view = Table("GPU", "name", "used", "total", "models (budget)", "processes")
    for gpu in gpus:
        procs = ", ".join(str(p["pid"]) for p in gpu.get("processes", []))
        view.add_row(str(gpu["index"]), gpu["name"], gib(gpu["used_bytes"]), gib(gpu["total_bytes"]),
                     budget_text(gpu), procs)
    Console().print(view)


def budget_text(gpu: dict[str, Any]) -> str:
    """Our models on a GPU with the share each may take: "a 0.4, b 0.35 (0.75 of 1)"; "whole" for a
    model that takes the GPU whole; "-" without a daemon's view."""
    budgets = gpu.get("budgets")
    if not budgets:
        return "-"
    parts = [f"{alias} {'whole' if share is None else f'{share:g}'}" for alias, share in budgets.items()]
    used = gpu.get("budget_used")
    return ", ".join(parts) + ("" if used is None else f" ({used:g} of 1)")


# -- events and heartbeats -----------------------------------------------------------------------
def event_line(event: dict[str, Any]) -> str:
    label = event.get("stage") or event.get("state")
    return f"  [{label}] {event.get('message', '')[:160]}"


def show_event(event: dict[str, Any]) -> None:
    typer.echo(event_line(event), err=True)


def shown_while_loading(event: dict[str, Any]) -> bool:
    """Every load event is shown as a line except the instance's `ready`: the line `up` ends with says it."""
    from ..runtime.states import EventKind

    return event.get("kind") != EventKind.READY.value


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
    """The listeners to hand the control client's up() or down(), and what they saw."""

    __slots__ = ("_on_event", "events_seen", "on_waiting", "started")

    def __init__(self, *, on_event: Listener | None, on_waiting: Listener) -> None:
        self._on_event = on_event
        self.on_waiting = on_waiting
        self.started = time.monotonic()
        self.events_seen = 0

    def on_event(self, event: dict[str, Any]) -> None:
        self.events_seen += 1
        if self._on_event is not None:
            self._on_event(event)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.started


def ready_line(model: str, info: dict[str, Any], progress: Progress) -> str:
    """The line `up` ends with: how long the load took (nothing to wait for: already loaded)."""
    where = f"{info['endpoint']}, pid {info['pid']}"
    if not progress.events_seen:
        return f"{model} is ready (already loaded: {where})"
    return f"{model} is ready in {progress.elapsed_s():.1f}s ({where})"


class SpinnerText:
    """The spinner's text: what is waited for, the current stage, and the time so far."""

    def __init__(self, verb: str, what: str) -> None:
        self.verb, self.what = verb, what
        self.label: str | None = None
        self.started = time.monotonic()

    def __call__(self) -> str:
        stage = f": {self.label}" if self.label else ""
        return f"{self.verb} {self.what}{stage} ({clock(time.monotonic() - self.started)})"


@contextmanager
def ticking(redraw: Callable[[], None], every_s: float = TICK_S) -> Iterator[None]:
    """Call redraw every every_s from a thread until the block ends, so a clock moves between events."""
    done = threading.Event()

    def run() -> None:
        while not done.wait(every_s):
            redraw()

    thread = threading.Thread(target=run, name="bawt-vllm-spinner", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(timeout=1.0)


@contextmanager
def loading(model: str) -> Iterator[Progress]:
    """Show a load: each stage as it comes; on a terminal, a spinner with the stage and a ticking clock."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        def log_event(event: dict[str, Any]) -> None:
            if shown_while_loading(event):
                show_event(event)

        yield Progress(on_event=log_event, on_waiting=still_waiting("loading"))
        return
    text = SpinnerText("loading", model)
    with console.status(text()) as status, ticking(lambda: status.update(text())):
        def on_event(event: dict[str, Any]) -> None:
            if shown_while_loading(event):
                console.print(event_line(event), markup=False, highlight=False)
            text.label = event.get("stage") or event.get("state")
            status.update(text())

        def on_waiting(waiting: dict[str, Any]) -> None:
            text.label = waiting_label(waiting) or text.label

        yield Progress(on_event=on_event, on_waiting=on_waiting)


@contextmanager
def stopping(model: str | None) -> Iterator[Progress]:
    """Show a stop of model (None: every model); on a terminal, a spinner with a ticking clock."""
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        yield Progress(on_event=None, on_waiting=still_waiting("stopping"))
        return
    text = SpinnerText("stopping", model or "every model")
    with console.status(text()) as status, ticking(lambda: status.update(text())):
        def on_waiting(waiting: dict[str, Any]) -> None:
            text.what = waiting.get("model") or model or "every model"

        yield Progress(on_event=None, on_waiting=on_waiting)


def print_stops(results: list[dict[str, Any]] | list[Any]) -> None:
    """Each stop's proof (its one-line summary), or that nothing was running."""
    if not any(r["was_running"] for r in results):
        typer.echo("nothing was running")
    for result in results:
        if result["was_running"]:
            typer.echo(result["summary"])
