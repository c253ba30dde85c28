"""`bawt-vllm chat`: talk to a model through the daemon's OpenAI gateway, one question or a session.

The daemon is asked where its gateway is (starting one if none runs) and, for a model not ready
yet, to load it with `up`'s progress display; the chat itself goes through the openai SDK,
imported when the command runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .common import ConfigOption, daemon_client, fail, load_or_fail, require_known
from .lifecycle import load_with_progress

if TYPE_CHECKING:
    from ..config.schema import Config

READY = "ready"  # a model's state once it serves (runtime.states.State.READY)


def chat(
    model: Annotated[str, typer.Argument(help="Alias to talk to.")],
    prompt: Annotated[str | None, typer.Argument(help="One question; without it, an interactive chat.")] = None,
    config: ConfigOption = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest reply.")] = 512,
    system: Annotated[str | None, typer.Option("--system", help="A system prompt.")] = None,
) -> None:
    """Chat with MODEL through the gateway, streaming tokens as they come (loads it if needed).

    A model that is not ready is loaded first, with the progress `up` shows."""
    loaded = load_or_fail(config)
    require_known(loaded, model)
    gateway = _gateway_once_ready(loaded, model)
    from openai import OpenAI, OpenAIError

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
            raise fail(_openai_message(error)) from None
        history.append({"role": "assistant", "content": answer})


def _gateway_once_ready(loaded: Config, model: str) -> str:
    """The gateway's OpenAI base URL, with model ready behind it: a model not ready yet is loaded
    first with `up`'s progress display, rather than the first question waiting in silence."""
    from ..control.client import DaemonError

    try:
        status = daemon_client(loaded, autostart=True).status()
    except DaemonError as error:
        raise fail(str(error)) from None
    if any(row["alias"] == model and row["state"] == READY for row in status["models"]):
        return f"{status['daemon']['gateway']}/v1"
    result, _progress = load_with_progress(loaded, model)
    return result["gateway"]


def _prompts(model: str) -> Iterator[str]:
    """The questions typed at the `> ` prompt, until an empty line or end of input."""
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
    """Print the reply as it streams in; the whole reply."""
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
    """The gateway's own message in an SDK error, else the error's text."""
    body = getattr(error, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", error))
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(error)
