"""The Quickstart demo: a real `vllm serve` (CPU build, tiny local model) under the supervisor.

Starts it, asks one chat question through the OpenAI client, stops it, and shows that no
process of its tree is left. Run through `python3 scripts/bootstrap.py demo`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import psutil
import yaml
from bawt_vllm.supervisor.catalog.entries import openai_entry_text
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.config.urls import gateway_base_url
from bawt_vllm.supervisor.runtime.pool import Pool
from openai import AsyncOpenAI

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".bawt-vllm" / "demo"


def testbed() -> dict:
    spec = importlib.util.spec_from_file_location("testbed", ROOT / "scripts" / "testbed.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module.ensure_testbed(log=lambda _message: None)


def write_config(bed: dict) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    document = {
        "bawt_vllm": {"vllm_executable": bed["vllm"], "state_dir": str(WORK / "state"), "port_range": [8500, 8599]},
        "models": {"tiny": {
            "type": "vllm", "model_id": bed["model_dir"], "description": "tiny Llama built locally (random weights)",
            "dtype": "bfloat16", "max_model_len": 512, "enforce_eager": True,
            "tool_support": "native", "tool_call_parser": "hermes", "env": bed["env"],
        }},
    }
    path = WORK / "models.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


async def demo(config_path: Path) -> int:
    pool = Pool(load_config(config_path))
    instance = await pool.up("tiny", wait=False)
    instance.add_listener(lambda _i, event: print(f"  [{event.stage or event.state.value}] {event.message[:110]}"))
    print(f"starting: {instance.serve_command().display()}")
    try:
        await instance.wait_ready(timeout=600)
        members = instance.process.refresh()
        print(f"\nready at {instance.endpoint}; process tree:")
        for member in members:
            proc = psutil.Process(member.pid)
            print(f"  pid {member.pid:>7}  {proc.name():<20} rss {proc.memory_info().rss / 2**20:,.0f} MiB")
        client = AsyncOpenAI(base_url=instance.endpoint, api_key=instance.api_key)  # the instance's own key
        question = "Say hello."
        reply = await client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": question}], max_tokens=64, temperature=0,
            extra_body={"structured_outputs": {"regex": "Hello from a supervised vllm serve!"}})
        await client.close()
        print(f"\nuser: {question}\ntiny: {reply.choices[0].message.content}")
        print("\nllm-bawt entry for it (what `bawt-vllm up` prints; it points at the daemon's gateway, since")
        print("each backend answers only its own key):")
        print(openai_entry_text("tiny", instance.entry, gateway_base_url(pool.config.settings)))
    finally:
        result = await pool.down("tiny")
        print(f"\nstop: {result.summary()}")
    left = [m.pid for m in members if psutil.pid_exists(m.pid)
            and psutil.Process(m.pid).status() != psutil.STATUS_ZOMBIE]
    print(f"processes of the tree still alive: {left or 'none'}")
    return 0 if result.clean and not left else 1


def main() -> int:
    return asyncio.run(demo(write_config(testbed())))


if __name__ == "__main__":
    sys.exit(main())
