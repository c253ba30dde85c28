"""What bawt-vllm sets on every `vllm serve` itself, so an entry must not set it too: the managed
and secret flags (refused in extra_args) and the reserved environment variables (refused in env)."""

from __future__ import annotations

from collections.abc import Sequence

SECRET_FLAGS: dict[str, str] = {
    "--api-key": (
        "anything in a command line is visible to every user through ps; "
        "put the key in an environment variable and name it in api_key_env"
    ),
}
"""Flags that must never appear in argv, with the reason."""

MANAGED_FLAGS: dict[str, str] = {
    "--host": "bawt-vllm sets it from bawt_vllm.host",
    "--port": "bawt-vllm assigns it; use the entry's 'port' key to pin one",
    "--served-model-name": "bawt-vllm sets it; use the entry's 'served_model_name' key",
}
"""Flags bawt-vllm sets itself; a second copy in extra_args would silently override them."""

RESERVED_ENV_VARS = {
    "CUDA_VISIBLE_DEVICES": "bawt-vllm sets it from its GPU assignment; pin a GPU with the 'gpu' key",
    "VLLM_API_KEY": "a secret does not belong in models.yaml; name the variable holding it in api_key_env",
}
"""Variables an entry's env must not set, with the reason."""


def flag_name(arg: str) -> str:
    """`--port=9000` -> `--port`; other arguments unchanged."""
    return arg.split("=", 1)[0]


def reserved_flag_problems(extra_args: Sequence[str]) -> list[str]:
    """One message per secret or managed flag found in `extra_args`."""
    reserved = {**MANAGED_FLAGS, **SECRET_FLAGS}
    return [
        f"'{flag_name(arg)}' must not be in extra_args: {reserved[flag_name(arg)]}"
        for arg in extra_args
        if flag_name(arg) in reserved
    ]
