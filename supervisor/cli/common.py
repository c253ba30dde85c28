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
    from ..config.problems import ConfigError
    from ..config.schema import Config
    from ..control.client import DaemonClient

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="models.yaml (default: $BAWT_VLLM_CONFIG, ~/.config/bawt-vllm/models.yaml, "
                 "then llm-bawt's models.yaml, then /etc/bawt-vllm/models.yaml)", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

# Exit status, the same for every command (the top-level --help and the README say so).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_CODES_HELP = ("Exit status: 0 ok; 1 the operation failed; 2 bad usage or a bad models.yaml; "
                   "130 interrupted (Ctrl-C).")


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `bawt-vllm: message` to stderr; the Exit to raise (exit status `code`)."""
    typer.echo(f"bawt-vllm: {message}", err=True)
    return typer.Exit(code)


def say(line: str) -> None:
    """A progress line on stdout, flushed at once (for the foreground supervisor)."""
    print(line, flush=True)


def find_config_or_fail(config_path: Path | None) -> Path:
    """The models.yaml to use; none to be found exits 2, saying where it looked and how to make one."""
    from ..config.paths import find_config_path
    from ..config.problems import ConfigError

    try:
        return find_config_path(config_path)
    except ConfigError as error:
        raise config_not_found(error, config_path) from None


def config_not_found(error: ConfigError, config_path: Path | None) -> typer.Exit:
    """Print where bawt-vllm looked for models.yaml and how to make one; the Exit (2) to raise."""
    if config_path is None:
        hint = "`bawt-vllm config init` writes a commented starter models.yaml (or pass --config PATH)"
    else:
        hint = f"`bawt-vllm config init {config_path}` writes a commented starter models.yaml there"
    return fail(f"{error}\n{hint}", EXIT_USAGE)


def load_or_fail(config_path: Path | None) -> Config:
    """The validated config; a config error exits 2 with its message."""
    from ..config.loading import load_config
    from ..config.problems import ConfigError

    path = find_config_or_fail(config_path)
    try:
        return load_config(path)
    except ConfigError as error:
        raise fail(str(error), EXIT_USAGE) from None


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
    from ..control.client import DaemonClient

    path = find_config_or_fail(config_path)
    try:
        return DaemonClient.for_config_file(path)
    except Exception:  # unreadable or malformed: let the full loader explain what is wrong
        return daemon_client(load_or_fail(config_path))
