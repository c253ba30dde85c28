"""Shared fixtures: the real-vLLM CPU test bed (scripts/testbed.py)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load_testbed_module():
    path = REPO_ROOT / "scripts" / "testbed.py"
    spec = importlib.util.spec_from_file_location("bawt_vllm_testbed", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class CpuTestbed:
    """How to run `vllm serve` on the CPU test bed's tiny model."""

    vllm: str  # absolute path to <testbed>/venv/bin/vllm
    python: str  # the test bed venv's python (has torch, transformers, vllm)
    model_dir: str  # the tiny Llama (random weights, ChatML + hermes tools template)
    served_model_name: str
    env: dict[str, str] = field(default_factory=dict)  # must be set for `vllm serve`
    serve_args: list[str] = field(default_factory=list)  # recommended extra `vllm serve` args


@pytest.fixture(autouse=True)
def _no_process_outlives_a_test() -> Iterator[None]:
    """Kill what pools registered with helpers.tracked() still hold, when a test failed midway."""
    yield
    from helpers import kill_pool_leftovers

    kill_pool_leftovers()


@pytest.fixture(scope="session")
def testbed() -> CpuTestbed:
    """Ensure the test bed exists (about 2 minutes the first time, seconds after) and describe it."""
    info = _load_testbed_module().ensure_testbed(log=print)
    return CpuTestbed(
        vllm=info["vllm"],
        python=info["python"],
        model_dir=info["model_dir"],
        served_model_name=info["served_model_name"],
        env=dict(info["env"]),
        serve_args=list(info["serve_args"]),
    )


@pytest.fixture
def tiny_models_yaml(tmp_path: Path, testbed: CpuTestbed) -> Path:
    """A models.yaml with one model, `tiny`, served by the test bed's vLLM."""
    config = {
        "bawt_vllm": {
            "vllm_executable": testbed.vllm,
            "state_dir": str(tmp_path / "state"),
        },
        "models": {
            "tiny": {
                "type": "vllm",
                "model_id": testbed.model_dir,
                "served_model_name": "tiny",
                "dtype": "bfloat16",
                "max_model_len": 512,
                "enforce_eager": True,
                "tool_support": "native",
                "tool_call_parser": "hermes",
                "env": dict(testbed.env),
            }
        },
    }
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
