"""Prometheus metrics for the daemon (`GET /metrics` on the gateway port).

Every label has a bounded set of values: models come from the config, routes from ROUTES
(anything else is "other"), states from the state machine, statuses from HTTP. Token counts
and time to first token are read from the relayed bytes without decoding them.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from ..runtime.instance import Instance
from ..runtime.states import Event, EventKind, State
from ..runtime.stops import StopResult

_LOAD_BUCKETS = (1, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600)
_STOP_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
ROUTES = frozenset({"chat/completions", "completions", "embeddings", "responses", "models", "tokenize",
                    "detokenize", "score", "rerank", "pooling", "classify", "audio/transcriptions",
                    "audio/translations"})
"""The OpenAI (and vLLM) routes counted by name; any other path under /v1/ is counted as "other"."""
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


# "prompt_tokens": N and "completion_tokens": N of an OpenAI usage object, found in the raw bytes.
_USAGE = re.compile(rb'"(prompt|completion)_tokens"\s*:\s*(\d+)')

# The *_created series double every counter and histogram for nothing a scraper needs.
disable_created_metrics()


class _InstanceStates(Collector):
    def __init__(self, rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("bawt_vllm_instances", "Configured models by state", labels=["state"])
        counts = {state.value: 0 for state in State}
        per_model = GaugeMetricFamily("bawt_vllm_instance_state", "1 for the state each configured model is in",
                                      labels=["model", "state"])
        in_flight = GaugeMetricFamily("bawt_vllm_requests_in_flight", "Requests in flight", labels=["model"])
        for row in self._rows():
            counts[row["state"]] = counts.get(row["state"], 0) + 1
            for known in State:
                per_model.add_metric([row["alias"], known.value], 1 if row["state"] == known.value else 0)
            in_flight.add_metric([row["alias"]], row.get("in_flight", 0))
        for name, count in counts.items():
            gauge.add_metric([name], count)
        yield gauge
        yield per_model
        yield in_flight


class Metrics:
    def __init__(self, rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_InstanceStates(rows))
        r = self.registry
        self.starts = Counter("bawt_vllm_starts", "vllm serve processes launched", ["model"], registry=r)
        self.restarts = Counter("bawt_vllm_restarts", "Restarts after a crash or hang", ["model"], registry=r)
        self.load_seconds = Histogram("bawt_vllm_load_seconds", "Launch to ready", ["model"], buckets=_LOAD_BUCKETS,
                                      registry=r)
        self.stop_seconds = Histogram("bawt_vllm_stop_seconds", "Stop to verified gone", ["model"],
                                      buckets=_STOP_BUCKETS, registry=r)
        self.vram_freed = Counter("bawt_vllm_vram_freed_bytes", "VRAM proven freed by stops", ["model"], registry=r)
        self.errors = Counter("bawt_vllm_errors", "Gateway error responses", ["model", "status"], registry=r)
        # The per-request series are plain numbers, rendered at scrape time: a request costs
        # attribute updates, not prometheus_client's locked values (the daemon is one thread).
        self._series: dict[str, ModelSeries] = {}
        self.registry.register(_RequestSeries(self._series))
        self._launched_at: dict[str, float] = {}

    def model(self, alias: str) -> ModelSeries:
        """alias's per-request series, looked up once (labels() costs a lock and a hash per call)."""
        series = self._series.get(alias)
        if series is None:
            series = self._series[alias] = ModelSeries()
        return series

    def observe(self, instance: Instance, event: Event) -> None:
        """An instance listener: turns lifecycle events into counters."""
        alias = instance.alias
        if event.kind is EventKind.LAUNCHED:
            self.starts.labels(alias).inc()
            self._launched_at[alias] = event.at
        elif event.kind is EventKind.RESTARTING:
            self.restarts.labels(alias).inc()
        elif event.kind is EventKind.READY and alias in self._launched_at:
            self.load_seconds.labels(alias).observe(event.at - self._launched_at.pop(alias))

    def observe_stop(self, result: StopResult) -> None:
        """A pool stop listener: how long stops take, and the VRAM they proved freed."""
        if not result.was_running:
            return
        self.stop_seconds.labels(result.alias).observe(result.took_s)
        if result.vram is not None and result.vram.freed_bytes:
            self.vram_freed.labels(result.alias).inc(result.vram.freed_bytes)

    def request(self, alias: str, path: str) -> None:
        """Count a routed request; path is the upstream path (/v1/...)."""
        self.model(alias).request(path)

    def relayed(self, alias: str, chunk: bytes) -> None:
        """Count what a relayed response chunk carries: stream events and reported usage."""
        self.model(alias).relayed(chunk)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Buckets:
    """A histogram's observations: a count per bucket (cumulated when rendered) and their sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        rows: list[tuple[str, float]] = []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            rows.append((floatToGoString(bound), running))
        return rows


class ModelSeries:
    """One model's per-request series."""

    __slots__ = ("completion_tokens", "events", "first_token", "latency", "prompt_tokens", "routes")

    def __init__(self) -> None:
        self.latency = Buckets(_LATENCY_BUCKETS)
        self.first_token = Buckets(_TTFT_BUCKETS)
        self.events = 0
        self.completion_tokens = 0
        self.prompt_tokens = 0
        self.routes: dict[str, int] = {}  # bounded: ROUTES and "other"

    def request(self, path: str) -> None:
        route = path.removeprefix("/v1/")
        if route not in ROUTES:
            route = "other"
        self.routes[route] = self.routes.get(route, 0) + 1

    def relayed(self, chunk: bytes, *, stream: bool = True) -> None:
        """Count what a relayed response chunk carries: stream events and reported usage."""
        if stream:
            events = chunk.count(b"data: ") - chunk.count(b"data: [DONE]")
            if events > 0:
                self.events += events
        usage = chunk.find(b'"usage"')
        if usage >= 0 and b'"completion_tokens"' in chunk:
            for kind, count in _USAGE.findall(chunk, usage):
                if kind == b"completion":
                    self.completion_tokens += int(count)
                else:
                    self.prompt_tokens += int(count)


class _RequestSeries(Collector):
    def __init__(self, series: dict[str, ModelSeries]) -> None:
        self._series = series

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily("bawt_vllm_requests", "Gateway requests", labels=["model", "route"])
        latency = HistogramMetricFamily("bawt_vllm_gateway_seconds", "Gateway request to response headers",
                                        labels=["model"])
        first_token = HistogramMetricFamily("bawt_vllm_time_to_first_token_seconds", "Gateway request to the "
                                            "first streamed event (loading included)", labels=["model"])
        events = CounterMetricFamily("bawt_vllm_stream_events", "Streamed events relayed (vLLM sends about one "
                                     "per generated token)", labels=["model"])
        completion = CounterMetricFamily("bawt_vllm_completion_tokens", "Completion tokens, from the usage vLLM "
                                         "reports (streams only with stream_options.include_usage)", labels=["model"])
        prompt = CounterMetricFamily("bawt_vllm_prompt_tokens", "Prompt tokens, from the usage vLLM reports",
                                     labels=["model"])
        for alias, series in self._series.items():
            for route, count in series.routes.items():
                requests.add_metric([alias, route], count)
            latency.add_metric([alias], series.latency.cumulative(), series.latency.total)
            first_token.add_metric([alias], series.first_token.cumulative(), series.first_token.total)
            events.add_metric([alias], series.events)
            completion.add_metric([alias], series.completion_tokens)
            prompt.add_metric([alias], series.prompt_tokens)
        yield from (requests, latency, first_token, events, completion, prompt)
