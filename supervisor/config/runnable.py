"""Can this config run here: what `bawt-vllm config check` looks up on this machine's filesystem.

Apart from loading on purpose: `load_config` (the daemon, the tests with stand-in executables)
judges the file alone, while these checks look at the machine it is checked on. A problem here
is not a mistake in the file's shape; it is a program or a model directory that is not there.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from .names import GLOBAL_SECTION
from .problems import ConfigProblem
from .schema import Config, ModelEntry

MODEL_CONFIG_FILE = "config.json"  # what vLLM reads first from a local model directory
_LOCAL_PREFIXES = ("/", "~", ".")  # a Hugging Face id (ORG/NAME) never starts so (as runtime.weights reads it)


def runnable_problems(config: Config, environ: Mapping[str, str] | None = None) -> list[ConfigProblem]:
    """Every reason config cannot run on this machine: the vLLM program and each entry's local model."""
    env = os.environ if environ is None else environ
    problems = _executable_problems(config, env)
    for entry in config.models.values():
        problems += [ConfigProblem(config.path, entry.alias, key, message) for key, message in _model_findings(entry)]
    return problems


def _executable_problems(config: Config, environ: Mapping[str, str]) -> list[ConfigProblem]:
    executable = config.settings.vllm_executable
    message = executable_problem(executable, environ.get("PATH"))
    return [] if message is None else [ConfigProblem(config.path, None, f"{GLOBAL_SECTION}.vllm_executable", message)]


def executable_problem(executable: str, search_path: str | None) -> str | None:
    """Why `executable` cannot be run (None: it can): a path must be an absolute path to an
    executable file, a bare name must be found on search_path."""
    if os.sep in executable:
        path = Path(executable)
        if not path.is_absolute():
            return (f"'{executable}' is a relative path, which the daemon would resolve against its own "
                    "working directory: give the full path")
        if not path.is_file():
            return f"'{executable}' does not exist" if not path.exists() else f"'{executable}' is not a file"
        if not os.access(path, os.X_OK):
            return f"'{executable}' is not executable (chmod +x it, or name vLLM's own `vllm`)"
        return None
    if shutil.which(executable, path=search_path) is None:
        return (f"'{executable}' is not on PATH: install vLLM here (pip install 'bawt-vllm[vllm]') "
                "or set it to the full path of vLLM's `vllm` program")
    return None


def _model_findings(entry: ModelEntry) -> list[tuple[str, str]]:
    """(key, message) for a local model source that vLLM could not load."""
    if entry.kind == "gguf":
        if entry.path and not Path(entry.path).is_file():
            return [("path", f"'{entry.path}' is not a file (a GGUF entry's path names the .gguf file)")]
        return []
    findings = []
    if entry.model_id and _looks_local(entry.model_id):
        findings += [("model_id", message) for message in _model_dir_problems(entry.model_id)]
    if entry.path:
        findings += [("path", message) for message in _model_dir_problems(entry.path)]
    return findings


def _looks_local(model_id: str) -> bool:
    """model_id names a local directory: it exists, or it is written as a path (never an ORG/NAME id)."""
    return model_id.startswith(_LOCAL_PREFIXES) or Path(model_id).expanduser().is_dir()


def _model_dir_problems(directory: str) -> list[str]:
    path = Path(directory).expanduser()
    if not path.exists():
        return [f"'{directory}' does not exist (a local model directory; a Hugging Face id is ORG/NAME)"]
    if not path.is_dir():
        return [f"'{directory}' is not a directory (a local model is a directory with {MODEL_CONFIG_FILE})"]
    if not (path / MODEL_CONFIG_FILE).is_file():
        return [f"'{directory}' has no {MODEL_CONFIG_FILE}: not a model directory vLLM can load"]
    return []
