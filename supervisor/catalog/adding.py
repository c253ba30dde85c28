"""Adding an entry to models.yaml: refuse a taken alias, check the result, then write it keeping every other byte.

The comment-keeping edit is yamlfile's; the check is config.loading's `check_config`,
run on the would-be file so that only problems the new entry brings block the write.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config.loading import check_config
from ..config.problems import ConfigError, ConfigProblem
from ..runtime.hubclient import HubError
from .yamlfile import MODELS_KEY, load_document, parse_document, render, set_model_entry, write_text


class AliasExistsError(HubError):
    """The alias is already in models.yaml and replacing it was not asked for."""


def add_model(
    config_path: Path, alias: str, entry: Mapping[str, Any], *, replace: bool = False, comment: str | None = None
) -> Path | None:
    """Add (or with `replace`, overwrite) one entry in models.yaml; returns the backup path.

    The edit keeps every other byte of the file. The result is validated with
    check_config first: when the new entry brings a problem, ConfigError is raised
    and nothing is written (problems the file already had do not block).
    """
    config_path = Path(config_path)
    exists = config_path.exists()
    document = load_document(config_path) if exists else parse_document(f"{MODELS_KEY}:\n", config_path)
    if alias in (document.get(MODELS_KEY) or {}) and not replace:
        raise AliasExistsError(
            f"{config_path}: '{alias}' is already defined; choose another alias or replace it (--replace)"
        )
    before = {_problem_key(p) for p in check_config(config_path)} if exists else set()
    set_model_entry(document, alias, entry, comment=comment)
    text = render(document)
    new_problems = [p for p in _problems_in(text, config_path) if _problem_key(p) not in before]
    if new_problems:
        raise ConfigError(new_problems, summary=f"not adding '{alias}': models.yaml would have problems:")
    return write_text(config_path, text, backup=True)


def _problems_in(text: str, shown_as: Path) -> list[ConfigProblem]:
    with tempfile.TemporaryDirectory(prefix="bawt-vllm-check-") as directory:
        candidate = Path(directory) / shown_as.name
        candidate.write_text(text, encoding="utf-8")
        problems = check_config(candidate)
    return [dataclasses.replace(problem, file=shown_as) for problem in problems]


def _problem_key(problem: ConfigProblem) -> tuple[str | None, str | None, str]:
    return problem.alias, problem.key, problem.message
