"""Metrics read event kinds, never message text (supervisor/serve/metrics.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from bawt_vllm.supervisor.runtime.states import Event, EventKind, Stage, State
from bawt_vllm.supervisor.runtime.stops import StopResult
from bawt_vllm.supervisor.serve.metrics import Metrics
from prometheus_client.parser import text_string_to_metric_families


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def observe(metrics: Metrics, at: float, kind: EventKind, state: State, message: str,
            stage: Stage | None = None) -> None:
    instance: Any = SimpleNamespace(alias="m")
    metrics.observe(instance, Event(at, kind, state, message, stage))


def test_starts_restarts_and_load_time_come_from_event_kinds() -> None:
    metrics = Metrics(lambda: [])
    observe(metrics, 10.0, EventKind.LAUNCHED, State.STARTING, "launched pid 1", Stage.LAUNCHED)
    observe(metrics, 12.0, EventKind.STAGE, State.STARTING, "crashed; restart 1/3 in 1.0s", Stage.KV_CACHE)
    observe(metrics, 25.0, EventKind.READY, State.READY, "ready at http://127.0.0.1:1/v1")
    observe(metrics, 30.0, EventKind.RESTARTING, State.STARTING, "any wording at all")
    found = samples(metrics)
    model = (("model", "m"),)
    assert found[("bawt_vllm_starts_total", model)] == 1
    assert found[("bawt_vllm_restarts_total", model)] == 1, "the text of a STAGE event was counted as a restart"
    assert found[("bawt_vllm_load_seconds_sum", model)] == 15.0


def test_a_stop_counts_its_time_and_only_proven_vram() -> None:
    metrics = Metrics(lambda: [])
    metrics.observe_stop(StopResult("m", 0.25, was_running=True))
    metrics.observe_stop(StopResult("m", 0.0, was_running=False))
    found = samples(metrics)
    assert found[("bawt_vllm_stop_seconds_count", (("model", "m"),))] == 1
    assert ("bawt_vllm_vram_freed_bytes_total", (("model", "m"),)) not in found
