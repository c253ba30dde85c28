"""The dashboard's live feed: server-sent events over one long GET.

`snapshot` (every model and GPU, as views.snapshot) when the feed opens, after every lifecycle
event, and whenever a look every `look_s` finds something other than a clock changed (requests in
flight, GPU memory); `event` for each lifecycle event of any model (the daemon's event feed), the
most recent ones first as `backlog`. A comment every `heartbeat_s` keeps proxies from closing a
quiet stream. Nothing is polled by the page: the server pushes, and the page counts clocks on.
The feed ends when the client goes away or the pool begins to close (the daemon's shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from ...runtime.instance import Instance
from ...runtime.pool import Pool
from ...runtime.states import Event
from .views import signature, snapshot

LOOK_S = 2.0
HEARTBEAT_S = 15.0
BACKLOG = 50  # the most recent events, of all models, sent when the feed opens


def event_payload(alias: str, event: Event) -> dict[str, Any]:
    return {"alias": alias, **event.as_dict()}


def backlog(pool: Pool, count: int = BACKLOG) -> list[dict[str, Any]]:
    """The `count` most recent events of every instance, oldest first."""
    events = [event_payload(alias, event) for alias, instance in pool.instances.items() for event in instance.events]
    return sorted(events, key=lambda payload: payload["at"])[-count:]


class Feed:
    def __init__(self, pool: Pool, *, look_s: float = LOOK_S, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.pool = pool
        self.look_s = look_s
        self.heartbeat_s = heartbeat_s

    async def serve(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_event(instance: Instance, event: Event) -> None:
            events.put_nowait(event_payload(instance.alias, event))

        unsubscribe = self.pool.subscribe(on_event)
        try:
            await self._run(response, events)
        except ConnectionError:
            pass  # the page went away
        finally:
            unsubscribe()  # also when the handler is cancelled (the client left, or the daemon ends)
        return response

    async def _run(self, response: web.StreamResponse, events: asyncio.Queue[dict[str, Any]]) -> None:
        await _send(response, "backlog", {"events": backlog(self.pool)})
        shown = await self._snapshot(response, None)
        last_write = time.monotonic()
        while not self.pool.closing:
            try:
                first = await asyncio.wait_for(events.get(), timeout=self.look_s)
            except TimeoutError:
                first = None
            if first is not None:
                await _send(response, "event", first)
                while not events.empty():
                    await _send(response, "event", events.get_nowait())
                shown = await self._snapshot(response, None)
                last_write = time.monotonic()
                continue
            changed = await self._snapshot(response, shown)
            if changed is not None:
                shown, last_write = changed, time.monotonic()
            elif time.monotonic() - last_write >= self.heartbeat_s:
                await response.write(b": keepalive\n\n")
                last_write = time.monotonic()
        with contextlib.suppress(ConnectionError):
            await _send(response, "closing", {"message": "bawt-vllm is shutting down"})

    async def _snapshot(self, response: web.StreamResponse, shown: Any) -> Any:
        """Send a snapshot unless it matches `shown` (None: always); its signature if sent, else None."""
        view = await snapshot(self.pool)
        mark = signature(view)
        if shown is not None and mark == shown:
            return None
        await _send(response, "snapshot", view)
        return mark


async def _send(response: web.StreamResponse, name: str, payload: dict[str, Any]) -> None:
    await response.write(f"event: {name}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode())
