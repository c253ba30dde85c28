"""An example or two for every command's `--help`, in one table, attached when the app is assembled.

Keyed by the command's path (`up`, `config check`); `attach` puts each command's examples in its
help epilog, so no registration line has to carry them. `tests/cli/test_cli_habits.py` checks
that every example still parses.
"""

from __future__ import annotations

from collections.abc import Iterable

import typer

EXAMPLES: dict[str, tuple[str, ...]] = {
    "up": ("bawt-vllm up qwen-32b-awq",
           "bawt-vllm up qwen-32b-awq --json | jq -r .model.endpoint",
           "bawt-vllm up qwen-32b-awq --foreground   (no daemon; Ctrl-C stops it)"),
    "down": ("bawt-vllm down qwen-32b-awq", "bawt-vllm down --all --json"),
    "ps": ("bawt-vllm ps", "bawt-vllm ps --json | jq -r '.[] | select(.state == \"ready\") | .alias'"),
    "status": ("bawt-vllm status", "bawt-vllm status --json"),
    "logs": ("bawt-vllm logs qwen-32b-awq -f",
             "bawt-vllm logs qwen-32b-awq --start 1 -n 50   (the end of the first start's log)"),
    "reload": ("bawt-vllm reload   (after editing models.yaml)",),
    "daemon": ("bawt-vllm daemon   (what systemd runs; `up` starts one by itself)",
               "bawt-vllm daemon stop"),
    "daemon stop": ("bawt-vllm daemon stop", "bawt-vllm daemon stop --json"),
    "chat": ('bawt-vllm chat qwen-32b-awq "Write a haiku about GPUs"',
             'bawt-vllm chat qwen-32b-awq --system "Answer in French"   (a session: an empty line ends it)'),
    "gpus": ("bawt-vllm gpus", "bawt-vllm gpus --json"),
    "ui": ("bawt-vllm ui   (the dashboard in a browser)", "bawt-vllm ui --no-open   (print its address only)"),
    "entries": ("bawt-vllm entries", "bawt-vllm entries --write --dry-run"),
    "add": ("bawt-vllm add Qwen/Qwen2.5-7B-Instruct-AWQ", 'bawt-vllm add --search "qwen 7b awq" --yes'),
    "pull": ("bawt-vllm pull qwen-32b-awq",),
    "config check": ("bawt-vllm config check", "bawt-vllm config check --config ./models.yaml --json"),
    "config init": ("bawt-vllm config init", "bawt-vllm config init ./models.yaml --force"),
    "service install": ("bawt-vllm service install --user --dry-run", "bawt-vllm service install --user"),
}


def epilog(examples: Iterable[str]) -> str:
    """A help epilog listing examples, one a line (typer joins single newlines, so they are doubled)."""
    return "\n\n".join(["Examples:", *(f"  $ {line}" for line in examples)])


def attach(app: typer.Typer, prefix: str = "") -> None:
    """Give each command of app (and of its sub-groups) that has examples, and no epilog of its own, them."""
    for command in app.registered_commands:
        examples = EXAMPLES.get(f"{prefix}{command.name}")
        if examples and not isinstance(command.epilog, str):
            command.epilog = epilog(examples)
    for group in app.registered_groups:
        if not isinstance(group.name, str) or group.typer_instance is None:
            continue
        examples = EXAMPLES.get(f"{prefix}{group.name}")
        if examples and not isinstance(group.epilog, str):
            group.epilog = epilog(examples)
        attach(group.typer_instance, f"{prefix}{group.name} ")
