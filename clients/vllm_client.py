"""VLLMClient: llm-bawt's client interface over supervised `vllm serve` processes.

Duck-typed to llm-bawt's `LLMClient` (bawt-vllm never imports llm-bawt). It talks to the
daemon's OpenAI gateway with the `openai` SDK, so the model loads on demand, streams token
by token, and returns vLLM's native tool calls; `unload()` asks the daemon to stop the
model and returns once the proof is in (no process left, VRAM back on a GPU).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bawt_vllm.supervisor.config.toolformat import PROVIDER_VLLM, get_tool_format

log = logging.getLogger("bawt_vllm.clients")

BASE_URL_ENV = "BAWT_VLLM_BASE_URL"
CAPACITY_RETRIES = 3

__all__ = ["PROVIDER_VLLM", "VLLMClient", "VLLMClientError", "get_tool_format", "is_vllm_available",
           "runnable_aliases"]


class VLLMClientError(RuntimeError):
    """The gateway or the model refused a request; the message is the server's."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _load_config(path: Path | None) -> Any:
    from bawt_vllm.supervisor.config.loading import load_config

    return load_config(path)


def runnable_aliases(config_path: Path | None = None) -> list[str]:
    """Aliases bawt-vllm can run (type: vllm, or gguf with backend: vllm)."""
    try:
        return list(_load_config(config_path).models)
    except Exception:  # no or broken config: nothing runnable, as llm-bawt's listing expects
        return []


