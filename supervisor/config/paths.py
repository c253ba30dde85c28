"""Where things are: finding models.yaml, the state directory (also read quickly from a broken
config), and the socket and logs inside it.

Kept free of pydantic so the fast CLI paths (`bawt-vllm ps`) can find the daemon's socket
without validating the whole schema.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .names import GLOBAL_SECTION
from .problems import ConfigError, ConfigProblem
from .text import load_checked_yaml, read_capped

CONFIG_ENV_VAR = "BAWT_VLLM_CONFIG"
LLM_BAWT_CONFIG_ENV_VAR = "LLM_BAWT_MODELS_CONFIG_PATH"
SYSTEM_CONFIG_PATH = Path("/etc/bawt-vllm/models.yaml")
"""The system service's models.yaml (the unit names it); the last place the CLI looks."""
SYSTEM_SOCKET_PATH = Path("/run/bawt-vllm/control.sock")
"""The system service's control socket: systemd's RuntimeDirectory=bawt-vllm, /run/bawt-vllm."""
SYSTEM_SOCKET_ENV_VAR = "BAWT_VLLM_SYSTEM_SOCKET"
"""Overrides SYSTEM_SOCKET_PATH (tests; a unit with another RuntimeDirectory=)."""
RUNTIME_DIRECTORY_ENV_VAR = "RUNTIME_DIRECTORY"
"""Set by systemd for a unit with RuntimeDirectory= (several directories: colon-separated)."""
CONTROL_SOCKET_NAME = "control.sock"


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def expand_home(path: Path) -> Path:
    """`~` expanded; the path as given when `~user` names no user (pathlib raises RuntimeError)."""
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def _expand(value: str, environ: Mapping[str, str]) -> Path:
    """A path from the environment, `~` taken as that environment's HOME (not necessarily this process's)."""
    if value == "~" or value.startswith("~/"):
        return _home(environ) / value[2:]
    return expand_home(Path(value))


def _xdg_dir(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    value = environ.get(variable)
    return _expand(value, environ) if value else _home(environ) / fallback


def config_home(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_CONFIG_HOME, else ~/.config: where bawt-vllm, llm-bawt and user units keep their files."""
    return _xdg_dir(os.environ if environ is None else environ, "XDG_CONFIG_HOME", ".config")


def own_models_path(environ: Mapping[str, str] | None = None) -> Path:
    """bawt-vllm's own default models.yaml (where `add` creates one when none is found)."""
    return config_home(environ) / "bawt-vllm" / "models.yaml"


def llm_bawt_models_path(environ: Mapping[str, str] | None = None) -> Path:
    """llm-bawt's models.yaml, found the way llm-bawt finds it."""
    env = os.environ if environ is None else environ
    if env.get(LLM_BAWT_CONFIG_ENV_VAR):
        return _expand(env[LLM_BAWT_CONFIG_ENV_VAR], env)
    return config_home(env) / "llm-bawt" / "models.yaml"


def default_state_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/bawt-vllm, else ~/.local/state/bawt-vllm."""
    env = os.environ if environ is None else environ
    return _xdg_dir(env, "XDG_STATE_HOME", ".local/state") / "bawt-vllm"


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
    candidates.append(_Candidate(own_models_path(environ), "bawt-vllm default", False))
    if environ.get(LLM_BAWT_CONFIG_ENV_VAR):
        candidates.append(_Candidate(llm_bawt_models_path(environ), f"${LLM_BAWT_CONFIG_ENV_VAR}", True))
    else:
        candidates.append(_Candidate(llm_bawt_models_path(environ), "llm-bawt default", False))
    candidates.append(_Candidate(SYSTEM_CONFIG_PATH, "system service", False))
    return candidates


def find_config_path(explicit: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Return the models.yaml to use.

    Order: `explicit`, $BAWT_VLLM_CONFIG, $XDG_CONFIG_HOME/bawt-vllm/models.yaml,
    then llm-bawt's file ($LLM_BAWT_MODELS_CONFIG_PATH, else
    $XDG_CONFIG_HOME/llm-bawt/models.yaml), last the system service's
    /etc/bawt-vllm/models.yaml. A path named explicitly or by a variable must
    exist; the defaults are skipped when absent.
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
    """The state directory a config names, read without validating the rest of the file.

    Never raises: the CLI finds the daemon's socket with it, and must reach (and stop) a running
    daemon while models.yaml is broken. When the file does not parse, a `state_dir:` line in the
    `bawt_vllm:` section is looked for; otherwise the default applies. `config check` says what is wrong.
    """
    try:
        data, too_big = read_capped(config_path)
    except OSError:
        return default_state_dir()
    text = data.decode("utf-8", errors="replace")
    if not too_big:
        try:
            return _state_dir_or_default(_state_dir_from_yaml(text))
        except Exception:  # any way the YAML is broken; the line scan below does not depend on it
            pass
    return _state_dir_or_default(_state_dir_from_lines(text))


def _state_dir_or_default(value: str | None) -> Path:
    return expand_home(Path(value)) if value else default_state_dir()


def _state_dir_from_yaml(text: str) -> str | None:
    document = load_checked_yaml(text)
    section = document.get(GLOBAL_SECTION) if isinstance(document, dict) else None
    value = section.get("state_dir") if isinstance(section, dict) else None
    return value if isinstance(value, str) else None


_SECTION_HEADER = re.compile(rf"{GLOBAL_SECTION}[ \t]*:[ \t]*(#.*)?")
_STATE_DIR_LINE = re.compile(r"(?P<indent>[ \t]+)state_dir[ \t]*:[ \t]*(?P<value>.*)")


def _state_dir_from_lines(text: str) -> str | None:
    """`state_dir:` as a direct child of a block-style `bawt_vllm:` section, found line by line."""
    child_indent: str | None = None
    inside = False
    for line in text.splitlines():
        if _SECTION_HEADER.fullmatch(line):
            inside, child_indent = True, None
            continue
        if not inside or not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            inside = False  # the next top-level key
            continue
        indent = line[: len(line) - len(line.lstrip())]
        child_indent = indent if child_indent is None else child_indent
        match = _STATE_DIR_LINE.fullmatch(line)
        if match and match["indent"] == child_indent:
            return _scalar_text(match["value"])
    return None


def _scalar_text(raw: str) -> str | None:
    """A plain or quoted YAML scalar's text, without a trailing comment."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        return raw[1:end] if end > 0 else None
    value = re.split(r"\s#", raw, maxsplit=1)[0].strip()
    return value if value and value not in ("~", "null", "Null", "NULL") else None


def control_socket(state_dir: Path) -> Path:
    """The daemon's control socket in a state directory."""
    return state_dir / CONTROL_SOCKET_NAME


def daemon_control_socket(state_dir: Path, environ: Mapping[str, str] | None = None) -> Path:
    """Where a daemon binds its control socket: in systemd's $RUNTIME_DIRECTORY when the unit has
    one (the system unit: /run/bawt-vllm, where the CLI looks for the system daemon), else in
    its state directory."""
    env = os.environ if environ is None else environ
    runtime = env.get(RUNTIME_DIRECTORY_ENV_VAR, "").split(":")[0]
    return Path(runtime) / CONTROL_SOCKET_NAME if runtime else control_socket(state_dir)


def system_control_socket(environ: Mapping[str, str] | None = None) -> Path:
    """The system service's control socket: $BAWT_VLLM_SYSTEM_SOCKET, else /run/bawt-vllm/control.sock."""
    env = os.environ if environ is None else environ
    value = env.get(SYSTEM_SOCKET_ENV_VAR)
    return _expand(value, env) if value else SYSTEM_SOCKET_PATH
