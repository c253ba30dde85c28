"""Creating a virtual environment with nothing but python3 and pip (stdlib only).

`python3 -m venv` needs ensurepip, which Debian ships separately (python3-venv). Without
it, virtualenv from PyPI, installed into a private folder with pip, makes the venv instead.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def make_venv(path: Path) -> None:
    """Create a venv with pip at `path`."""
    made = subprocess.run([sys.executable, "-m", "venv", str(path)], capture_output=True, text=True)
    if made.returncode == 0:
        return
    tool = path.parent / f".{path.name}-virtualenv"
    install = [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(tool),
               "virtualenv"]
    if subprocess.run(install).returncode != 0:
        # A distribution's "externally managed" Python refuses even a --target install
        # unless told that it touches no system package, which --target never does.
        subprocess.run([*install, "--break-system-packages"], check=True)
    code = f"import sys; sys.path.insert(0, {str(tool)!r}); from virtualenv import cli_run; cli_run([{str(path)!r}])"
    subprocess.run([sys.executable, "-c", code], check=True)