def is_vllm_available(config_path: Path | None = None) -> bool:
    """A vllm executable is configured or on PATH, or a bawt-vllm daemon answers."""
    try:
        config = _load_config(config_path)
    except Exception:
        return shutil.which("vllm") is not None
    executable = config.settings.vllm_executable
    if shutil.which(executable) or (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        return True
    from bawt_vllm.supervisor.control.client import DaemonClient

    return DaemonClient.for_state_dir(Path(config.settings.state_dir)).ping()


class VLLMClient:
    """An llm-bawt client for one supervised model."""

    SUPPORTS_STREAMING = True

    def __init__(self, model: str, config: Any = None, model_definition: Mapping[str, Any] | None = None, *,
                 base_url: str | None = None, api_key: str | None = None, supervisor_config: Path | None = None,
                 timeout: float = 900.0) -> None:
        self.config = config
        self.model_definition = dict(model_definition or {})
        self._supervisor_config_path = supervisor_config
        self._supervisor = self._try_supervisor_config()
        self.model = self._resolve_alias(model)
        self.tool_format = get_tool_format({"type": PROVIDER_VLLM, **self.model_definition})
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or self._gateway_url()
        self._api_key = api_key or self._gateway_key() or "unused"
        self._timeout = timeout
        self._client: Any = None
        self._warned_tools_dropped = False

    # -- where the model is -------------------------------------------------------------
    def _try_supervisor_config(self) -> Any:
        try:
            return _load_config(self._supervisor_config_path)
        except Exception:
            return None

    def _resolve_alias(self, model: str) -> str:
        """The alias llm-bawt's name means (an alias, a served name, or the entry's model_id or path)."""
        if self._supervisor is None:
            return model
        return self._supervisor.resolve(model) or model

    def _gateway_url(self) -> str:
        if self._supervisor is None:
            return "http://127.0.0.1:8400/v1"
        from bawt_vllm.supervisor.config.urls import gateway_base_url

        return gateway_base_url(self._supervisor.settings)

    def _gateway_key(self) -> str | None:
        variable = self._supervisor.settings.api_key_env if self._supervisor is not None else "BAWT_VLLM_API_KEY"
        return os.environ.get(variable) if variable else None

    def _openai(self) -> Any:
        if self._client is None:
            from openai import OpenAI

            # Our own retry policy (below) handles 503 + Retry-After; the SDK's would hide errors.
            self._client = OpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self._timeout, max_retries=0)
        return self._client

    # -- llm-bawt interface ---------------------------------------------------------------
    def supports_native_tools(self) -> bool:
        return self.tool_format == "native"

    def get_styling(self) -> tuple[str | None, str]:
        return ("bright_cyan", f"vLLM: {self.model}")

    def query(self, messages: Sequence[Any], plaintext_output: bool = False, **kwargs: Any) -> str:
        """The whole reply as text."""
        message, _calls = self._complete(messages, **kwargs)
        return message.get("content") or ""

    def stream_raw(self, messages: Sequence[Any], **kwargs: Any) -> Iterator[str]:
        """Yield the reply token by token as vLLM produces it."""
        request = self._request(messages, kwargs, tools=None)
        stream = self._call(lambda: self._openai().chat.completions.create(**request, stream=True))
        try:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        finally:
            stream.close()

    def query_with_tools(self, messages: Sequence[Any], tools_schema: Sequence[Mapping[str, Any]] | None = None,
                         tool_choice: Any = "auto", stop: Any = None,
                         **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        """(assistant message, OpenAI tool_call dicts or None)."""
        if stop is not None:
            kwargs["stop"] = stop
        return self._complete(messages, tools=tools_schema, tool_choice=tool_choice, **kwargs)

    def unload(self) -> dict[str, Any]:
        """Stop the model; returns the stop proof once every process is gone (and VRAM back).

        Waits as long as the stop takes (the daemon's stop_grace_s bounds it, and its heartbeats
        show it is alive); a daemon that stops answering raises VLLMClientError."""
        from bawt_vllm.supervisor.control.client import DaemonClient, DaemonError, DaemonNotRunning

        if self._supervisor is None:
            raise VLLMClientError("no bawt-vllm config found: cannot reach the daemon to unload")
        client = DaemonClient.for_state_dir(Path(self._supervisor.settings.state_dir))
        try:
            results = client.down(self.model)
        except DaemonNotRunning:
            return {"alias": self.model, "was_running": False, "clean": True, "proof": "no daemon running"}
        except DaemonError as error:
            raise VLLMClientError(f"unload of {self.model} failed: {error}") from error
        return results[0]

    # -- plumbing ---------------------------------------------------------------------------
    def _complete(self, messages: Sequence[Any], tools: Sequence[Mapping[str, Any]] | None = None,
                  tool_choice: Any = "auto", **kwargs: Any) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        request = self._request(messages, kwargs, tools=tools, tool_choice=tool_choice)
        response = self._call(lambda: self._openai().chat.completions.create(**request))
        message = response.choices[0].message.model_dump(exclude_none=True)
        calls = message.get("tool_calls") or None
        return message, calls

    def _request(self, messages: Sequence[Any], kwargs: dict[str, Any], *, tools: Any,
                 tool_choice: Any = "auto") -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "messages": [normalize_message(m) for m in messages]}
        if self.model_definition.get("max_tokens") and "max_tokens" not in kwargs:
            request["max_tokens"] = self.model_definition["max_tokens"]
        extra = {k: kwargs.pop(k) for k in list(kwargs) if k not in _SDK_PARAMETERS}
        request.update(kwargs)
        if extra:
            request["extra_body"] = {**request.get("extra_body", {}), **extra}
        if tools:
            if self.tool_format == "native":
                request["tools"] = list(tools)
                request["tool_choice"] = tool_choice
            elif self.tool_format == "none" and not self._warned_tools_dropped:
                log.warning("%s has tool_support: none; tools are dropped and the model answers without them",
                            self.model)
                self._warned_tools_dropped = True
        return request

    def _call(self, send: Any) -> Any:
        """Send, retrying while the gateway says it is at capacity (503 with Retry-After)."""
        import openai
        from tenacity import Retrying, retry_if_exception, stop_after_attempt

        def at_capacity(error: BaseException) -> bool:
            return isinstance(error, openai.APIStatusError) and error.status_code == 503 and \
                _error_code(error) == "no_capacity"

        def wait_retry_after(state: Any) -> float:
            error = state.outcome.exception()
            return float(error.response.headers.get("Retry-After", "5"))

        try:
            for attempt in Retrying(retry=retry_if_exception(at_capacity), wait=wait_retry_after,
                                    stop=stop_after_attempt(CAPACITY_RETRIES), reraise=True):
                with attempt:
                    return send()
        except openai.APIStatusError as error:
            raise VLLMClientError(_error_message(error), error.status_code, _error_code(error)) from error
        except openai.APIConnectionError as error:
            raise VLLMClientError(f"cannot reach the bawt-vllm gateway at {self.base_url}: {error}") from error
        raise AssertionError("unreachable")


_SDK_PARAMETERS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
    "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "user", "stream_options", "extra_body", "extra_headers",
    "timeout",
})


def _error_message(error: Any) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return body["message"]
    return str(error)


def _error_code(error: Any) -> str | None:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner.get("code")
    return None


def normalize_message(message: Any) -> dict[str, Any]:
    """A chat message as the OpenAI API wants it, from a dict or an object with role/content."""
    if isinstance(message, Mapping):
        source = dict(message)
    else:
        source = {key: getattr(message, key) for key in ("role", "content", "tool_calls", "tool_call_id", "name")
                  if getattr(message, key, None) is not None}
    normalized = {k: v for k, v in source.items() if v is not None}
    if normalized.get("tool_calls"):
        normalized["tool_calls"] = [_tool_call_dict(call) for call in normalized["tool_calls"]]
    return normalized


def _tool_call_dict(call: Any) -> dict[str, Any]:
    if isinstance(call, Mapping):
        return dict(call)
    if hasattr(call, "model_dump"):
        return call.model_dump(exclude_none=True)
    return {"id": call.id, "type": "function",
            "function": {"name": call.function.name, "arguments": call.function.arguments}}
