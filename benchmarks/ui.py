#!/usr/bin/env python3
"""The dashboard's page weight and time to first render, in headless chromium on this machine.

    .venv/bin/python benchmarks/ui.py [--runs 5] [--real]

A daemon runs three stand-in models (one loaded), or with --real the CPU test bed's tiny model
loaded in a real vLLM (scripts/testbed.py). Prints:
- page weight: the HTML shell, its scripts and stylesheet as the gateway serves them (bytes, and gzip-ed
  for reference: the gateway does not compress);
- time to first render, median of --runs cold loads (a new browser context each, no cache): first
  contentful paint (the shell on screen) and first data (the first pushed snapshot rendered: every
  model's card and the GPU view; the page's `bawt-vllm:first-data` performance mark), both from the
  start of navigation.
Needs Debian's chromium at /usr/bin/chromium and playwright (the test extra).
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import STANDIN, Daemon, testbed, tiny_entry, write_config

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMINGS_JS = """() => {
  const paint = performance.getEntriesByName('first-contentful-paint')[0];
  const data = performance.getEntriesByName('bawt-vllm:first-data')[0];
  return [paint ? paint.startTime : null, data ? data.startTime : null];
}"""


def standin_models() -> dict[str, dict]:
    entry = {"type": "vllm", "model_id": "standin/model", "tool_support": "none", "env": {"FAKE_VLLM_MODE": "ok"}}
    return {"chat": dict(entry), "embed": dict(entry), "big": dict(entry)}


def page_weight(root: str) -> list[tuple[str, int, int]]:
    """(path, bytes, gzip-ed bytes) of the shell and every file it loads."""
    from bawt_vllm.supervisor.serve.dashboard import STATIC_PREFIX, static_files

    rows = []
    for path in ["/ui/", *(STATIC_PREFIX + name for name in static_files())]:
        with urllib.request.urlopen(root + path, timeout=10) as response:
            body = response.read()
        rows.append((path, len(body), len(gzip.compress(body, 9))))
    return rows


def first_render(root: str, runs: int) -> list[tuple[float, float]]:
    from playwright.sync_api import sync_playwright

    timings = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for _ in range(runs + 1):  # the first load warms chromium itself up; it is not counted
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.goto(root + "/ui/")
                page.locator("article.card").first.wait_for(timeout=30_000)
                paint, data = page.evaluate(TIMINGS_JS)
                timings.append((paint, data))
                context.close()
        finally:
            browser.close()
    return timings[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--real", action="store_true", help="the CPU test bed's real vLLM instead of the stand-in")
    args = parser.parse_args()
    if args.real:
        bed = testbed()
        loaded, models = "tiny", {"tiny": tiny_entry(bed, served_model_name="tiny")}
        config = write_config(models, vllm_executable=bed["vllm"])
    else:
        loaded, models = "chat", standin_models()
        config = write_config(models, vllm_executable=str(STANDIN))
    daemon = Daemon(config)
    try:
        root = daemon.gateway
        request = urllib.request.Request(f"{root}/models/{loaded}/load", method="POST")
        with urllib.request.urlopen(request, timeout=900) as response:
            assert response.status == 200
        weights = page_weight(root)
        timings = first_render(root, args.runs)
    finally:
        daemon.close()
    total, packed = sum(w[1] for w in weights), sum(w[2] for w in weights)
    print(f"models: {len(models)} ({loaded} loaded, {'real vLLM' if args.real else 'stand-in'})")
    for path, size, gz in weights:
        print(f"  {path:28} {size:7d} B  ({gz:6d} B gzip-ed)")
    print(f"page weight (HTML + JS + CSS): {total} B = {total / 1024:.1f} KiB ({packed / 1024:.1f} KiB gzip-ed)")
    paints = [t[0] for t in timings if t[0] is not None]
    datas = [t[1] for t in timings if t[1] is not None]
    print(f"time to first render, median of {len(timings)} cold loads: first contentful paint "
          f"{statistics.median(paints):.0f} ms, first data (every model and GPU shown) "
          f"{statistics.median(datas):.0f} ms (range {min(datas):.0f}-{max(datas):.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
