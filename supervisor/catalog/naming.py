"""Aliases for models.yaml: a short, unique name proposed from a repository id and its quantization."""

from __future__ import annotations

import re
from collections.abc import Collection

from .formats import UNQUANTIZED

MAX_ALIAS_LENGTH = 48


def propose_alias(repo_id: str, quantization: str | None, taken: Collection[str]) -> str:
    """A short, unique alias: 'Qwen/Qwen2.5-32B-Instruct-AWQ' -> 'qwen2.5-32b-instruct-awq'.

    The quantization is appended when the name does not say it already; a GGUF quant
    level (Q4_K_M) replaces the repo's '-gguf'. Taken aliases get -2, -3 ...
    """
    name = _slug(repo_id.rsplit("/", 1)[-1])
    suffix = ""
    if quantization and quantization.upper() not in UNQUANTIZED:
        quant = _slug(quantization)
        if quant != "gguf" and name.endswith("-gguf"):
            name = name.removesuffix("-gguf")
        if quant not in name.split("-"):
            suffix = f"-{quant}"
    budget = MAX_ALIAS_LENGTH - len(suffix)
    if len(name) > budget:
        name = name[:budget].rsplit("-", 1)[0] if "-" in name[:budget] else name[:budget]
    base = (name + suffix).strip("-") or "model"
    alias, number = base, 2
    while alias in taken:
        alias, number = f"{base}-{number}", number + 1
    return alias


def _slug(text: str) -> str:
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9._]+", "-", text.lower())).strip("-.")
