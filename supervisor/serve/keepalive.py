"""`keep_alive` in a request body, with Ollama's meaning, for the model the request names.

A number of seconds or a Go duration string ("5m", "1h30m", "30s", "0"); 0 unloads the model
once this request (and any other in flight for it) is done; a negative value keeps it loaded
(never idle-unloaded) until a later keep_alive says otherwise; a positive one is its idle TTL
from now on. `null` says nothing. The gateway takes the key out of the body: vLLM never sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re

from ..config.problems import UnknownModelError
from ..runtime.pool import Pool
from ..runtime.states import LIVE_STATES
from ..runtime.stops import StopResult

log = logging.getLogger("bawt_vllm.gateway")

KEEP_ALIVE = "keep_alive"
FOREVER = math.inf
"""The keep_alive of a negative value: never idle-unloaded."""

_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_TERM = r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)"  # longest units first: "5ms" is not 5m + "s"
_DURATION = re.compile(rf"(?:{_TERM})+")
_ALLOWED = ('a number of seconds or a duration string like "5m", "1h30m", "30s" or "0" '
            "(0: unload the model after this request; negative: keep it loaded; positive: its idle TTL)")


class KeepAliveError(ValueError):
    """A keep_alive that is neither a number nor a duration string."""


def parse_keep_alive(value: object) -> float | None:
    """Seconds (FOREVER for a negative value), or None for null; KeepAliveError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise KeepAliveError(f"{KEEP_ALIVE} must be {_ALLOWED}; got {value!r}")
    seconds = _duration_s(value) if isinstance(value, str) else float(value)
    if not math.isfinite(seconds):
        raise KeepAliveError(f"{KEEP_ALIVE} must be {_ALLOWED}; got {value!r}")
    return FOREVER if seconds < 0 else seconds


def _duration_s(text: str) -> float:
    """A Go duration (time.ParseDuration, as Ollama reads keep_alive) in seconds: an optional
    sign, then number+unit terms; "0" alone needs no unit."""
    body = text[1:] if text[:1] in ("+", "-") else text
    sign = -1.0 if text.startswith("-") else 1.0
    if body == "0":
        return 0.0
    if not _DURATION.fullmatch(body):
        hint = f' (a duration needs a unit: "{body}s")' if body.replace(".", "", 1).isdigit() else ""
        raise KeepAliveError(f"{KEEP_ALIVE} must be {_ALLOWED}; got {text!r}{hint}")
    return sign * sum(float(number) * _UNIT_S[unit] for number, unit in re.findall(_TERM, body))


class KeepAlives:
    """What requests' keep_alive asked of one pool: unloads after the last request in flight
    (here), and idle TTL overrides (the pool's `keep_alive`).

    Known race: the unload starts in the background once no request is in flight; a request that
    reaches the instance in the moment before its stop begins is cut off (a 502, or an SSE error
    event). Requests that arrive after the stop began wait and start the model again. Closing it
    needs an unload-when-idle inside the pool's own lock."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.pending: set[str] = set()  # aliases to unload once no request is in flight for them
        self._stops: set[asyncio.Task[StopResult]] = set()

    def after(self, alias: str, seconds: float | None) -> None:
        """A request for alias has ended; seconds is its keep_alive (None: it said nothing)."""
        if seconds == 0:
            self.pending.add(alias)
        elif seconds is not None:
            self.pending.discard(alias)  # a later keep_alive overrides an earlier "unload after"
            with contextlib.suppress(UnknownModelError):  # removed by a reload during the request
                self.pool.keep_alive(alias, None if seconds == FOREVER else seconds)
        if alias in self.pending and self._in_flight(alias) == 0:
            self.pending.discard(alias)
            if not self.pool.closing and self.pool.state_of(alias) in LIVE_STATES:
                self._unload(alias)

    def _in_flight(self, alias: str) -> int:
        return next((int(row.get("in_flight", 0)) for row in self.pool.status() if row["alias"] == alias), 0)

    def _unload(self, alias: str) -> None:
        """Stop alias in the background: the reply does not wait for the proof (the daemon's log has it)."""
        task = asyncio.ensure_future(self.pool.down(alias, reason=f"{KEEP_ALIVE} 0 in its last request"))
        self._stops.add(task)
        task.add_done_callback(self._stopped)

    def _stopped(self, task: asyncio.Task[StopResult]) -> None:
        self._stops.discard(task)
        if task.cancelled():
            return
        if (error := task.exception()) is not None:
            log.error("unload after %s 0 failed: %s: %s", KEEP_ALIVE, error.__class__.__name__, error)
        elif not (result := task.result()).clean:
            log.error("unload after %s 0: %s", KEEP_ALIVE, result.summary())
