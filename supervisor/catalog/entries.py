"""`bawt-vllm entries`: the llm-bawt `type: openai` entries that use supervised models.

llm-bawt talks to bawt-vllm's gateway as it would to any OpenAI-compatible server
(plan section 10), so each supervised model gets an entry like

    qwen-32b-awq:
      type: openai
      model_id: qwen-32b-awq              # the name the gateway routes by
      base_url: http://127.0.0.1:8400/v1
      tool_support: native
      context_window: 16384
      max_tokens: 4096
      managed_by: bawt-vllm

`plan_merge` works out what merging them into llm-bawt's models.yaml would do and
`apply_merge` writes it (atomically, with a backup, comments kept). This is for llm-bawt
versions before its model catalog, and for its `--local` CLI mode: a running llm-bawt service
with the catalog reads models only from there (llmbawt.py registers them).

Why the `managed_by: bawt-vllm` key rather than a YAML comment: llm-bawt reads
entries as plain dicts with `.get()` and ignores keys it does not know, but its own
`--add-model` rewrites the whole file with `yaml.dump`, which drops every comment. A
comment marker would vanish on the user's next `llm --add-model`, and bawt-vllm
would then see its own entries as foreign conflicts; a key survives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.schema import Config, ModelEntry
from ..config.toolformat import EXPLICIT_TOOL_SUPPORT, PROVIDER_OPENAI, runs_on_vllm
from ..config.urls import llm_bawt_base_url
from .llmbawt_fields import context_window, max_tokens
from .yamlfile import (
    MODELS_KEY,
    ConfigReadError,
    ConfigWriteError,
    parse_document,
    plain,
    render,
    set_model_entry,
    unified_diff,
    write_text,
)

MANAGED_KEY = "managed_by"
MANAGED_VALUE = "bawt-vllm"
NEW_FILE_TEXT = f"{MODELS_KEY}:\n"


# --------------------------------------------------------------------------- entries


def openai_entry(entry: ModelEntry, base_url: str) -> dict[str, Any]:
    """The llm-bawt entry for one supervised model.

    `context_window` falls back to `max_model_len`, then to the model's config.json on disk
    (llmbawt_fields.context_window): without it llm-bawt assumes 128000 tokens for
    `type: openai` and would send prompts vLLM rejects. `max_tokens` is filled whenever the
    window is known. When nothing tells the window both are left out rather than guessed:
    this entry is also what `up` prints, which must not fail.
    """
    result: dict[str, Any] = {"type": PROVIDER_OPENAI, "model_id": entry.served_name, "base_url": base_url}
    tool_format = entry.effective_tool_format
    result["tool_support" if tool_format in EXPLICIT_TOOL_SUPPORT else "tool_format"] = tool_format
    window = context_window(entry)
    reply = max_tokens(entry, window) if window else entry.max_tokens
    optional = {"context_window": window, "max_tokens": reply, "description": entry.description}
    result.update({key: value for key, value in optional.items() if value is not None})
    result[MANAGED_KEY] = MANAGED_VALUE
    return result


def openai_entry_text(alias: str, entry: ModelEntry, base_url: str) -> str:
    """The entry as YAML to paste into llm-bawt's models.yaml (what `up` prints)."""
    import yaml

    fields = {k: v for k, v in openai_entry(entry, base_url).items() if k != MANAGED_KEY}
    return yaml.safe_dump({alias: fields}, sort_keys=False).rstrip()


def openai_entries(config: Config, *, suffix: str = "", base_url: str | None = None) -> dict[str, dict[str, Any]]:
    """alias + suffix -> llm-bawt entry, for every model bawt-vllm supervises.

    The base URL is `base_url` (a `--base-url`), else the `gateway_public_url` setting, else
    the gateway's loopback URL (config/urls.llm_bawt_base_url).
    """
    url = llm_bawt_base_url(config.settings, base_url)
    return {f"{alias}{suffix}": openai_entry(entry, url) for alias, entry in config.models.items()}


def is_managed(definition: Any) -> bool:
    """Whether an entry was written by bawt-vllm (and so may be updated without asking)."""
    return isinstance(definition, Mapping) and definition.get(MANAGED_KEY) == MANAGED_VALUE


# --------------------------------------------------------------------------- merging


@dataclass
class MergePlan:
    """What merging the entries into a models.yaml does; `new_text` is the file afterwards."""

    path: Path
    added: list[str]
    updated: list[str]
    unchanged: list[str]
    conflicts: list[str]
    old_text: str
    new_text: str
    exists: bool = True
    stale: list[str] = field(default_factory=list)
    """Entries bawt-vllm wrote earlier for models it no longer supervises (left in place)."""
    protected: list[str] = field(default_factory=list)
    """Conflicts that `--replace` may not overwrite: entries bawt-vllm itself runs."""

    @property
    def changed(self) -> bool:
        return self.new_text != self.old_text or not self.exists

    def diff(self) -> str:
        return unified_diff(self.old_text, self.new_text, self.path)

    def conflict_messages(self) -> list[str]:
        """One line per alias that was left alone, saying how to get past it."""
        messages = []
        for alias in self.conflicts:
            if alias in self.protected:
                why = "is a model bawt-vllm runs, so it is never replaced; use --suffix (e.g. --suffix -gw)"
            else:
                why = "is already defined and was not written by bawt-vllm; use --replace to overwrite it, "
                why += "or --suffix (e.g. --suffix -gw) to add the entry under another name"
            messages.append(f"{self.path}: '{alias}' {why}")
        return messages


def plan_merge(
    config: Config, target: Path, *, replace: bool = False, suffix: str = "", base_url: str | None = None
) -> MergePlan:
    """Work out the merge of `openai_entries(config)` into `target`; nothing is written.

    Entries bawt-vllm wrote before (`managed_by: bawt-vllm`) are updated; an alias held by
    any other entry is a conflict and left alone, unless `replace` (never for an entry
    bawt-vllm itself runs, which would take the model away from the supervisor).
    """
    target = Path(target)
    exists = target.exists()
    old_text = _read(target) if exists else ""
    document = parse_document(old_text if exists else NEW_FILE_TEXT, target)
    current = document.get(MODELS_KEY) or {}
    wanted = openai_entries(config, suffix=suffix, base_url=base_url)
    plan = MergePlan(target, [], [], [], [], old_text, old_text, exists=exists)
    for alias, entry in wanted.items():
        existing = current.get(alias)
        if alias not in current:
            plan.added.append(alias)
        elif isinstance(existing, Mapping) and runs_on_vllm(existing):
            plan.conflicts.append(alias)
            plan.protected.append(alias)
            continue
        elif not (is_managed(existing) or replace):
            plan.conflicts.append(alias)
            continue
        elif plain(existing) == entry:
            plan.unchanged.append(alias)
            continue
        else:
            plan.updated.append(alias)
        set_model_entry(document, alias, entry)
    plan.stale = [alias for alias, value in current.items() if is_managed(value) and alias not in wanted]
    plan.new_text = render(document)
    return plan


def apply_merge(plan: MergePlan) -> Path | None:
    """Write the plan's result: atomic, with a `.bak` of the previous file; returns the backup path.

    Nothing is written (and no backup made) when nothing changes. Refuses when the
    file changed since the plan was made.
    """
    if not plan.changed:
        return None
    current = _read(plan.path) if plan.path.exists() else None
    expected = plan.old_text if plan.exists else None
    if current != expected:
        raise ConfigWriteError(plan.path, "the file changed since the merge was planned; run the command again")
    return write_text(plan.path, plan.new_text, backup=True)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigReadError(path, f"cannot read the file: {error}") from None
