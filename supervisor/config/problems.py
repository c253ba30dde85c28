"""What is wrong with a config, said so it can be fixed: each ConfigProblem names the file, the
entry and the key; ConfigError carries all of them; UnknownModelError names the known aliases.

Free of pydantic and yaml: the fast CLI paths raise and print these.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .names import MODELS_SECTION, is_safe_alias

Finding = tuple[str | None, str]
"""(key, message) before the file and alias are attached."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file.

    `key` is relative to the entry when `alias` is set (e.g. 'max_model_len',
    'env.FOO'); otherwise it is the dotted path from the top of the file
    (e.g. 'bawt_vllm.port_range'), or None for file-wide problems.
    """

    file: Path
    alias: str | None
    key: str | None
    message: str

    @property
    def location(self) -> str | None:
        if self.alias is None:
            return self.key
        # An unusable alias may hold '/', spaces or control characters: quote it rather than print it raw.
        shown = self.alias if is_safe_alias(self.alias) else repr(self.alias)
        parts = [MODELS_SECTION, shown, *([self.key] if self.key else [])]
        return ".".join(parts)

    def __str__(self) -> str:
        location = self.location
        return f"{self.file}: {location}: {self.message}" if location else f"{self.file}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; `problems` lists every reason."""

    def __init__(self, problems: Iterable[ConfigProblem], summary: str | None = None) -> None:
        self.problems = list(problems)
        self.summary = summary
        lines = [summary] if summary else []
        lines += [str(problem) for problem in self.problems]
        super().__init__("\n".join(lines))


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    matches = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


class UnknownModelError(KeyError):
    """No runnable entry has this alias. The message names the known aliases and a close match."""

    def __init__(self, alias: str, known: Iterable[str], skipped_reason: str | None = None) -> None:
        self.alias = alias
        known = sorted(known)
        if skipped_reason is not None:
            message = f"model '{alias}' is not run by bawt-vllm: {skipped_reason}"
        else:
            message = f"unknown model '{alias}'{did_you_mean(alias, known)}; "
            message += f"known models: {', '.join(known)}" if known else "no models are configured"
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message
