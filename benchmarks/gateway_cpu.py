"""The gateway's own cost per request, without vLLM: CPU time, or instructions under callgrind.

    .venv/bin/python benchmarks/gateway_cpu.py [--requests 3000] [--callgrind]

A client process sends `max_tokens=1`-sized completions one after another on one keep-alive
connection; a fake upstream process answers each at once with a vLLM-shaped response. In
between runs, in a process of its own, either bawt-vllm's gateway (the daemon's Gateway over a
pool whose instance is that upstream) or the bare TCP relay of benchmarks/_tcp_relay.py, on
asyncio's loop and on uvloop. Only that middle process is measured, and only while the client
runs: its CPU time per request, or with --callgrind (valgrind installed) the instructions it
executes per request, which do not move with whatever else the machine is doing: the way to
see what a change to the hot path costs. benchmarks/gateway.py measures the same against a
real vLLM, with latency and streams.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests"), str(HERE.parent / "tests" / "serve")]

BODY = (b'{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":"x",'
        b'"logprobs":null,"finish_reason":"length","stop_reason":null}],"usage":{"prompt_tokens":2,'
        b'"total_tokens":3,"completion_tokens":1}}')
RESPONSE = (b"HTTP/1.1 200 OK\r\ndate: Fri, 27 Nov 2026 08:00:00 GMT\r\nserver: uvicorn\r\n"
            b"content-length: %d\r\ncontent-type: application/json\r\n\r\n" % len(BODY) + BODY)
REQUEST_BODY = b'{"model": "m", "prompt": "hi", "max_tokens": 1, "temperature": 0}'
REQUEST = (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Python/3.11 aiohttp/3.14\r\n"
           b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nAuthorization: Bearer unused\r\n"
           b"Content-Length: %d\r\nContent-Type: application/json\r\n\r\n" % len(REQUEST_BODY) + REQUEST_BODY)
WARMUP = 200


# -- the two outer processes -----------------------------------------------------------------
class _Upstream(asyncio.Protocol):
    """Answers every whole request at once (heads and bodies found by Content-Length)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            for line in self.buffer[:end].split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]


async def upstream(port_file: str) -> None:
    server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", 0)
    Path(port_file).write_text(str(server.sockets[0].getsockname()[1]))
    await server.serve_forever()


def client(port: int, count: int) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", port)) as sock, sock.makefile("rb") as replies:
        for _ in range(count):
            sock.sendall(REQUEST)
            replies.readline()
            length = 0
            while (line := replies.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            replies.read(length)


# -- the measured process ------------------------------------------------------------------
async def serve_gateway(upstream_port: int) -> tuple[int, object]:
    from bawt_vllm.supervisor.serve.gateway import Gateway
    from bawt_vllm.supervisor.serve.metrics import Metrics
    from gateway_harness import UpstreamPool, standin_config

    pool = UpstreamPool(standin_config(Path(tempfile.mkdtemp(prefix="bawt-bench-"))),
                        f"http://127.0.0.1:{upstream_port}/v1")
    await pool.up("m")
    gateway = Gateway(pool, Metrics(pool.status), shutting_down=lambda: False)
    await gateway.start("127.0.0.1", 0)
    return gateway.port, gateway


async def serve_relay(upstream_port: int) -> tuple[int, object]:
    from _tcp_relay import pipe

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1], server


def callgrind(on: bool) -> None:
    if os.environ.get("BAWT_BENCH_CALLGRIND"):
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], check=True,
                       capture_output=True)


async def measured(target: str, upstream_port: int, count: int) -> None:
    port, _keep = await (serve_gateway if target == "gateway" else serve_relay)(upstream_port)

    async def run_client(requests: int) -> None:
        process = await asyncio.create_subprocess_exec(sys.executable, __file__, "--client", str(port),
                                                       str(requests))
        assert await process.wait() == 0

    await run_client(WARMUP)
    callgrind(True)
    started = time.process_time()
    await run_client(count)
    spent = time.process_time() - started
    callgrind(False)
    print(f"{spent / count * 1e6:.1f}")


def one(target: str, loop: str, upstream_port: int, count: int, use_callgrind: bool) -> float:
    """The middle process's cost per request: CPU microseconds, or instructions under callgrind."""
    env = {**os.environ, "BAWT_VLLM_EVENT_LOOP": loop}
    command = [sys.executable, __file__, "--measure", target, str(upstream_port), str(count)]
    work = Path(tempfile.mkdtemp(prefix="bawt-bench-cg-"))
    try:
        if use_callgrind:
            env["BAWT_BENCH_CALLGRIND"] = "1"
            command = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                       f"--callgrind-out-file={work}/out.%p", *command]
        output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        if not use_callgrind:
            return float(output.strip().splitlines()[-1])
        totals = [line for out in work.iterdir() for line in out.read_text().splitlines()
                  if line.startswith("totals:")]
        return int(totals[0].split()[1]) / count
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    if sys.argv[1:2] == ["--client"]:
        client(int(sys.argv[2]), int(sys.argv[3]))
        return 0
    if sys.argv[1:2] == ["--upstream"]:
        asyncio.run(upstream(sys.argv[2]))
        return 0
    if sys.argv[1:2] == ["--measure"]:
        from bawt_vllm.supervisor.serve import eventloop

        eventloop.run(measured(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--callgrind", action="store_true", help="count instructions (needs valgrind)")
    args = parser.parse_args()
    if args.callgrind and shutil.which("valgrind") is None:
        parser.error("--callgrind needs valgrind (apt-get install valgrind)")
    port_file = Path(tempfile.mkdtemp(prefix="bawt-bench-up-")) / "port"
    fake = subprocess.Popen([sys.executable, __file__, "--upstream", str(port_file)])
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or fake.poll() is not None:
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.02)
        upstream_port = int(port_file.read_text())
        unit = "instructions" if args.callgrind else "CPU us"
        results = {(target, loop): one(target, loop, upstream_port, args.requests, args.callgrind)
                   for target in ("relay", "gateway") for loop in ("asyncio", "uvloop")}
        print(f"{unit} per request, {args.requests} sequential requests (the middle process only):")
        print("| | asyncio | uvloop |\n|---|---|---|")
        for target in ("relay", "gateway"):
            print(f"| {target} | {results[target, 'asyncio']:,.0f} | {results[target, 'uvloop']:,.0f} |")
        ours = results["gateway", "uvloop"]  # as the daemon runs
        print(f"gateway on uvloop / relay on asyncio: {ours / results['relay', 'asyncio']:.2f}x; "
              f"/ relay on uvloop: {ours / results['relay', 'uvloop']:.2f}x")
    finally:
        fake.terminate()
        fake.wait()
        shutil.rmtree(port_file.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
