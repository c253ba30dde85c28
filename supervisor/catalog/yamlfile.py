"""Comment-preserving, atomic edits of a models.yaml.

The file belongs to a person (and is shared with llm-bawt), so an edit must change
only what it means to change: `set_model_entry` adds or replaces one entry under
`models:`, and `render` returns the original text with just those entries spliced
in. Everything else (other entries, comments, blank lines, `null` spellings, quoting)
stays byte-identical.

How: the document is loaded with ruamel.yaml in round-trip mode, and the whole
document is dumped with it too, but ruamel normalises a few things when it dumps
(`null` becomes an empty value, for one). So `render` takes only the touched
entries' text from ruamel's dump and splices it into the original text at the
entries' line ranges. The splice is checked by parsing it back: when the data
differs from the document (an unusual layout, or a document changed by other
means than `set_model_entry`), `render` falls back to ruamel's full dump, which is
still data-exact and keeps comments.

Writes are atomic (temp file in the same directory, fsync, `os.replace`), keep the
file's mode, follow a symlinked models.yaml to its real file, and optionally keep
the previous content as `models.yaml.bak`.

ruamel.yaml is imported inside the functions: the CLI must start fast.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config.atomic import write_atomically

if TYPE_CHECKING:
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap

MODELS_KEY = "models"
BACKUP_SUFFIX = ".bak"
DEFAULT_INDENT = (2, 4, 2)
"""(mapping, sequence, offset) for files whose indentation cannot be guessed: `- item` two columns in."""

_STATE_ATTR = "_bawt_yamlfile_state"
_EMPTY_MODELS_LINE = re.compile(rf"^({MODELS_KEY}[ \t]*:)[ \t]*(?:~|null|Null|NULL)?([ \t]*#.*?)?\r?\n?$")
_WIDTH = 4096  # never fold long scalars or flow lists


class YamlFileError(Exception):
    """A models.yaml could not be read, understood or written; the message names the file."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        self.message = message
        super().__init__(f"{path}: {message}")


class ConfigReadError(YamlFileError):
    """The file cannot be read, is not valid YAML, or does not have the expected shape."""


class ConfigWriteError(YamlFileError):
    """The file cannot be written; the original is untouched."""


@dataclass
class _State:
    """What `render` needs to splice: the text the document came from and what changed since."""

    text: str
    indent: tuple[int, int, int]
    touched: dict[str, int] = field(default_factory=dict)  # alias -> number of comment lines above it


# --------------------------------------------------------------------------- loading


def _yaml(indent: tuple[int, int, int] = DEFAULT_INDENT) -> YAML:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = _WIDTH
    mapping, sequence, offset = indent
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _guess_indent(text: str, document: Any) -> tuple[int, int, int]:
    """The file's own indentation, so new entries look like the existing ones.

    The mapping indent is measured on the document (ruamel's guess reports the
    sequence indent when a file has lists); the dash offset of lists is ruamel's guess.
    """
    from ruamel.yaml.util import load_yaml_guess_indent

    mapping = _mapping_indent(document) or DEFAULT_INDENT[0]
    try:
        _, _, offset = load_yaml_guess_indent(text)
    except Exception:
        offset = None
    offset = DEFAULT_INDENT[2] if offset is None else offset
    return mapping, offset + 2, offset


def _mapping_indent(document: Any) -> int | None:
    """Columns between a top-level key and its first nested key."""
    from ruamel.yaml.comments import CommentedMap

    if not isinstance(document, CommentedMap):
        return None
    for key, value in document.items():
        if isinstance(value, CommentedMap) and value and not value.fa.flow_style():
            with contextlib.suppress(Exception):
                indent = int(value.lc.key(next(iter(value)))[1]) - int(document.lc.key(key)[1])
                if indent > 0:
                    return indent
    return None


