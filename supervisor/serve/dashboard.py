"""The web dashboard at /ui (issue 12): a stub until the page lands."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..runtime.pool import Pool

UI_PREFIX = "/ui"


def is_public(path: str) -> bool:
    """Paths the gateway serves without its key: the page's shell and static files, which hold no data."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


class Dashboard:
    def __init__(self, pool: Pool, *, gateway_key: Callable[[], str | None]) -> None:
        self.pool = pool
        self._gateway_key = gateway_key

    def register(self, app: web.Application) -> None:
        """Adds the dashboard's routes to the gateway's app."""
