"""The daemon's account of what its models do: one readable log line per lifecycle event.

A pool subscriber (`observe`) and stop listener (`observe_stop`): decisions are made on
`event.kind` and on the instance's typed fields (exit code, log path, placement); the
event's message is only shown, as the reason, never parsed.

    m: start requested (port 20001, GPU 0)
    m: load stage 'loading weights': INFO ... Starting to load model
    m: ready in 21.3s at http://127.0.0.1:20001/v1
    m: crashed with exit code 1 (log /var/lib/bawt-vllm/logs/m.3.log): vllm serve exited ...
    m: restarting after backoff: vllm serve exited ...; restart 1/3 in 2.0s
    m: gone in 0.31s (2 process(es) of the tree checked, none alive)
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..runtime.instance import Instance
from ..runtime.pool import Pool
from ..runtime.states import Event, EventKind
from ..runtime.stops import StopResult

log = logging.getLogger("bawt_vllm.models")

# The level of each kind; a kind not listed is info.
_LEVELS = {
    EventKind.UNHEALTHY: logging.WARNING,
    EventKind.EXITED: logging.WARNING,
    EventKind.RESTARTING: logging.WARNING,
    EventKind.FAILED: logging.ERROR,
    # The proof of the stop follows from observe_stop, in one line with the same facts.
    EventKind.STOPPED: logging.DEBUG,
}
# When a load began, for "ready in": a launch, or the adoption of a tree already running.
_LOAD_BEGINS = frozenset({EventKind.LAUNCHED, EventKind.ADOPTING, EventKind.WAKING})


class EventLog:
    """Turns an instance's typed events, and each stop's proof, into log lines."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger
        self._load_began: dict[str, float] = {}

    def attach(self, pool: Pool) -> Callable[[], None]:
        """Hear every event and every stop of pool; returns the events' unsubscribe."""
        pool.on_stop(self.observe_stop)
        return pool.subscribe(self.observe)

    def observe(self, instance: Instance, event: Event) -> None:
        """A pool listener: one line for event."""
        if event.kind in _LOAD_BEGINS:
            self._load_began[instance.alias] = event.at
        self.logger.log(_LEVELS.get(event.kind, logging.INFO), "%s: %s", instance.alias, self.describe(instance, event))

    def observe_stop(self, result: StopResult) -> None:
        """A pool stop listener: the proof of every stop of a running tree, as StopResult.summary() says it."""
        if result.was_running:
            self.logger.log(logging.INFO if result.clean else logging.ERROR, "%s", result.summary())

    def describe(self, instance: Instance, event: Event) -> str:
        """What happened, for people (without the alias)."""
        kind, message = event.kind, event.message
        if kind is EventKind.START_REQUESTED:
            return f"start requested ({_placement(instance)})"
        if kind is EventKind.STAGE:
            return f"load stage '{event.stage}': {message}"
        if kind is EventKind.READY:
            return f"ready{self._load_time(instance.alias, event)} at {instance.endpoint}"
        if kind is EventKind.RECOVERED:
            return "healthy again"
        if kind is EventKind.EXITED:
            return _exited(instance, message)
        if kind is EventKind.RESTARTING:
            return f"restarting after backoff: {message}{_log_suffix(instance)}"
        if kind is EventKind.IDLE_UNLOADED:
            ttl = instance.entry.idle_ttl_s or instance.settings.idle_ttl_s
            return "unloading: idle" + (f" for {ttl:g}s (its idle TTL)" if ttl else "")
        if kind is EventKind.FAILED:
            return f"failed: {message}{_log_suffix(instance)}"
        if kind is EventKind.LAUNCHED:
            return f"launched pid {instance.pid}{_log_suffix(instance)}"
        # adopting, unhealthy, stopping, evicted, stopped: the kind, then the message says why.
        return f"{kind.value}: {message}"

    def _load_time(self, alias: str, event: Event) -> str:
        began = self._load_began.pop(alias, None)
        return "" if began is None else f" in {event.at - began:.1f}s"


def _placement(instance: Instance) -> str:
    gpus = instance.placement.gpus
    where = f"GPU {','.join(str(gpu) for gpu in gpus)}" if gpus else "CPU"
    return f"port {instance.placement.port}, {where}"


def _exited(instance: Instance, message: str) -> str:
    """A tree that died (or was killed, hung) after it was ready: its exit code and log.

    The instance records the failure (last_error, with the exit code) just before this event."""
    code = None if instance.last_error is None else instance.last_error.exit_code
    if code is not None:
        return f"crashed with exit code {code}{_log_suffix(instance)}: {message}"
    return f"went down{_log_suffix(instance)}: {message}"


def _log_suffix(instance: Instance) -> str:
    """The log of the instance's current start (until the next launch: the one that failed)."""
    return "" if instance.log_path is None else f" (log {instance.log_path})"
