"""`bawt-vllm ui`: the dashboard's address, opened in a browser (the daemon is started if none runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from .common import ConfigOption, daemon_client, fail, load_or_fail

UI_PATH = "/ui/"
NoOpenOption = Annotated[bool, typer.Option("--no-open", help="Print the address only; do not start a browser.")]


def ui(config: ConfigOption = None, no_open: NoOpenOption = False) -> None:
    """Open the web dashboard (every model, GPU, log and event, live) served by the daemon's gateway at /ui."""
    from ..control.client import DaemonError

    loaded = load_or_fail(config)
    client = daemon_client(loaded, autostart=True)
    try:
        gateway = str(client.status()["daemon"]["gateway"])
    except DaemonError as error:
        raise fail(str(error)) from None
    url = gateway.rstrip("/") + UI_PATH
    typer.echo(url)
    variable = loaded.settings.api_key_env
    if variable and _key_is_set(variable):
        typer.echo(f"the page asks once per browser tab for the gateway key (${variable})", err=True)
    if no_open:
        return
    import webbrowser

    if not webbrowser.open(url):
        typer.echo("no browser found here: open the address above (an SSH tunnel works: ssh -L PORT:127.0.0.1:PORT)",
                   err=True)


def _key_is_set(variable: str) -> bool:
    import os

    return bool(os.environ.get(variable))
