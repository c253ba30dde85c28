"""Clients for bawt-vllm: reach supervised models through the OpenAI API.

`VLLMClient` has the interface of llm-bawt's clients (duck-typed; llm-bawt is not imported).
"""

from .vllm_client import (
    PROVIDER_VLLM,
    VLLMClient,
    VLLMClientError,
    get_tool_format,
    is_vllm_available,
    runnable_aliases,
)

__all__ = ["PROVIDER_VLLM", "VLLMClient", "VLLMClientError", "get_tool_format", "is_vllm_available",
           "runnable_aliases"]
