"""Helpers for the dashboard's tests: Debian's chromium driven by Playwright, screenshots, a dashboard
config for the stand-in, and an in-process gateway over a pool with a made-up GPU inventory.

Chromium missing skips the browser tests (with the reason) on a developer's machine; under CI
(`CI` set) it is a failure: the browser tests are part of what CI proves.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port, run_port_range, standin_entry, standin_settings, write_models_yaml

CHROMIUM = Path("/usr/bin/chromium")
# The network is closed here: without these, chromium keeps trying to reach Google's services.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "s3cret"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"


def require_chromium() -> Path:
    """The chromium to drive; skips the test without one, unless under CI, where that fails it."""
    if CHROMIUM.exists():
        return CHROMIUM
    message = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) to run the browser tests"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set: the browser tests must run)")
    pytest.skip(message)


@contextmanager
def browser_page(viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A fresh page of a headless chromium (closed, with its browser, on exit); page errors fail the test."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or DESKTOP)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.set_default_timeout(20_000)
            yield page
        finally:
            browser.close()
    assert not errors, f"the page threw: {errors}"


class Screenshots:
    """Screenshots of the main states: under $BAWT_VLLM_SCREENSHOTS when set, else the test's tmp dir."""

    def __init__(self, tmp_path: Path) -> None:
        chosen = os.environ.get("BAWT_VLLM_SCREENSHOTS")
        self.folder = Path(chosen) if chosen else tmp_path / "screenshots"
        self.folder.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str, *, full_page: bool = True) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        assert path.stat().st_size > 0
        return path


# The lowest contrast ratio of the text in `selectors` against its backdrop (the nearest ancestor with a
# background colour), as WCAG computes it; AA asks 4.5 for normal text.
LOWEST_CONTRAST_JS = """(selectors) => {
  const rgb = (text) => text.match(/[0-9.]+/g).slice(0, 4).map(Number);
  const luminance = ([r, g, b]) => {
    const lin = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b);
  };
  const backdrop = (node) => {
    for (; node; node = node.parentElement) {
      const color = rgb(getComputedStyle(node).backgroundColor);
      if (color.length < 4 || color[3] > 0) return color;
    }
    return [255, 255, 255];
  };
  const found = [];
  for (const selector of selectors) {
    for (const node of document.querySelectorAll(selector)) {
      if (!node.offsetParent || !node.textContent.trim() || node.closest("button:disabled")) continue;
      const [a, b] = [luminance(rgb(getComputedStyle(node).color)), luminance(backdrop(node))];
      found.push([(Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05), selector]);
    }
  }
  found.sort((x, y) => x[0] - y[0]);
  return found[0];
}"""
TEXT_SELECTORS = ["h1", "h2", "h3", "#connection", ".state", ".description", "dt", "dd", "button", ".result",
                  ".loading p", "label", "#log-status", ".events time", ".events span", ".log", ".gpu li", ".gpu p"]


def lowest_contrast(page: Any) -> tuple[float, str]:
    ratio, selector = page.evaluate(LOWEST_CONTRAST_JS, TEXT_SELECTORS)
    return ratio, selector


def card(page: Any, alias: str) -> Any:
    return page.locator(f"article.card[data-alias='{alias}']")


def button(page: Any, label: str) -> Any:
    return page.get_by_role("button", name=label, exact=True)


def dashboard_models(tmp_path: Path, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`m` (a load of about a second and a half, so its stages show), `chat` (sleep mode), `broken`."""
    return {"m": standin_entry(env={"FAKE_VLLM_LOAD_S": "1.5"}, description="the stand-in vllm serve"),
            "chat": standin_entry(sleep_level=1, idle_ttl_s=3600),
            "broken": standin_entry("exit_during_load"), **extra}


def dashboard_config(tmp_path: Path, models: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Path:
    low, high = run_port_range()
    port = next(p for p in iter(free_port, None) if not low <= p <= high)
    merged = standin_settings(tmp_path, **{"gateway_port": port, **settings})
    return write_models_yaml(tmp_path / "models.yaml", models or dashboard_models(tmp_path), **merged)


def save_docs_screenshot(shot: Path) -> None:
    """Copy a representative screenshot to docs/dashboard.png once (it is committed; later runs leave it)."""
    if not DOCS_SCREENSHOT.exists():
        shutil.copyfile(shot, DOCS_SCREENSHOT)


class InProcessGateway:
    """The daemon's gateway app (dashboard and admin API included) over `make_pool()`, served from a
    thread of its own on 127.0.0.1; on exit every model is stopped (proven) and the thread joined."""

    def __init__(self, make_pool: Callable[[], Any]) -> None:
        self._make_pool = make_pool
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.pool: Any = None
        self.root = ""

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> InProcessGateway:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        from bawt_vllm.supervisor.serve.gateway import Gateway
        from bawt_vllm.supervisor.serve.metrics import Metrics

        self.pool = self._make_pool()
        self._gateway = Gateway(self.pool, Metrics(self.pool.status), shutting_down=lambda: False)
        await self._gateway.start("127.0.0.1", 0)  # as the daemon starts it
        self.root = f"http://127.0.0.1:{self._gateway.port}"

    async def _stop(self) -> None:
        try:
            await self.pool.close()
        finally:
            await self._gateway.close()

    def __exit__(self, *exc: object) -> None:
        try:
            if self.pool is not None:
                self.call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