def parse_document(text: str, path: Path | str = "<text>") -> CommentedMap:
    """Parse models.yaml text into a round-trip document (an empty text gives an empty map)."""
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError

    try:
        document = _yaml().load(text)
    except YAMLError as error:
        raise ConfigReadError(path, f"invalid YAML: {_one_line(str(error))}") from None
    if document is None:
        document = CommentedMap()
    if not isinstance(document, CommentedMap):
        raise ConfigReadError(path, f"the top level must be a map with a '{MODELS_KEY}' key")
    models = document.get(MODELS_KEY)
    if models is not None and not isinstance(models, CommentedMap):
        raise ConfigReadError(path, f"'{MODELS_KEY}' must be a map of alias -> model definition")
    setattr(document, _STATE_ATTR, _State(text=text, indent=_guess_indent(text, document)))
    return document


def load_document(path: Path) -> CommentedMap:
    """Read and parse a models.yaml for editing."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigReadError(path, f"cannot read the file: {_describe_os_error(error)}") from None
    return parse_document(text, path)


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------- editing


def set_model_entry(
    doc: CommentedMap, alias: str, mapping: Mapping[str, Any], *, comment: str | None = None
) -> None:
    """Add `alias` under `models:`, or replace its definition in place (same position).

    `comment` (one or more lines, without '#') is written just above the entry.
    Every other entry, comment and key is left as it is.
    """
    from ruamel.yaml.comments import CommentedMap

    models = doc.get(MODELS_KEY)
    if models is None:
        models = CommentedMap()
        doc[MODELS_KEY] = models
    if models.fa.flow_style():
        models.fa.set_block_style()
    models[alias] = _commented(mapping)
    comment_lines = 0
    if comment:
        column = _entry_column(models, alias, _state(doc).indent[0])
        models.yaml_set_comment_before_after_key(alias, before=comment, indent=column)
        comment_lines = len(comment.splitlines())
    _state(doc).touched[alias] = comment_lines


def _entry_column(models: CommentedMap, alias: str, default: int) -> int:
    """Column of the aliases in `models:` (where the comment goes)."""
    for key in models:
        if key != alias:
            with contextlib.suppress(Exception):
                return int(models.lc.key(key)[1])
    return default


def _commented(value: Any) -> Any:
    """Plain dicts/lists as ruamel nodes; short scalar lists in flow style, like `extra_args: [a, b]`."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, Mapping):
        return CommentedMap((str(key), _commented(item)) for key, item in value.items())
    if isinstance(value, list | tuple):
        sequence = CommentedSeq(_commented(item) for item in value)
        if all(not isinstance(item, Mapping | list | tuple) for item in value):
            sequence.fa.set_flow_style()
        return sequence
    return value


def _state(doc: CommentedMap) -> _State:
    state = getattr(doc, _STATE_ATTR, None)
    if state is None:
        state = _State(text="", indent=DEFAULT_INDENT)
        setattr(doc, _STATE_ATTR, state)
    return state


# --------------------------------------------------------------------------- rendering


def render(doc: CommentedMap) -> str:
    """The document as text: the original bytes with only the touched entries changed."""
    state = _state(doc)
    full = _dump(doc, state.indent)
    if state.text:
        full = _match_newlines(full, state.text)
        spliced = _splice(state, full)
        if spliced is not None and _same_data(spliced, doc):
            return spliced
    return full


def _dump(doc: CommentedMap, indent: tuple[int, int, int]) -> str:
    buffer = io.StringIO()
    _yaml(indent).dump(doc, buffer)
    return buffer.getvalue()


def _match_newlines(text: str, like: str) -> str:
    return text.replace("\n", "\r\n") if "\r\n" in like else text


@dataclass
class _Layout:
    """Where the `models:` entries sit in a text, by 0-based line numbers."""

    lines: list[str]
    models_line: int | None  # the `models:` key line
    models_is_null: bool  # `models:` with no value (we may insert below it)
    column: int | None  # column of the aliases
    spans: dict[str, tuple[int, int]]  # alias -> [first, end) lines of its content


