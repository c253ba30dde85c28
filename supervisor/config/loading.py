"""models.yaml: find it, validate it, and report every problem at once.

The file is shared with the chat app llm-bawt: its top-level `models:` map holds
entries of every provider type, keyed by alias. bawt-vllm runs only `type: vllm`
entries and `type: gguf` entries with `backend: vllm`; every other entry is left
alone and listed in `Config.skipped`. Our global settings live under the
top-level `bawt_vllm:` key; other top-level keys belong to someone else.

Validation never stops at the first mistake: `check_config` returns all of them,
each naming the file, the entry and the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from .names import GLOBAL_SECTION, MODELS_SECTION
from .paths import default_state_dir, find_config_path
from .problems import ConfigError, ConfigProblem
from .rules import (
    alias_findings,
    cross_entry_problems,
    entry_rule_findings,
    settings_consistency_problems,
    unknown_key_findings,
    with_nul_findings,
)
from .schema import ENTRY_KEYS, LLM_BAWT_ONLY_KEYS, SETTINGS_KEYS, Config, ModelEntry, Settings
from .text import ConfigTextError, check_yaml_expansion, read_config_text
from .toolformat import PROVIDER_GGUF, runs_on_vllm
from .wording import type_name, validate


def load_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Find, read and validate the config; raise ConfigError listing every problem."""
    env = os.environ if environ is None else environ
    config_path = find_config_path(path, env)
    config, problems = _load(config_path, env)
    if problems:
        raise ConfigError(problems)
    return config


def check_config(path: Path | None = None, environ: Mapping[str, str] | None = None) -> list[ConfigProblem]:
    """Every problem with the config, including not finding it; an empty list means it is usable."""
    env = os.environ if environ is None else environ
    try:
        config_path = find_config_path(path, env)
    except ConfigError as error:
        return error.problems
    return _load(config_path, env)[1]


def _load(path: Path, environ: Mapping[str, str]) -> tuple[Config, list[ConfigProblem]]:
    document, problems = _read_yaml(path)
    if document is _UNREADABLE:
        return Config(path=path, settings=Settings(state_dir=default_state_dir(environ))), problems
    config, content_problems = _parse_document(path, document, environ)
    return config, problems + content_problems


_UNREADABLE: Any = object()
"""_read_yaml's document when the file could not be read or parsed (None means an empty file)."""


class _DuplicateKeyLoader(yaml.SafeLoader):
    """A SafeLoader that records repeated mapping keys, which plain YAML loading silently collapses."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[str, int]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if key_node.value in seen:
                self.duplicate_keys.append((key_node.value, key_node.start_mark.line + 1))
            seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        """Turn the ValueErrors of PyYAML's constructors (a date like 2024-13-45, an integer of
        5000 digits) into a YAML error that points at the value."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as error:
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {error}", node.start_mark
            ) from error


def _read_yaml(path: Path) -> tuple[Any, list[ConfigProblem]]:
    try:
        text = read_config_text(path)
        check_yaml_expansion(text)
    except OSError as error:
        return _UNREADABLE, [ConfigProblem(path, None, None, f"cannot read the file: {error}")]
    except ConfigTextError as error:
        return _UNREADABLE, [ConfigProblem(path, None, None, str(error))]
    try:
        loader = _DuplicateKeyLoader(text)  # its reader already refuses control characters
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as error:
        return _UNREADABLE, [ConfigProblem(path, None, None, _describe_yaml_error(error, text))]
    problems = [
        ConfigProblem(path, None, None, f"line {line}: duplicate key '{key}' (only the last one would count)")
        for key, line in loader.duplicate_keys
    ]
    return document, problems


def _describe_yaml_error(error: yaml.YAMLError, text: str) -> str:
    if isinstance(error, yaml.reader.ReaderError):  # its own text spans lines and names no line
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        return (
            f"invalid YAML at line {line}, column {column}: control character U+{error.character:04X} "
            "is not allowed (inside double quotes, write it as an escape such as \\x07)"
        )
    mark = getattr(error, "problem_mark", None)
    detail = getattr(error, "problem", None) or str(error)
    if mark is None:
        return f"invalid YAML: {detail}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {detail}"


