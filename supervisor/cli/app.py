"""The `bawt-vllm` command line: the typer app, its sub-command groups, and `main()`.

Only assembly: each command lives in the module of its concern (lifecycle, chat, system,
configcmd, models) and is registered here under its name; none of them imports this module.
Heavy modules (aiohttp, psutil, pydantic models, the openai SDK) are imported inside the
commands that need them, so `bawt-vllm ps` and `--help` start fast.
"""

from __future__ import annotations

import sys

import typer

from . import chat, configcmd, lifecycle, models, system

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Supervise `vllm serve` processes: start, watch, route, and fully stop local LLMs.")
config_app = typer.Typer(no_args_is_help=True, help="Inspect models.yaml.")
service_app = typer.Typer(no_args_is_help=True, help="Run the daemon under systemd.")
app.add_typer(config_app, name="config")
app.add_typer(service_app, name="service")

# In `--help` order.
app.command("up")(lifecycle.up)
app.command("down")(lifecycle.down)
app.command("ps")(lifecycle.ps)
app.command("status")(lifecycle.status)
app.command("logs")(lifecycle.logs)
app.command("reload")(lifecycle.reload)
app.command("daemon")(system.daemon)
app.command("chat")(chat.chat)
app.command("gpus")(system.gpus)
app.command("entries")(models.entries)
app.command("add")(models.add)
app.command("pull")(models.pull)
config_app.command("check")(configcmd.config_check)
service_app.command("install")(system.service_install)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
