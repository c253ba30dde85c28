"""Which vLLM a `vllm_executable` runs, told from the files beside it (never by running it: `vllm
--version` imports torch and takes seconds).

A console script lives in `<env>/bin/`; its environment's `lib/python*/site-packages` holds a
`vllm-<version>.dist-info` folder. A wrapper script or a stand-in has none: the version is
unknown and optional flags stay off.
"""

from __future__ import annotations

import functools
import re
import shutil
from pathlib import Path

ACCESS_LOG_FILTER_SINCE = (0, 16)
"""vLLM 0.16 added `--disable-access-log-for-endpoints`."""
PROBED_ENDPOINTS = ("/health", "/metrics", "/v1/models")
"""What the supervisor itself calls every health interval; users reach vLLM only through /v1/ routes
the gateway forwards, never these (the gateway answers /v1/models itself)."""

_DIST_INFO = re.compile(r"^vllm-(\d+)\.(\d+)(?:\.(\d+))?[^/]*\.dist-info$")


@functools.lru_cache(maxsize=16)
def installed_vllm_version(executable: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of the vLLM installed beside executable, None when it cannot be told."""
    found = shutil.which(executable)
    if found is None:
        return None
    environment = Path(found).parent.parent
    for site in sorted(environment.glob("lib/python*/site-packages")):
        for entry in site.iterdir():
            match = _DIST_INFO.match(entry.name)
            if match:
                major, minor, patch = match.groups()
                return int(major), int(minor), int(patch or 0)
    return None


def filters_access_log(executable: str) -> bool:
    """Whether the vLLM behind executable can leave endpoints out of its access log."""
    version = installed_vllm_version(executable)
    return version is not None and version[:2] >= ACCESS_LOG_FILTER_SINCE