def _parse_document(
    path: Path, document: Any, environ: Mapping[str, str]
) -> tuple[Config, list[ConfigProblem]]:
    fallback = Config(path=path, settings=Settings(state_dir=default_state_dir(environ)))
    if document is None:
        return fallback, [_no_models_problem(path, fallback)]
    if not isinstance(document, dict):
        message = f"the top level must be a map with a '{MODELS_SECTION}' key (got {type_name(document)})"
        return fallback, [ConfigProblem(path, None, None, message)]

    settings, problems = _parse_settings(path, document.get(GLOBAL_SECTION), environ)
    raw_models = document.get(MODELS_SECTION)
    if raw_models is None:
        raw_models = {}
    models_misshapen = not isinstance(raw_models, dict)
    if models_misshapen:
        message = f"must be a map of alias -> model definition (got {type_name(raw_models)})"
        problems.append(ConfigProblem(path, None, MODELS_SECTION, message))
        raw_models = {}

    config = Config(path=path, settings=settings or fallback.settings)
    broken_entries = 0
    for raw_alias, definition in raw_models.items():
        alias = str(raw_alias)
        entry, entry_problems, skip_reason = _parse_model(path, raw_alias, definition)
        problems += entry_problems
        broken_entries += bool(entry_problems)
        if skip_reason is not None:
            config.skipped[alias] = skip_reason
        elif entry is not None:
            config.models[alias] = entry

    if not (config.models or broken_entries or models_misshapen):  # else the problems above say why
        problems.append(_no_models_problem(path, config))
    problems += cross_entry_problems(path, config.models)
    if settings is not None:
        problems += settings_consistency_problems(path, settings, config.models)
    return config, problems


def _no_models_problem(path: Path, config: Config) -> ConfigProblem:
    """An empty file, an empty `models:`, or only entries left to llm-bawt: nothing to supervise."""
    message = (
        f"no models configured: add at least one entry under {MODELS_SECTION}: "
        "(type: vllm, or type: gguf with backend: vllm)"
    )
    if config.skipped:
        left = ", ".join(f"{alias} ({why})" for alias, why in config.skipped.items())
        message += f"; the entries here are all left to llm-bawt: {left}"
    return ConfigProblem(path, None, None, message)


def _parse_settings(
    path: Path, section: Any, environ: Mapping[str, str]
) -> tuple[Settings | None, list[ConfigProblem]]:
    if section is None:
        section = {}
    if not isinstance(section, dict):
        message = f"must be a map of settings (got {type_name(section)})"
        return None, [ConfigProblem(path, None, GLOBAL_SECTION, message)]
    values = {str(key): value for key, value in section.items()}
    values.setdefault("state_dir", default_state_dir(environ))
    findings = unknown_key_findings(values, SETTINGS_KEYS)
    known = {key: value for key, value in values.items() if key in SETTINGS_KEYS}
    settings, validation_findings = validate(Settings, known)
    findings += with_nul_findings(validation_findings, known)
    problems = [
        ConfigProblem(path, None, f"{GLOBAL_SECTION}.{key}" if key else GLOBAL_SECTION, message)
        for key, message in findings
    ]
    return (settings if not problems else None), problems


def _skip_reason(definition: Mapping[str, Any]) -> str | None:
    """Why an entry is not ours, or None when bawt-vllm runs it."""
    if runs_on_vllm(definition):
        return None
    model_type = definition.get("type")
    if model_type == PROVIDER_GGUF:
        return "gguf without 'backend: vllm' (llm-bawt runs it with llama-cpp)"
    if model_type is None:
        return "it has no 'type' key"
    return f"type is '{model_type}'"


def _parse_model(
    path: Path, raw_alias: Any, definition: Any
) -> tuple[ModelEntry | None, list[ConfigProblem], str | None]:
    """Validate one entry: (entry or None, problems, skip reason or None)."""
    alias = str(raw_alias)
    if not isinstance(definition, dict):
        message = f"must be a map of model settings (got {type_name(definition)})"
        return None, [ConfigProblem(path, alias, None, message)], None
    values = {str(key): value for key, value in definition.items()}
    skip_reason = _skip_reason(values)
    if skip_reason is not None:
        return None, [], skip_reason

    findings = alias_findings(raw_alias) + unknown_key_findings(values, ENTRY_KEYS | LLM_BAWT_ONLY_KEYS)
    known = {key: value for key, value in values.items() if key in ENTRY_KEYS}
    entry, validation_findings = validate(ModelEntry, {**known, "alias": alias})
    findings += with_nul_findings(validation_findings, known) + entry_rule_findings(known)
    problems = [ConfigProblem(path, alias, key, message) for key, message in findings]
    return (entry if not problems else None), problems, None
