"""One request's hold on a model, as `Pool.serving` hands it out.

A class, not a generator-based context manager: it runs once per request on the gateway's
hot path, where the ready case must cost no task, no lock and no generator.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .instance import Instance
from .usage import UsageBook

OnWait = Callable[[str], Awaitable[None]]
Load = Callable[[str, OnWait | None, float], Awaitable[Instance]]  # alias, on_wait, its tick


class Serving:
    """Counts the request in flight from the first moment until the block ends, and enters
    with the ready instance: the one there is, else what load returns."""

    __slots__ = ("_alias", "_load", "_on_wait", "_ready_now", "_tick_s", "_usage")

    def __init__(self, usage: UsageBook, alias: str, ready_now: Callable[[str], Instance | None],
                 load: Load, on_wait: OnWait | None, tick_s: float) -> None:
        self._usage = usage
        self._alias = alias
        self._ready_now = ready_now
        self._load = load
        self._on_wait = on_wait
        self._tick_s = tick_s

    async def __aenter__(self) -> Instance:
        self._usage.begin(self._alias)
        try:
            instance = self._ready_now(self._alias)
            return instance if instance is not None else await self._load(self._alias, self._on_wait, self._tick_s)
        except BaseException:
            await self._usage.end(self._alias)
            raise

    async def __aexit__(self, *_exc: Any) -> None:
        await self._usage.end(self._alias)
