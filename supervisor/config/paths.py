"""Where things are: finding models.yaml and the state directory, and config problems.

Kept free of pydantic so the fast CLI paths (`bawt-vllm ps`) can find the daemon's socket
without validating the whole schema; `config` re-exports all of it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

GLOBAL_SECTION = "bawt_vllm"
MODELS_SECTION = "models"
CONFIG_ENV_VAR = "BAWT_VLLM_CONFIG"
LLM_BAWT_CONFIG_ENV_VAR = "LLM_BAWT_MODELS_CONFIG_PATH"

MAX_CONFIG_BYTES = 1024 * 1024
"""A models.yaml above this is refused unread: real ones are a few KiB."""
MAX_YAML_NODES = 100_000
"""Values a models.yaml may stand for once every alias is expanded (real files: a few thousand)."""
MAX_YAML_DEPTH = 100
"""Nesting a models.yaml may have (real files: about 5); keeps the recursive YAML composer safe."""

ALIAS_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
"""What a runnable model's alias must fully match (and it must not contain '..')."""
ALIAS_RULE = (
    "1 to 128 characters from letters, digits and . _ : + -, starting with a letter or digit, "
    "without '..' (aliases name files: instances/<alias>.json, logs/<alias>.N.log)"
)


def is_safe_alias(name: object) -> bool:
    """True when `name` can be a model alias, and so a file name, without leaving its directory."""
    return isinstance(name, str) and ALIAS_PATTERN.fullmatch(name) is not None and ".." not in name


def _home(environ: Mapping[str, str]) -> Path:
    home = environ.get("HOME")
    return Path(home) if home else Path.home()


def expand_home(path: Path) -> Path:
    """`~` expanded; the path as given when `~user` names no user (pathlib raises RuntimeError)."""
    try:
        return path.expanduser()
    except RuntimeError:
        return path


def _xdg_dir(environ: Mapping[str, str], variable: str, fallback: str) -> Path:
    value = environ.get(variable)
    return expand_home(Path(value)) if value else _home(environ) / fallback


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


class ConfigTextError(Exception):
    """models.yaml cannot be taken as YAML text: too large, not UTF-8, or its aliases or nesting go too far."""


def read_config_text(path: Path) -> str:
    """The file's text, read at most MAX_CONFIG_BYTES; raises OSError or ConfigTextError."""
    data, too_big = _read_capped(path)
    if too_big:
        raise ConfigTextError(f"the file is larger than {MAX_CONFIG_BYTES // 1024} KiB; a models.yaml is a few KiB")
    return _decode_utf8(data)


def _read_capped(path: Path) -> tuple[bytes, bool]:
    """Up to MAX_CONFIG_BYTES of the file, and whether there was more."""
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    return data[:MAX_CONFIG_BYTES], len(data) > MAX_CONFIG_BYTES


def _decode_utf8(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        offset = error.start
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
        message = (
            f"not valid UTF-8: byte 0x{data[offset]:02x} at offset {offset} (line {line}, column {column}); "
            "save the file as UTF-8"
        )
        raise ConfigTextError(message) from None
    return text.removeprefix("\ufeff")


_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class _OpenNode:
    anchor: str | None
    size: int = 1


def check_yaml_expansion(text: str) -> None:
    """Raise ConfigTextError when the YAML's aliases would expand too far or it nests too deep.

    Aliases share one node in YAML's graph, so a 600-byte "billion laughs" file stands for
    billions of values once something walks the built objects. This reads the event stream once
    and gives each anchor its expanded size, so the cost follows the text, not the expansion.
    A syntax error is left for the loader to report, with its line.
    """
    try:
        _scan_events(yaml.parse(text, Loader=_FAST_LOADER))
    except yaml.YAMLError as error:
        # libyaml stops at 1000 levels, before yielding the events that would show the depth.
        # (PyYAML's own scanner would go on, in time quadratic in the depth.)
        if "maximum nesting depth" in str(error):
            raise _too_deep() from None


def _too_deep() -> ConfigTextError:
    return ConfigTextError(f"the YAML nests deeper than {MAX_YAML_DEPTH} levels")


def _scan_events(events: Iterable[yaml.Event]) -> None:
    sizes: dict[str, int] = {}
    stack: list[_OpenNode] = []
    for event in events:
        if isinstance(event, yaml.DocumentStartEvent):
            sizes.clear()  # anchors belong to one document
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_YAML_DEPTH:
                raise _too_deep()
            stack.append(_OpenNode(event.anchor))
        elif isinstance(event, yaml.CollectionEndEvent):
            _add_size(stack, sizes, stack.pop())
        elif isinstance(event, yaml.ScalarEvent):
            _add_size(stack, sizes, _OpenNode(event.anchor))
        elif isinstance(event, yaml.AliasEvent):
            _add_size(stack, sizes, _OpenNode(None, _alias_size(stack, sizes, event.anchor)))


def _alias_size(stack: list[_OpenNode], sizes: Mapping[str, int], anchor: str | None) -> int:
    if anchor is None:
        return 1
    if any(node.anchor == anchor for node in stack):
        raise ConfigTextError(f"the alias *{anchor} is used inside its own anchor &{anchor} (a loop)")
    return sizes.get(anchor, 1)  # an undefined alias is the loader's to report


def _add_size(stack: list[_OpenNode], sizes: dict[str, int], node: _OpenNode) -> None:
    if node.anchor is not None:
        sizes[node.anchor] = node.size
    total = node.size + (stack[-1].size if stack else 0)
    if total > MAX_YAML_NODES:
        raise ConfigTextError(
            f"the YAML aliases (*name) expand too far: more than {MAX_YAML_NODES:,} values "
            "(a \"billion laughs\" file?)"
        )
    if stack:
        stack[-1].size = total


def quick_state_dir(config_path: Path) -> Path:
    """The state directory a config names, read without validating the rest of the file.

    Never raises: the CLI finds the daemon's socket with it, and must reach (and stop) a running
    daemon while models.yaml is broken. When the file does not parse, a `state_dir:` line in the
    `bawt_vllm:` section is looked for; otherwise the default applies. `config check` says what is wrong.
    """
    try:
        data, too_big = _read_capped(config_path)
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
    check_yaml_expansion(text)
    document: Any = yaml.load(text, Loader=_FAST_LOADER)
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
    return state_dir / "control.sock"


def log_dir(state_dir: Path) -> Path:
    """Where each start of each model writes its log, as <alias>.<N>.log."""
    return state_dir / "logs"


def find_log(logs: Path, alias: str, start: int | None = None) -> Path | None:
    """The log of alias's start number `start`, else of its latest start; None if there is none.

    An alias that could not be a model's (see is_safe_alias) has no log: it could point outside `logs`.
    """
    if not is_safe_alias(alias):
        return None
    if start is not None:
        path = logs / f"{alias}.{start}.log"
        return path if path.exists() else None
    candidates = sorted(logs.glob(f"{alias}.*.log"), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None
