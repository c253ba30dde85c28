"""Turn a validated model entry into a `vllm serve` command line.

Pure: no I/O and no environment reads, so the exact command for any entry can be
shown (`bawt-vllm` logs it) and tested without starting anything.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config.reserved import flag_name, reserved_flag_problems
from ..config.toolformat import TOOL_FORMAT_NATIVE

if TYPE_CHECKING:
    from ..config.schema import Config, ModelEntry, Settings

API_KEY_ENV_VAR = "VLLM_API_KEY"
"""vLLM reads its API key from this variable when `--api-key` is not given."""
SLEEP_ENDPOINTS_ENV_VAR = "VLLM_SERVER_DEV_MODE"
"""Set to 1, vLLM serves its sleep-mode endpoints (/sleep, /wake_up, /is_sleeping)."""


@dataclass(frozen=True)
class ServeCommand:
    """What to run: the argv, and the variables to add to the parent's environment."""

    argv: list[str]
    env: dict[str, str]

    def display(self) -> str:
        """The argv shell-quoted, for logs. Safe to show: secrets travel in `env`, never in argv."""
        return shlex.join(self.argv)


def build_serve_command(
    entry: ModelEntry,
    settings: Settings,
    *,
    port: int,
    gpus: Sequence[int] | None,
    model_source: str | None = None,
    api_key: str | None = None,
    quiet_endpoints: Sequence[str] = (),
) -> ServeCommand:
    """Build the `vllm serve` command for `entry` listening on `port`.

    `gpus`: the GPU indexes to expose (`[]` runs on CPU), or None to leave
    CUDA_VISIBLE_DEVICES as inherited. `model_source` overrides the model
    argument, e.g. with a downloaded .gguf path. `api_key` is passed in the
    environment, never in argv.
    `quiet_endpoints`: paths left out of vLLM's access log (only for a vLLM that supports it).
    """
    problems = reserved_flag_problems(entry.extra_args)
    if problems:
        raise ValueError(f"model '{entry.alias}': " + "; ".join(problems))
    if gpus and len(gpus) < entry.tensor_parallel_size:
        raise ValueError(
            f"model '{entry.alias}': tensor_parallel_size {entry.tensor_parallel_size} "
            f"needs that many GPUs, got {list(gpus)}"
        )
    argv = [
        settings.vllm_executable,
        "serve",
        _model_argument(entry, model_source),
        *("--host", settings.host),
        *("--port", str(port)),
        *("--served-model-name", entry.served_name),
        *_engine_flags(entry),
        *_tool_flags(entry),
        *_access_log_flags(entry, quiet_endpoints),
        *entry.extra_args,
    ]
    return ServeCommand(argv=argv, env=_child_env(entry, gpus, api_key))


def _access_log_flags(entry: ModelEntry, quiet_endpoints: Sequence[str]) -> list[str]:
    """Keep the supervisor's own probes out of vLLM's access log, unless the entry says otherwise."""
    own = {flag_name(arg) for arg in entry.extra_args}
    if not quiet_endpoints or own & {"--disable-access-log-for-endpoints", "--disable-uvicorn-access-log"}:
        return []
    return ["--disable-access-log-for-endpoints", ",".join(quiet_endpoints)]


def _model_argument(entry: ModelEntry, model_source: str | None) -> str:
    if model_source is not None:
        return model_source
    if entry.kind == "vllm" and entry.model_id:
        return entry.model_id
    if entry.kind == "gguf" and entry.path:
        return entry.path
    if entry.kind == "gguf" and entry.repo_id:
        raise ValueError(
            f"model '{entry.alias}': {entry.repo_id}/{entry.filename} must be resolved to a local "
            "file first; pass it as model_source"
        )
    raise ValueError(f"model '{entry.alias}' has no model to serve (model_id or path)")


def _engine_flags(entry: ModelEntry) -> list[str]:
    """Flags for the keys that are set; unset keys are left to vLLM's defaults."""
    valued = {
        "--quantization": entry.quantization,
        "--dtype": entry.dtype,
        "--max-model-len": entry.max_model_len,
        "--gpu-memory-utilization": entry.gpu_memory_utilization,
        "--tensor-parallel-size": entry.tensor_parallel_size if entry.tensor_parallel_size > 1 else None,
        "--tokenizer": entry.tokenizer,
        "--chat-template": entry.chat_template,
    }
    flags = [part for flag, value in valued.items() if value is not None for part in (flag, str(value))]
    if entry.enforce_eager:
        flags.append("--enforce-eager")
    if entry.enable_prefix_caching:
        flags.append("--enable-prefix-caching")
    elif entry.enable_prefix_caching is False:
        flags.append("--no-enable-prefix-caching")
    if entry.trust_remote_code:
        flags.append("--trust-remote-code")
    if entry.sleep_level is not None:
        flags.append("--enable-sleep-mode")
    return flags


def _tool_flags(entry: ModelEntry) -> list[str]:
    """Native tool calls need vLLM's auto tool choice plus a parser for the model's output format."""
    if entry.tool_call_parser and entry.effective_tool_format == TOOL_FORMAT_NATIVE:
        return ["--enable-auto-tool-choice", "--tool-call-parser", entry.tool_call_parser]
    return []


def _child_env(entry: ModelEntry, gpus: Sequence[int] | None, api_key: str | None) -> dict[str, str]:
    env = dict(entry.env)
    if gpus is not None:
        # PCI bus order makes the indexes match nvidia-smi and NVML rather than CUDA's "fastest first".
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(gpu) for gpu in gpus)
    if api_key is not None:
        env[API_KEY_ENV_VAR] = api_key
    if entry.sleep_level is not None:
        # vLLM serves /sleep and /wake_up only in its dev mode. They are not behind VLLM_API_KEY
        # (vLLM guards /v1 only): the server binds bawt_vllm.host, loopback by default.
        env[SLEEP_ENDPOINTS_ENV_VAR] = "1"
    return env


def entry_fingerprint(entry: ModelEntry, config: Config) -> str:
    """Identifies what an entry would run, so a reload can tell changed entries apart and a new
    supervisor can tell whether a tree it finds still runs what is configured."""
    command = build_serve_command(entry, config.settings, port=0, gpus=None,
                                  model_source=entry.model_id or "resolved")
    blob = json.dumps({"argv": command.argv, "env": command.env, "entry": entry.model_dump(mode="json")},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
