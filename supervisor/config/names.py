"""The names models.yaml is built from: its two top-level sections, and what a runnable model's alias may be.

An alias becomes a file name (instances/<alias>.json, logs/<alias>.N.log), so the rule is strict.
Free of pydantic and yaml: the fast CLI paths use it.
"""

from __future__ import annotations

import re

GLOBAL_SECTION = "bawt_vllm"
MODELS_SECTION = "models"


ALIAS_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}")
"""What a runnable model's alias must fully match (and it must not contain '..')."""
ALIAS_RULE = (
    "1 to 128 characters from letters, digits and . _ : + -, starting with a letter or digit, "
    "without '..' (aliases name files: instances/<alias>.json, logs/<alias>.N.log)"
)


def is_safe_alias(name: object) -> bool:
    """True when `name` can be a model alias, and so a file name, without leaving its directory."""
    return isinstance(name, str) and ALIAS_PATTERN.fullmatch(name) is not None and ".." not in name
