#!/usr/bin/env python3
"""The CLI and daemon on a real GPU (run on a lent device machine).

`bawt-vllm up` (daemon auto-started) with a stand-in that holds VRAM, then `ps`, `gpus`,
`down`, printing what a user sees, and NVML's view after. Needs what gpu_vram_proof.py needs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHIM = Path(tempfile.mkdtemp(prefix="bawt-shim-"))
(SHIM / "bawt_vllm").mkdir()
(SHIM / "bawt_vllm" / "supervisor").symlink_to(ROOT / "supervisor")
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SHIM), os.environ.get("PYTHONPATH")]))}


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "bawt_vllm.supervisor.cli", *args], capture_output=True,
                            text=True, env=ENV, timeout=300)
    print(f"$ bawt-vllm {' '.join(args[:-2] if '--config' in args else args)}  (exit {result.returncode})")
    print(result.stdout + result.stderr, flush=True)
    return result.stdout


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="bawt-gpu-cli-"))
    config = work / "models.yaml"
    config.write_text(f"""bawt_vllm:
  vllm_executable: {ROOT / 'tests' / 'standin' / 'vllm'}
  state_dir: {work / 'state'}
models:
  holder:
    type: vllm
    model_id: standin/holder
    tool_support: none
    gpu_memory_utilization: 0.1
    env:
      FAKE_VLLM_MODE: hold_vram
      FAKE_VLLM_VRAM_GIB: "6"
      FAKE_VLLM_LOAD_S: "0"
""")
    cli("gpus")
    cli("up", "holder", "--config", str(config))
    cli("ps", "--config", str(config))
    cli("ps", "--json", "--config", str(config))
    cli("gpus")
    cli("down", "holder", "--config", str(config))
    cli("gpus", "--json")
    pid = subprocess.run([sys.executable, "-c", "import json,sys; print(json.load(sys.stdin)['daemon']['pid'])"],
                         input=cli("status", "--json", "--config", str(config)), capture_output=True,
                         text=True).stdout.strip()
    if pid:
        os.kill(int(pid), 15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