def _layout(text: str) -> _Layout | None:
    """Line spans of each alias under `models:`; None when the layout is not plain block style."""
    try:
        doc = _yaml().load(text)
    except Exception:
        return None
    lines = text.splitlines(keepends=True)
    if doc is None or MODELS_KEY not in doc:
        return _Layout(lines, None, False, None, {})
    top_keys = list(doc)
    models_line = int(doc.lc.key(MODELS_KEY)[0])
    models = doc[MODELS_KEY]
    index = top_keys.index(MODELS_KEY)
    block_end = int(doc.lc.key(top_keys[index + 1])[0]) if index + 1 < len(top_keys) else len(lines)
    if models is None:
        return _Layout(lines, models_line, True, None, {})
    if models.fa.flow_style() or not models:
        return None
    aliases = list(models)
    starts = [int(models.lc.key(alias)[0]) for alias in aliases]
    spans = {}
    for position, alias in enumerate(aliases):
        limit = starts[position + 1] if position + 1 < len(aliases) else block_end
        spans[str(alias)] = (starts[position], _content_end(lines, starts[position], limit))
    column = int(models.lc.key(aliases[0])[1])
    return _Layout(lines, models_line, False, column, spans)


def _content_end(lines: list[str], first: int, limit: int) -> int:
    """End of an entry: after its last line that is neither blank nor only a comment.

    Comment lines and blank lines trailing an entry usually introduce the next one,
    so they stay where they are.
    """
    end = first + 1
    for number in range(first + 1, min(limit, len(lines))):
        stripped = lines[number].strip()
        if stripped in ("---", "...") or stripped.startswith("--- "):
            break  # a document marker ends the document
        if stripped and not stripped.startswith("#"):
            end = number + 1
    return end


def _splice(state: _State, full: str) -> str | None:
    """The original text with the touched entries taken from the full dump, or None if not possible."""
    source, dumped = _layout(state.text), _layout(full)
    if source is None or dumped is None:
        return None
    lines = list(source.lines)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\r\n" if "\r\n" in state.text else "\n"
    edits: list[tuple[int, int, list[str]]] = []
    appended: list[list[str]] = []
    for alias, comment_lines in state.touched.items():
        if alias not in dumped.spans:
            return None
        first, end = dumped.spans[alias]
        block = _reindent(dumped.lines[first - comment_lines : end], dumped.column, source.column)
        if alias in source.spans:
            start, stop = source.spans[alias]
            if comment_lines and lines[start - comment_lines : start] == block[:comment_lines]:
                start -= comment_lines  # our comment from an earlier run: replace, do not repeat
            edits.append((start, stop, block))
        else:
            appended.append(block)
    if appended:
        edit = _insertion(source, lines, appended, state.text)
        if edit is None:
            return None
        edits.append(edit)
    for start, stop, block in sorted(edits, key=lambda item: item[0], reverse=True):
        lines[start:stop] = block
    return "".join(lines)


def _insertion(
    source: _Layout, lines: list[str], blocks: list[list[str]], text: str
) -> tuple[int, int, list[str]] | None:
    """Where new entries go: after the last entry's content (or under an empty `models:`, or at the end).

    When the file separates its entries with a blank line, so are the new ones.
    """
    newline = "\r\n" if "\r\n" in text else "\n"
    separator: list[str] = []
    if source.spans:
        last_first, last_end = list(source.spans.values())[-1]
        above = last_first - 1
        while above >= 0 and lines[above].lstrip().startswith("#"):
            above -= 1
        if above >= 0 and not lines[above].strip() and len(source.spans) > 1:
            separator = [newline]
    joined = [line for block in blocks for line in (*separator, *block)]
    if source.spans:
        return last_end, last_end, joined
    joined = joined[len(separator) :]
    if source.models_line is None:
        return len(lines), len(lines), [f"{MODELS_KEY}:{newline}", *joined]
    empty = _EMPTY_MODELS_LINE.match(lines[source.models_line]) if source.models_is_null else None
    if empty is None:
        return None
    header = f"{empty.group(1)}{empty.group(2) or ''}{newline}"  # `models: ~  # x` -> `models:  # x`
    return source.models_line, source.models_line + 1, [header, *joined]


