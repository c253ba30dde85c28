"""The vocabulary of one instance's life: its states, the moves between them, load stages, events.

Everything that reacts to an instance (the pool's records, metrics, the daemon's log, the
control socket's event stream, the CLI) reads these kinds, never the text of a message.
`Instance` is the only writer; this module holds no behaviour beyond the tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    FAILED = "failed"
    SLEEPING = "sleeping"  # vLLM sleep mode: the process lives, its weights and KV cache are off the GPU


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.STARTING, State.READY, State.FAILED, State.STOPPING}),
    State.READY: frozenset({State.UNHEALTHY, State.STARTING, State.STOPPING, State.FAILED, State.SLEEPING}),
    State.UNHEALTHY: frozenset({State.READY, State.STARTING, State.STOPPING, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.FAILED: frozenset({State.STARTING, State.STOPPING}),
    State.SLEEPING: frozenset({State.STARTING, State.STOPPING, State.FAILED}),
}

LIVE_STATES = frozenset({State.STARTING, State.READY, State.UNHEALTHY, State.SLEEPING})
"""States in which the instance holds (or is about to hold) a process tree, a port and GPUs."""


class IllegalTransition(RuntimeError):
    pass


class Stage(StrEnum):
    """How far a load has come, as vLLM's log tells it; in the order a load passes them."""

    LAUNCHED = "launched"
    ENGINE_STARTING = "engine starting"
    DOWNLOADING = "downloading"
    LOADING_WEIGHTS = "loading weights"
    WEIGHTS_LOADED = "weights loaded"
    KV_CACHE = "kv cache"
    COMPILING = "compiling"
    GRAPH_CAPTURE = "graph capture"
    SERVING = "serving"
    READY = "ready"

    @property
    def rank(self) -> int:
        """Position in a load: a stage only ever moves forward."""
        return _STAGE_RANK[self]


_STAGE_RANK = {stage: rank for rank, stage in enumerate(Stage)}


class EventKind(StrEnum):
    """What happened. A kind that changes the state names the state it enters (see `ENTERS`)."""

    START_REQUESTED = "start requested"
    ADOPTING = "adopting"  # taking over a tree a previous supervisor left running
    LAUNCHED = "launched"  # a `vllm serve` process was spawned
    STAGE = "stage"  # the load reached a new stage
    READY = "ready"
    UNHEALTHY = "unhealthy"
    RECOVERED = "recovered"  # healthy again after failed health checks
    EXITED = "exited"  # the process died or hung after ready; what was left of the tree is gone
    RESTARTING = "restarting"  # a new start after a backoff
    STOPPING = "stopping"  # a stop asked for (by a user, a reload, a shutdown)
    EVICTED = "evicted"  # stopped to make room for another model
    SLEEPING = "sleeping"  # put to sleep (to make room, or idle): weights and KV cache leave the GPU
    SLEPT = "slept"  # the sleep is proven: the GPU memory came back
    WAKING = "waking"  # woken for a request: weights back on the GPU
    IDLE_UNLOADED = "idle unloaded"  # stopped after its idle TTL
    STOPPED = "stopped"
    FAILED = "failed"


STOP_KINDS = frozenset({EventKind.STOPPING, EventKind.EVICTED, EventKind.IDLE_UNLOADED})
"""The kinds a stop can be started with; each enters STOPPING."""

ENTERS: dict[EventKind, State] = {
    EventKind.START_REQUESTED: State.STARTING,
    EventKind.ADOPTING: State.STARTING,
    EventKind.RESTARTING: State.STARTING,
    EventKind.WAKING: State.STARTING,
    EventKind.SLEEPING: State.SLEEPING,
    EventKind.READY: State.READY,
    EventKind.RECOVERED: State.READY,
    EventKind.UNHEALTHY: State.UNHEALTHY,
    EventKind.STOPPING: State.STOPPING,
    EventKind.EVICTED: State.STOPPING,
    EventKind.IDLE_UNLOADED: State.STOPPING,
    EventKind.STOPPED: State.STOPPED,
    EventKind.FAILED: State.FAILED,
}
"""The state each state-changing kind enters; the kinds not listed are notes (the state stays)."""


@dataclass(frozen=True)
class Event:
    at: float
    kind: EventKind
    state: State  # the state after the event
    message: str
    stage: Stage | None = None

    def as_dict(self) -> dict[str, Any]:
        stage = None if self.stage is None else self.stage.value
        return {"at": self.at, "kind": self.kind.value, "state": self.state.value, "message": self.message,
                "stage": stage}
