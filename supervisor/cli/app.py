"""The `bawt-vllm` command line: the typer app, its sub-command groups, and `run()`.

Only assembly: each command lives in the module of its concern (lifecycle, chat, system,
configcmd, models, ui) and is registered here under its name; none of them imports this module.
Heavy modules (aiohttp, psutil, pydantic models, the openai SDK) are imported inside the
commands that need them, so `bawt-vllm ps` and `--help` start fast. The program's entry point is
`fastpath.main`: it answers a plain `ps` or `status` without importing this module at all, and
hands everything else to `run()` here.
Every command takes -h as --help and shows examples (examples.py); the exit status is the same
everywhere (common.EXIT_CODES_HELP).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import chat, configcmd, examples, lifecycle, models, system, ui
from .common import EXIT_CODES_HELP, EXIT_INTERRUPTED

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Supervise `vllm serve` processes: start, watch, route, and fully stop local LLMs.",
                  epilog=f"{EXIT_CODES_HELP}\n\n`bawt-vllm COMMAND -h` shows a command's options and examples.")
config_app = typer.Typer(no_args_is_help=True, help="Check models.yaml, or write a starter one.")
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
app.add_typer(system.daemon_app, name="daemon")  # `daemon` runs it, `daemon stop` stops it
app.command("chat")(chat.chat)
app.command("gpus")(system.gpus)
app.command("ui")(ui.ui)
app.command("entries")(models.entries)
app.command("add")(models.add)
app.command("pull")(models.pull)
config_app.command("check")(configcmd.config_check)
config_app.command("init")(configcmd.config_init)
service_app.command("install")(system.service_install)
examples.attach(app)  # after every registration: each command's examples into its help


def _print_version(asked: bool) -> None:
    if asked:
        from .. import DIST_NAME, __version__

        typer.echo(f"{DIST_NAME} {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version)] = False,
) -> None:
    pass


def run() -> None:
    """The typer app on sys.argv (every command, help and completion)."""
    try:
        app(prog_name="bawt-vllm")
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


main = run  # what installs made before the fast path name as the `bawt-vllm` script
