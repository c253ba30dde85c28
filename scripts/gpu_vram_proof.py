#!/usr/bin/env python3
"""The VRAM proof on a real GPU (run on a lent device machine; see the closing notes).

A stand-in server (tests/standin/vllm, mode hold_vram) holds VRAM with torch, and so does
its child. Three scenarios, each printing NVML's view before, during and after:
  1. stop: the supervisor stops the tree and proves the VRAM came back;
  2. orphan: the API server is SIGKILLed, its child keeps VRAM; the supervisor notices,
     sweeps the orphan and proves the VRAM came back;
  3. supervisor SIGKILL: the supervisor process dies; nothing of its tree stays on the GPU.
Needs torch, nvidia-ml-py, psutil, pyyaml, aiohttp, typer and pydantic importable.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIM = Path(tempfile.mkdtemp(prefix="bawt-shim-"))
(SHIM / "bawt_vllm").mkdir()
(SHIM / "bawt_vllm" / "supervisor").symlink_to(ROOT / "supervisor")
sys.path.insert(0, str(SHIM))
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))

import yaml  # noqa: E402
from bawt_vllm.supervisor.config.loading import load_config  # noqa: E402
from bawt_vllm.supervisor.runtime.gpus import describe, detect_inventory  # noqa: E402
from bawt_vllm.supervisor.runtime.pool import Pool  # noqa: E402
from bawt_vllm.supervisor.runtime.states import State  # noqa: E402

GIB = 1 << 30
HOLD_GIB = 4


def nvml_view(label: str) -> dict:
    gpus = describe(detect_inventory().snapshot())
    view = {"label": label, "gpus": [{"index": g["index"], "used_gib": round(g["used_bytes"] / GIB, 3),
                                      "processes": g["processes"]} for g in gpus]}
    print(json.dumps(view), flush=True)
    return view


def write_config(work: Path) -> Path:
    document = {
        "bawt_vllm": {"vllm_executable": str(ROOT / "tests" / "standin" / "vllm"), "state_dir": str(work / "state"),
                      "stop_grace_s": 5, "health_interval_s": 0.2, "max_restarts": 0, "vram_release_timeout_s": 20},
        "models": {"holder": {"type": "vllm", "model_id": "standin/holder", "tool_support": "none",
                              "gpu_memory_utilization": 0.1,
                              "env": {"FAKE_VLLM_MODE": os.environ.get("BAWT_PROOF_MODE", "hold_vram"),
                                      "FAKE_VLLM_VRAM_GIB": str(HOLD_GIB), "FAKE_VLLM_LOAD_S": "0"}}},
    }
    path = work / "models.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def scenario_stop(config_path: Path) -> dict:
    pool = Pool(load_config(config_path))
    nvml_view("1-before")
    instance = await pool.up("holder", timeout=120)
    pids = [m.pid for m in instance.process.refresh()]
    nvml_view("1-during")
    result = await pool.down("holder")
    nvml_view("1-after")
    return {"scenario": "stop", "tree_pids": pids, **result.as_dict(),
            "vram_detail": result.vram.detail if result.vram else None}


async def scenario_orphan(config_path: Path) -> dict:
    pool = Pool(load_config(config_path))
    nvml_view("2-before")
    instance = await pool.up("holder", timeout=120)
    pids = [m.pid for m in instance.process.refresh()]
    nvml_view("2-during")
    killed_at = time.monotonic()
    os.kill(instance.pid, signal.SIGKILL)  # the API server dies hard; its child keeps its VRAM
    while instance.state is not State.FAILED:
        await asyncio.wait_for(instance.wait_change(), 60)
    noticed_s = time.monotonic() - killed_at
    nvml_view("2-after-restart-giveup")
    orphan_alive = [p for p in pids if _alive(p)]
    await pool.close()
    return {"scenario": "orphan", "tree_pids": pids, "noticed_and_swept_s": round(noticed_s, 3),
            "alive_after": orphan_alive, "last_error": instance.last_error.reason if instance.last_error else None}


def scenario_supervisor_killed(config_path: Path) -> dict:
    nvml_view("3-before")
    supervisor = subprocess.Popen([sys.executable, "-m", "bawt_vllm.supervisor.cli", "up", "holder", "--foreground",
                                   "--config", str(config_path)], stdout=subprocess.PIPE, text=True)
    for line in supervisor.stdout:
        if "is ready at" in line:
            break
    record = json.loads((config_path.parent / "state" / "instances" / "holder.json").read_text())
    pids = [int(p) for p, _ in record["members"]]
    nvml_view("3-during")
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    started = time.monotonic()
    while any(_alive(p) for p in pids) and time.monotonic() - started < 30:
        time.sleep(0.05)
    gone_s = time.monotonic() - started
    while any(p["pid"] in pids for g in detect_inventory().snapshot() for p in _procs(g)) \
            and time.monotonic() - started < 30:
        time.sleep(0.05)
    off_gpu_s = time.monotonic() - started
    nvml_view("3-after")
    return {"scenario": "supervisor SIGKILL", "tree_pids": pids, "tree_gone_s": round(gone_s, 3),
            "off_nvml_s": round(off_gpu_s, 3), "alive_after": [p for p in pids if _alive(p)]}


def _procs(gpu) -> list[dict]:
    return [{"pid": p.pid} for p in gpu.processes]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def provenance() -> dict:
    """What produced these figures: the commit, the GPU driver and the NVML binding's version.

    The VRAM is held by the stand-in (torch allocations), not by a real vLLM engine.
    """
    from importlib.metadata import PackageNotFoundError, version

    import pynvml

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    pynvml.nvmlInit()
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
    finally:
        pynvml.nvmlShutdown()
    try:
        binding = version("nvidia-ml-py")
    except PackageNotFoundError:
        binding = "not installed as nvidia-ml-py"
    return {"commit": commit or "unknown (not a git checkout)", "source_sha256": source_fingerprint(),
            "driver": str(driver), "nvidia_ml_py": binding,
            "vram_held_by": "the stand-in server (torch allocations), not a real vLLM engine"}


def source_fingerprint() -> str:
    """sha256 over supervisor/**/*.py (paths and contents): what ran, even where the copy's git
    metadata is older than its files (a device machine gets the working tree, not the history).
    `python3 scripts/gpu_vram_proof.py --fingerprint` prints it for a checkout to compare."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "supervisor").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bawt-vram-"))
    config_path = write_config(work)
    about = provenance()
    print("PROVENANCE " + json.dumps(about), flush=True)
    results = [asyncio.run(scenario_stop(config_path)), asyncio.run(scenario_orphan(config_path)),
               scenario_supervisor_killed(config_path)]
    for result in results:
        print("RESULT " + json.dumps(result), flush=True)
    out = os.environ.get("OUT")
    if out:
        Path(out, "vram_proof.json").write_text(json.dumps({"provenance": about, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--fingerprint"]:
        print(source_fingerprint())
        sys.exit(0)
    sys.exit(main())
