"""`bawt-vllm config check`: validate models.yaml and say every problem at once, or what it supervises."""

from __future__ import annotations

import typer

from .common import ConfigOption, fail, load_or_fail


def config_check(config: ConfigOption = None) -> None:
    """Validate models.yaml and print every problem at once."""
    from ..config.loading import check_config
    from ..config.paths import find_config_path
    from ..config.problems import ConfigError

    try:
        path = find_config_path(config)
        problems = check_config(path)
    except ConfigError as error:
        raise fail(str(error), 2) from None
    if problems:
        for problem in problems:
            typer.echo(str(problem), err=True)
        raise fail(f"{len(problems)} problem(s) in {path}", 2)
    loaded = load_or_fail(path)
    typer.echo(f"{path}: ok, {len(loaded.models)} model(s) to supervise"
               + (f" ({', '.join(loaded.models)})" if loaded.models else ""))
    for alias, why in loaded.skipped.items():
        typer.echo(f"  skipped {alias}: {why}")
