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


def test_relayed_bytes_give_stream_events_and_reported_usage() -> None:
    metrics = Metrics(lambda: [])
    metrics.relayed("m", b'data: {"choices": []}\n\ndata: {"choices": []}\n\n')
    metrics.relayed("m", b'data: {"usage": {"prompt_tokens": 7, "completion_tokens": 2, '
                         b'"prompt_tokens_details": null}}\n\ndata: [DONE]\n\n')
    metrics.relayed("m", b'{"usage": {"prompt_tokens":3,"completion_tokens":1}}')  # a whole JSON response
    found = samples(metrics)
    model = (("model", "m"),)
    assert found[("bawt_vllm_stream_events_total", model)] == 3
    assert found[("bawt_vllm_completion_tokens_total", model)] == 3
    assert found[("bawt_vllm_prompt_tokens_total", model)] == 10


def test_labels_stay_bounded_and_no_created_series() -> None:
    rows = [{"alias": "m", "state": "ready", "in_flight": 1}, {"alias": "n", "state": "stopped"}]
    metrics = Metrics(lambda: rows)
    for path in ("/v1/chat/completions", "/v1/made-up/1", "/v1/made-up/2", "/v1/models"):
        metrics.request("m", path)
    found = samples(metrics)
    routes = {dict(labels)["route"] for (name, labels) in found if name == "bawt_vllm_requests_total"}
    assert routes == {"chat/completions", "models", "other"}
    assert found[("bawt_vllm_instance_state", (("model", "m"), ("state", "ready")))] == 1
    assert found[("bawt_vllm_instance_state", (("model", "n"), ("state", "ready")))] == 0
    assert not [name for (name, _) in found if name.endswith("_created")]
