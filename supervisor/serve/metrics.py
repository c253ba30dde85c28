"""Prometheus metrics for the daemon (`GET /metrics` on the gateway port)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..runtime.instance import Instance
from ..runtime.states import Event, EventKind, State
from ..runtime.stops import StopResult

_LOAD_BUCKETS = (1, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600)
_STOP_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60)
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _InstanceStates(Collector):
    def __init__(self, rows: Callable[[], Iterable[dict[str, Any]]]) -> None:
        self._rows = rows

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("bawt_vllm_instances", "Configured models by state", labels=["state"])
        counts = {state.value: 0 for state in State}
        in_flight = GaugeMetricFamily("bawt_vllm_requests_in_flight", "Requests in flight", labels=["model"])
        for row in self._rows():
            counts[row["state"]] = counts.get(row["state"], 0) + 1
            in_flight.add_metric([row["alias"]], row.get("in_flight", 0))
        for state, count in counts.items():
            gauge.add_metric([state], count)
        yield gauge
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
        self.requests = Counter("bawt_vllm_requests", "Gateway requests", ["model", "route"], registry=r)
        self.errors = Counter("bawt_vllm_errors", "Gateway error responses", ["model", "status"], registry=r)
        self.latency = Histogram("bawt_vllm_gateway_seconds", "Gateway request to response headers",
                                 ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self._launched_at: dict[str, float] = {}

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

    def render(self) -> bytes:
        return generate_latest(self.registry)
