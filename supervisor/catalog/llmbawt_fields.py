"""What llm-bawt is told about one supervised model: its context window, the max tokens of a
reply, and its tool support. Shared by the catalog registration (llmbawt.py) and the
models.yaml entries (entries.py), so both say the same.

The context window is the entry's `context_window`, else its `max_model_len` (what vLLM
serves), else read from the model's config.json when it is on disk (`max_position_embeddings`
and the other keys `formats.suggest_max_model_len` knows, capped like its suggestion at
32768: telling llm-bawt less than vLLM serves only trims prompts earlier, more would send
prompts vLLM rejects). llm-bawt's catalog requires one (> 0); without it llm-bawt falls back
to a global default.
"""

from __future__ import annotations

from ..config.schema import ModelEntry
from ..config.toolformat import TOOL_FORMAT_NATIVE, TOOL_FORMAT_NONE, TOOL_FORMAT_REACT, TOOL_FORMAT_XML
from ..runtime.weights import local_config_json
from .formats import suggest_max_model_len

DEFAULT_MAX_TOKENS_CAP = 4096
"""max_tokens when the entry sets none: min(4096, context window // 4), so a reply leaves three
quarters of the window to the prompt."""

CATALOG_TOOL_SUPPORT = {
    TOOL_FORMAT_NATIVE: TOOL_FORMAT_NATIVE,
    TOOL_FORMAT_REACT: TOOL_FORMAT_REACT,
    TOOL_FORMAT_XML: TOOL_FORMAT_REACT,
    TOOL_FORMAT_NONE: TOOL_FORMAT_NONE,
}
"""Our tool formats -> the catalog's native | react | none. xml (tool calls written in the text)
becomes react, the catalog's text-based format; an unknown legacy `tool_format` does too."""


class MissingContextWindowError(ValueError):
    """No context window for an alias: not in the entry, and no config.json on disk to read."""

    def __init__(self, alias: str) -> None:
        self.alias = alias
        super().__init__(
            f"'{alias}': its context window is unknown (no context_window or max_model_len, and no config.json "
            f"on disk to read it from); set context_window or max_model_len for '{alias}' in models.yaml"
        )


def context_window(entry: ModelEntry) -> int | None:
    """The window llm-bawt should budget prompts to; None when nothing says."""
    explicit = entry.context_window or entry.max_model_len
    return explicit or suggest_max_model_len(local_config_json(entry))


def require_context_window(entry: ModelEntry) -> int:
    window = context_window(entry)
    if window is None:
        raise MissingContextWindowError(entry.alias)
    return window


def default_max_tokens(window: int) -> int:
    return max(1, min(DEFAULT_MAX_TOKENS_CAP, window // 4))


def max_tokens(entry: ModelEntry, window: int) -> int:
    """The entry's max_tokens, else `default_max_tokens(window)`."""
    return entry.max_tokens or default_max_tokens(window)


def catalog_tool_support(entry: ModelEntry) -> str:
    """native | react | none, following our precedence (tool_support, tool_format, then the type)."""
    return CATALOG_TOOL_SUPPORT.get(entry.effective_tool_format, TOOL_FORMAT_REACT)
