"""What every CLI command shares: its options, how it fails, loads models.yaml, and reaches the daemon.

The two ways a command gets a daemon client are here and only here, both through the control
client's own constructors: `daemon_client` (from a loaded config, optionally starting a daemon)
and `fast_client` (from the file's state_dir alone, so `ps` does not validate the whole config).

Only the standard library and typer at import time: every command module imports this, and so
does `--help`; config, client and friends are imported inside the functions that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..config.schema import Config
    from ..control.client import DaemonClient

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="models.yaml (default: $BAWT_VLLM_CONFIG, ~/.config/bawt-vllm/models.yaml, "
                 "then llm-bawt's models.yaml)", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `bawt-vllm: message` to stderr; the Exit to raise (exit status `code`)."""
    typer.echo(f"bawt-vllm: {message}", err=True)
    return typer.Exit(code)


def say(line: str) -> None:
    """A progress line on stdout, flushed at once (for the foreground supervisor)."""
    print(line, flush=True)


def load_or_fail(config_path: Path | None) -> Config:
    """The validated config; a config error exits 2 with its message."""
    from ..config.loading import load_config
    from ..config.problems import ConfigError

    try:
        return load_config(config_path)
    except ConfigError as error:
        raise fail(str(error), 2) from None


def require_known(config: Config, model: str) -> None:
    """Exit 2 unless config supervises model."""
    from ..config.problems import UnknownModelError

    try:
        config.entry(model)
    except UnknownModelError as error:
        raise fail(str(error), 2) from None


def daemon_client(config: Config, *, autostart: bool = False) -> DaemonClient:
    """A client for this config's daemon; with autostart, start one if none answers."""
    from ..control.client import DaemonClient, DaemonError

    client = DaemonClient.for_state_dir(Path(config.settings.state_dir))
    if autostart:
        try:
            client.ensure_running(config.path, on_start=_announce_start)
        except DaemonError as error:
            raise fail(str(error)) from None
    return client


def _announce_start(log_path: Path) -> None:
    typer.echo(f"no daemon running: starting one (log: {log_path})", err=True)


def fast_client(config_path: Path | None) -> DaemonClient:
    """A client for the daemon, found without validating the whole config (keeps `ps` fast).

    No models.yaml to be found exits 2; one the quick reader cannot read is loaded in full, so
    the loader explains what is wrong with it."""
    from ..config.paths import find_config_path
    from ..config.problems import ConfigError
    from ..control.client import DaemonClient

    try:
        return DaemonClient.for_config_file(find_config_path(config_path))
    except ConfigError as error:
        raise fail(str(error), 2) from None
    except Exception:  # unreadable or malformed: let the full loader explain what is wrong
        return daemon_client(load_or_fail(config_path))
