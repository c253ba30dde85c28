"""The vocabulary of an instance's life (supervisor/runtime/states.py) is consistent with itself."""

from __future__ import annotations

from bawt_vllm.supervisor.runtime.readiness import LOAD_STAGES, classify_line
from bawt_vllm.supervisor.runtime.states import (
    ENTERS,
    STOP_KINDS,
    TRANSITIONS,
    Event,
    EventKind,
    Stage,
    State,
)


def test_every_state_changing_kind_enters_a_state_some_state_may_move_to() -> None:
    reachable = set().union(*TRANSITIONS.values())
    assert {ENTERS[kind] for kind in ENTERS} <= reachable
    assert all(ENTERS[kind] is State.STOPPING for kind in STOP_KINDS)


def test_a_load_passes_its_stages_in_order() -> None:
    order = [Stage.LAUNCHED, Stage.ENGINE_STARTING, Stage.LOADING_WEIGHTS, Stage.WEIGHTS_LOADED, Stage.KV_CACHE,
             Stage.SERVING, Stage.READY]
    assert [stage.rank for stage in order] == sorted(stage.rank for stage in order)
    assert {stage for stage, _ in LOAD_STAGES} == set(Stage) - {Stage.LAUNCHED}, "every log stage has a pattern"


def test_vllm_log_lines_are_classified_as_stages() -> None:
    assert classify_line("INFO: Application startup complete.") is Stage.READY
    assert classify_line("(EngineCore) Loading weights took 1.2 seconds") is Stage.WEIGHTS_LOADED
    assert classify_line("GET /health HTTP/1.1 200") is None


def test_an_event_says_its_kind_state_and_stage_as_plain_strings() -> None:
    event = Event(12.5, EventKind.STAGE, State.STARTING, "KV cache size 1000 tokens", Stage.KV_CACHE)
    assert event.as_dict() == {"at": 12.5, "kind": "stage", "state": "starting",
                               "message": "KV cache size 1000 tokens", "stage": "kv cache"}