def _reindent(block: list[str], have: int | None, want: int | None) -> list[str]:
    if have is None or want is None or have == want:
        return block
    if want > have:
        return [" " * (want - have) + line if line.strip() else line for line in block]
    cut = have - want
    return [line[cut:] if line[:cut].strip() == "" else line for line in block]


def _same_data(text: str, doc: CommentedMap) -> bool:
    try:
        parsed = _yaml().load(text)
    except Exception:
        return False
    return plain(parsed) == plain(doc)


def plain(value: Any) -> Any:
    """A ruamel node as plain dicts, lists and scalars (for comparisons)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


# --------------------------------------------------------------------------- diff


def unified_diff(old_text: str, new_text: str, path: Path | str) -> str:
    """A `diff -u` style patch from `old_text` to `new_text`; empty when they are equal."""
    if old_text == new_text:
        return ""
    lines = difflib.unified_diff(
        old_text.splitlines(keepends=True),
        new_text.splitlines(keepends=True),
        fromfile=str(path) if old_text else "/dev/null",
        tofile=str(path),
    )
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


# --------------------------------------------------------------------------- writing


def write_document(path: Path, doc: CommentedMap, *, backup: bool = True) -> Path | None:
    """Render `doc` and write it atomically to `path`; see `write_text`."""
    return write_text(path, render(doc), backup=backup)


def write_text(path: Path, text: str, *, backup: bool = True) -> Path | None:
    """Atomically replace `path` with `text` (creating it and its directory when missing).

    Returns the backup path (`<name>.bak`, the previous content) when one was written;
    None when the file was new, `backup` is False, or nothing changed (then nothing is written).
    Raises ConfigWriteError, leaving the original untouched, when the file or its
    directory is not writable.
    """
    path = Path(path)
    target = _real_path(path)
    old = _read_bytes(path, target)
    data = text.encode("utf-8")
    if old == data:
        return None
    mode = _check_writable(path, target) if old is not None else _new_file_mode()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        message = f"cannot create the directory {target.parent}: {_describe_os_error(error)}"
        raise ConfigWriteError(path, message) from None
    backup_path = None
    if backup and old is not None:
        backup_path = target.with_name(target.name + BACKUP_SUFFIX)
        _atomic_write(path, backup_path, old, mode)
    _atomic_write(path, target, data, mode)
    return backup_path


def _real_path(path: Path) -> Path:
    """A symlinked models.yaml (dotfiles) stays a symlink: write through to its target."""
    return path.resolve() if path.is_symlink() else path


def _read_bytes(path: Path, target: Path) -> bytes | None:
    try:
        return target.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise ConfigWriteError(path, f"cannot read the current file: {_describe_os_error(error)}") from None


def _check_writable(path: Path, target: Path) -> int:
    """The file's mode, after refusing files that are read-only.

    A file with no write bit at all is refused even for root (who could replace it
    anyway): somebody made it read-only on purpose.
    """
    mode = stat.S_IMODE(target.stat().st_mode)
    if not os.access(target, os.W_OK) or not mode & 0o222:
        raise ConfigWriteError(path, f"the file is read-only (mode {mode:o}); make it writable to edit it")
    return mode


def _new_file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(shown: Path, target: Path, data: bytes, mode: int) -> None:
    try:
        write_atomically(target, data, mode)
    except OSError as error:
        raise ConfigWriteError(shown, f"cannot write {target}: {_describe_os_error(error)}") from None



def _describe_os_error(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)
