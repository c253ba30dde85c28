"""What the wheel carries and says: the MIT licence as an SPDX expression with its file, typing
markers for both packages, the starter models.yaml as package data, and typer left uncapped."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def test_the_licence_is_mit_by_spdx_expression_with_its_file():
    assert PROJECT["license"] == "MIT" and PROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Permission is hereby granted, free of charge" in text
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")], "PEP 639: no licence classifiers"
    [setuptools] = [r for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")]
    assert int(re.search(r">=(\d+)", setuptools).group(1)) >= 77, "license-files needs setuptools 77"


def test_both_packages_are_typed_and_the_starter_file_is_package_data():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["bawt_vllm.supervisor"] and (REPO / "supervisor" / "py.typed").exists()
    assert "py.typed" in data["bawt_vllm.clients"] and (REPO / "clients" / "py.typed").exists()
    assert "models.yaml.example" in data["bawt_vllm.supervisor.config"]
    assert (REPO / "supervisor" / "config" / "models.yaml.example").exists()
    assert "Typing :: Typed" in PROJECT["classifiers"]


def test_typer_is_not_capped():
    """A cap on typer conflicts with vLLM's own tree (fastapi-cli needs typer>=0.26.1)."""
    [typer] = [d for d in PROJECT["dependencies"] if re.match(r"typer\b", d)]
    assert "<" not in typer and "==" not in typer, typer


def test_only_true_urls():
    for url in PROJECT.get("urls", {}).values():
        assert "example" not in url and "TODO" not in url, url
