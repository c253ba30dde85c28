"""Knowing when a `vllm serve` is really ready, and when it has stopped making progress.

vLLM refuses connections until the engine is loaded; what it does meanwhile is only in its
log. We follow the log for load stages (so users see weights, KV cache, graph capture go by)
and for *progress*: a load fails when the log has been silent for the stall timeout, not
after a fixed total, so a 150 s load of a 32B model passes and a hung one does not.
Ready means `/health` answers 200 and `/v1/models` lists the served name.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import aiohttp

from .states import Stage

# (stage, pattern), latest stage first: a line announcing a later stage wins. Stages only
# move forward (Stage.rank), so a late log line cannot make the display go backwards.
LOAD_STAGES: tuple[tuple[Stage, re.Pattern[str]], ...] = (
    (Stage.READY, re.compile(r"Application startup complete")),
    (Stage.SERVING, re.compile(r"Starting vLLM (API )?server on|Uvicorn running on")),
    (Stage.GRAPH_CAPTURE, re.compile(r"Capturing CUDA graphs?|Graph capturing finished")),
    (Stage.COMPILING, re.compile(r"torch\.compile takes|Compiling a graph|Dynamo bytecode transform")),
    (Stage.KV_CACHE, re.compile(r"KV cache size|Available KV cache memory|# (GPU|CPU) blocks|GiB for KV cache")),
    (Stage.WEIGHTS_LOADED, re.compile(r"Model loading took|Loading weights took")),
    (Stage.LOADING_WEIGHTS, re.compile(r"Starting to load model|Loading (safetensors|pt|gguf)|checkpoint shards")),
    (Stage.DOWNLOADING, re.compile(r"Downloading|Fetching \d+ files")),
    (Stage.ENGINE_STARTING, re.compile(r"Initializing a V1 LLM engine|Initializing an LLM engine")),
)


def classify_line(line: str) -> Stage | None:
    """The load stage a log line announces, if any."""
    for stage, pattern in LOAD_STAGES:
        if pattern.search(line):
            return stage
    return None


# vLLM's own metrics that say whether the engine has work, and counters that move whenever
# it does some (a generated token, a finished prefill, an engine step, a finished request).
_BUSY_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
_PROGRESS_COUNTERS = ("vllm:generation_tokens_total", "vllm:prompt_tokens_total",
                      "vllm:iteration_tokens_total_count", "vllm:request_success_total")
_WANTED = (*_BUSY_GAUGES, *_PROGRESS_COUNTERS)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def _lines_of(text: str, names: tuple[str, ...]) -> list[str]:
    """The lines that start with one of names, found by substring search: vLLM exports hundreds
    of metric lines, and the health check reads them every few seconds."""
    text = "\n" + text
    lines = []
    for name in names:
        at = text.find("\n" + name)
        while at >= 0:
            end = text.find("\n", at + 1)
            lines.append(text[at + 1:end if end >= 0 else len(text)])
            at = text.find("\n" + name, at + 1)
    return lines


@dataclass(frozen=True)
class EngineLoad:
    """What vLLM's /metrics says about its engine: requests it holds, and how far it has got."""

    busy: float
    progress: tuple[float, ...]


def parse_engine_metrics(text: str) -> EngineLoad | None:
    """Sum each metric over its label sets; None when the text has none of vLLM's gauges."""
    sums: dict[str, float] = {}
    for line in _lines_of(text, _WANTED):
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in _WANTED:
            continue
        try:
            sums[match.group(1)] = sums.get(match.group(1), 0.0) + float(match.group(3))
        except ValueError:
            continue
    if not any(name in sums for name in _BUSY_GAUGES):
        return None
    return EngineLoad(busy=sum(sums.get(name, 0.0) for name in _BUSY_GAUGES),
                      progress=tuple(sums.get(name, 0.0) for name in _PROGRESS_COUNTERS))


class HangDetector:
    """Tells a hung engine from a busy one.

    While vLLM holds requests, its counters move with every engine step; a busy engine that
    has not moved any of them for `window_s` is hung. An idle engine says nothing by its
    counters, so it is asked for one token now and then (`idle_probe_due`).
    """

    def __init__(self, window_s: float, idle_probe_every_s: float) -> None:
        self.window_s = window_s
        self.idle_probe_every_s = idle_probe_every_s
        self._progress: tuple[float, ...] | None = None
        self._moved_at = time.monotonic()
        self._probed_at = time.monotonic()

    def busy(self, load: EngineLoad, now: float) -> str | None:
        """Observe a busy engine; why it is hung, or None while it makes progress."""
        if load.progress != self._progress:
            self._progress, self._moved_at = load.progress, now
            return None
        stuck = now - self._moved_at
        if stuck >= self.window_s:
            return f"engine hung: {load.busy:.0f} request(s) held and no progress for {stuck:.1f}s"
        return None

    def idle_probe_due(self, load: EngineLoad | None, now: float) -> bool:
        if load is not None:
            self._progress, self._moved_at = load.progress, now
        if now - self._probed_at < self.idle_probe_every_s:
            return False
        self._probed_at = now
        return True


class HealthProbe:
    """HTTP checks against one instance's own endpoint."""

    def __init__(self, base_url: str, served_name: str, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.served_name = served_name
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _get(self, path: str, timeout_s: float) -> tuple[int, bytes] | None:
        """(status, body) of GET path on the instance, or None when nothing answers in time."""
        try:
            async with self._client().get(
                f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def control(self, path: str, timeout_s: float) -> tuple[int, bytes] | None:
        """(status, body) of POST path (vLLM's /sleep, /wake_up), or None when nothing answers in time."""
        try:
            async with self._client().post(
                f"{self.base_url}{path}", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def health(self, timeout_s: float = 2.0) -> int | None:
        """Status of GET /health, or None when nothing answers."""
        answer = await self._get("/health", timeout_s)
        return None if answer is None else answer[0]

    async def lists_model(self, timeout_s: float = 2.0) -> bool:
        """Whether GET /v1/models lists our served name."""
        answer = await self._get("/v1/models", timeout_s)
        if answer is None or answer[0] != 200:
            return False
        try:
            body = json.loads(answer[1])
            return any(item.get("id") == self.served_name for item in body.get("data", []))
        except (ValueError, AttributeError):
            return False

    async def engine_load(self, timeout_s: float = 2.0) -> EngineLoad | None:
        """vLLM's view of its engine from GET /metrics; None if it has no such metrics."""
        answer = await self._get("/metrics", timeout_s)
        if answer is None or answer[0] != 200:
            return None
        return parse_engine_metrics(answer[1].decode("utf-8", "replace"))

    async def ready(self) -> bool:
        return await self.health() == 200 and await self.lists_model()

    async def generates(self, timeout_s: float) -> bool:
        """A 1-token completion: catches an engine that hangs while /health still says 200."""
        payload = {"model": self.served_name, "prompt": "ok", "max_tokens": 1, "temperature": 0}
        try:
            async with self._client().post(
                f"{self.base_url}/v1/completions", json=payload, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False
