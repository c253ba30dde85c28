"""The web dashboard at /ui (issue 12): one page over the admin API, updated by a pushed feed.

The page itself (`/ui`, `/ui/`) and its static files (`/ui/static/*`: one script, one stylesheet)
hold no data and are served without the gateway's key. Everything with data is behind the key
when one is set (the gateway's auth middleware) and refused on a gateway bound beyond loopback
without a key (admin.refusal), exactly like the admin API: the feed, `GET /ui/api/feed`
(server-sent events, ui/feed.py), and the admin routes the page calls (`/models/...`, `/gpus`).
The page reads the feed with fetch() so it can send `Authorization: Bearer`, the key typed once
into its form and kept in the tab's sessionStorage. Nothing is fetched from elsewhere at run time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..runtime.pool import Pool
from .admin import guarded
from .ui.feed import Feed

UI_PREFIX = "/ui"
STATIC_PREFIX = UI_PREFIX + "/static/"
FEED_PATH = UI_PREFIX + "/api/feed"
STATIC_DIR = Path(__file__).parent / "ui" / "static"
SHELL = "index.html"
CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
# The page loads only its own files and talks only to its own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_public(path: str) -> bool:
    """Paths the gateway serves without its key: the page's shell and static files, which hold no data."""
    return path in (UI_PREFIX, UI_PREFIX + "/") or path.startswith(STATIC_PREFIX)


def static_files() -> dict[str, Path]:
    """The files the page is made of, by name (the only names /ui/static/ serves)."""
    return {path.name: path for path in sorted(STATIC_DIR.iterdir())
            if path.is_file() and path.suffix in CONTENT_TYPES and path.name != SHELL}


class Dashboard:
    def __init__(self, pool: Pool, *, gateway_key: Callable[[], str | None], feed: Feed | None = None) -> None:
        """feed: the pushed feed's timings (tests and benchmarks shorten them)."""
        self.pool = pool
        self._gateway_key = gateway_key
        self._feed = feed or Feed(pool)
        self._files = static_files()

    def register(self, app: web.Application) -> None:
        """Adds the dashboard's routes to the gateway's app."""
        app.router.add_get(UI_PREFIX, self.shell)
        app.router.add_get(UI_PREFIX + "/", self.shell)
        app.router.add_get(STATIC_PREFIX + "{name}", self.static)
        app.router.add_get(FEED_PATH, guarded(self.pool, self._gateway_key, self._feed.serve))

    async def shell(self, _request: web.Request) -> web.Response:
        return _file_response(STATIC_DIR / SHELL)

    async def static(self, request: web.Request) -> web.Response:
        path = self._files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return _file_response(path)


def _file_response(path: Path) -> web.Response:
    return web.Response(body=path.read_bytes(), content_type=CONTENT_TYPES[path.suffix], charset="utf-8",
                        headers=SECURITY_HEADERS)
