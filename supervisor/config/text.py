"""Reading models.yaml's text safely, before anything builds the document: a size cap, UTF-8 only,
and a bound on how far its YAML aliases expand and how deep it nests."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_CONFIG_BYTES = 1024 * 1024
"""A models.yaml above this is refused unread: real ones are a few KiB."""
MAX_YAML_NODES = 100_000
"""Values a models.yaml may stand for once every alias is expanded (real files: a few thousand)."""
MAX_YAML_DEPTH = 100
"""Nesting a models.yaml may have (real files: about 5); keeps the recursive YAML composer safe."""


class ConfigTextError(Exception):
    """models.yaml cannot be taken as YAML text: too large, not UTF-8, or its aliases or nesting go too far."""


def read_config_text(path: Path) -> str:
    """The file's text, read at most MAX_CONFIG_BYTES; raises OSError or ConfigTextError."""
    data, too_big = read_capped(path)
    if too_big:
        raise ConfigTextError(f"the file is larger than {MAX_CONFIG_BYTES // 1024} KiB; a models.yaml is a few KiB")
    return _decode_utf8(data)


def read_capped(path: Path) -> tuple[bytes, bool]:
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


def load_checked_yaml(text: str) -> Any:
    """The YAML document in `text`, built once check_yaml_expansion let it through.

    Raises ConfigTextError or yaml.YAMLError. Repeated keys are not looked for: this is for quick
    reads of one value, which `config check` does not replace.
    """
    check_yaml_expansion(text)
    return yaml.load(text, Loader=_FAST_LOADER)
