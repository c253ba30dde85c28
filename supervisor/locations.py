"""Where things are: finding models.yaml and the state directory, and config problems.

Kept free of pydantic so the fast CLI paths (`bawt-vllm ps`) can find the daemon's socket
without validating the whole schema; `config` re-exports all of it.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GLOBAL_SECTION = "bawt_vllm"
MODELS_SECTION = "models"
CONFIG_ENV_VAR = "BAWT_VLLM_CONFIG"
LLM_BAWT_CONFIG_ENV_VAR = "LLM_BAWT_MODELS_CONFIG_PATH"


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def _xdg_dir(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    value = environ.get(variable)
    return Path(value).expanduser() if value else _home(environ) / fallback


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/bawt-vllm, else ~/.local/state/bawt-vllm."""
    env = os.environ if environ is None else environ
    return _xdg_dir(env, "XDG_STATE_HOME", ".local/state") / "bawt-vllm"


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
        parts = [MODELS_SECTION, self.alias, *([self.key] if self.key else [])]
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


@dataclass(frozen=True)
class _Candidate:
    path: Path
    source: str
    must_exist: bool


def _config_candidates(explicit: Path | None, environ: Mapping[str, str]) -> list[_Candidate]:
    if explicit is not None:
        return [_Candidate(Path(explicit).expanduser(), "given explicitly", True)]
    candidates = []
    if environ.get(CONFIG_ENV_VAR):
        candidates.append(_Candidate(Path(environ[CONFIG_ENV_VAR]).expanduser(), f"${CONFIG_ENV_VAR}", True))
    config_home = _xdg_dir(environ, "XDG_CONFIG_HOME", ".config")
    candidates.append(_Candidate(config_home / "bawt-vllm" / "models.yaml", "bawt-vllm default", False))
    if environ.get(LLM_BAWT_CONFIG_ENV_VAR):
        llm_bawt_path = Path(environ[LLM_BAWT_CONFIG_ENV_VAR]).expanduser()
        candidates.append(_Candidate(llm_bawt_path, f"${LLM_BAWT_CONFIG_ENV_VAR}", True))
    else:
        candidates.append(_Candidate(config_home / "llm-bawt" / "models.yaml", "llm-bawt default", False))
    return candidates


def find_config_path(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the models.yaml to use.

    Order: `explicit`, $BAWT_VLLM_CONFIG, $XDG_CONFIG_HOME/bawt-vllm/models.yaml,
    then llm-bawt's file ($LLM_BAWT_MODELS_CONFIG_PATH, else
    $XDG_CONFIG_HOME/llm-bawt/models.yaml). A path named explicitly or by a
    variable must exist; the defaults are skipped when absent.
    """
    env = os.environ if environ is None else environ
    looked: list[ConfigProblem] = []
    for candidate in _config_candidates(explicit, env):
        if candidate.path.is_file():
            return candidate.path
        what = "is not a file" if candidate.path.exists() else "does not exist"
        problem = ConfigProblem(candidate.path, None, None, f"{what} ({candidate.source})")
        if candidate.must_exist:
            raise ConfigError([problem])
        looked.append(problem)
    raise ConfigError(looked, summary="no models.yaml found; looked in:")


def quick_state_dir(config_path: Path) -> Path:
    """The state directory a config names, read without validating the rest of the file."""
    with open(config_path, "rb") as handle:
        document: Any = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    section = document.get(GLOBAL_SECTION) if isinstance(document, dict) else None
    value = section.get("state_dir") if isinstance(section, dict) else None
    return Path(str(value)).expanduser() if value else default_state_dir()


def control_socket(state_dir: Path) -> Path:
    """The daemon's control socket in a state directory."""
    return state_dir / "control.sock"


def log_dir(state_dir: Path) -> Path:
    """Where each start of each model writes its log, as <alias>.<N>.log."""
    return state_dir / "logs"


def find_log(logs: Path, alias: str, start: int | None = None) -> Path | None:
    """The log of alias's start number `start`, else of its latest start; None if there is none."""
    if start is not None:
        path = logs / f"{alias}.{start}.log"
        return path if path.exists() else None
    candidates = sorted(logs.glob(f"{alias}.*.log"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None
