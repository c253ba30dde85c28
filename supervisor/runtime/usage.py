"""Who uses each model and since when: requests in flight, the last use, and how long a model may stay
idle (its entry's TTL, the global one, or what a request's keep_alive asked for).

The pool counts a request in flight from its first moment (`serving`); eviction and the idle TTL
read it here, and a load waiting for a busy model to finish waits on `wait_for_release`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Usage:
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)  # monotonic
    requests: int = 0


class UsageBook:
    """Per-model usage, and keep_alive overrides of the idle TTL."""

    def __init__(self, default_ttl: Callable[[str], float | None]) -> None:
        self._default_ttl = default_ttl
        self._usage: dict[str, Usage] = {}
        self._keep_alive: dict[str, float | None] = {}  # alias -> idle TTL a request asked for
        self._released = asyncio.Condition()
        self._waiting = 0  # loads in wait_for_release: a request's end notifies only when some wait

    def of(self, alias: str) -> Usage:
        usage = self._usage.get(alias)
        if usage is None:
            usage = self._usage[alias] = Usage()
        return usage

    def begin(self, alias: str) -> None:
        """One more request of alias in flight."""
        usage = self.of(alias)
        usage.in_flight += 1
        usage.requests += 1

    async def end(self, alias: str) -> None:
        """A request of alias is done: its end is a use, and wakes loads waiting for one."""
        usage = self.of(alias)
        usage.in_flight -= 1
        usage.last_used = time.monotonic()
        if self._waiting:
            await self.wake_waiters()

    async def wake_waiters(self) -> None:
        async with self._released:
            self._released.notify_all()

    async def wait_for_release(self, deadline: float) -> bool:
        """Wait until some request finishes; False once the deadline (monotonic) has passed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self._waiting += 1
        try:
            async with self._released:
                await asyncio.wait_for(self._released.wait(), remaining)
        except TimeoutError:
            return False
        finally:
            self._waiting -= 1
        return True

    def ready_now(self, alias: str) -> None:
        """alias became ready: its idle time counts from now, not from before its load."""
        usage = self.of(alias)
        usage.last_used = max(usage.last_used, time.monotonic())

    def idle_ttl(self, alias: str) -> float | None:
        """A request's keep_alive, else the default (None: never unloaded for idleness)."""
        if alias in self._keep_alive:
            return self._keep_alive[alias]
        return self._default_ttl(alias)

    def keep_alive(self, alias: str, seconds: float | None) -> None:
        self._keep_alive[alias] = seconds

    def forget_keep_alive(self, alias: str) -> None:
        self._keep_alive.pop(alias, None)

    def row(self, alias: str, loaded: bool) -> dict[str, float | int | None]:
        """in_flight, idle_s (None while loading or serving), idle_ttl_s and unload_in_s for a status row."""
        usage = self._usage.get(alias, Usage())
        idle = time.monotonic() - usage.last_used if loaded and not usage.in_flight else None
        ttl = self.idle_ttl(alias)
        return {"in_flight": usage.in_flight, "idle_s": None if idle is None else round(idle, 1),
                "idle_ttl_s": ttl, "unload_in_s": None if idle is None or not ttl else round(max(0.0, ttl - idle), 1)}
