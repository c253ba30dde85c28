"""The dashboard in a real headless browser (Debian's chromium, driven by Playwright) against a daemon
running the stand-in: load and unload by clicking, the state changing without a reload, log lines
arriving, sleep and wake, the GPU view, a phone's screen, and a wrong or missing key getting no data.
One test runs against the real CPU vLLM (`real_vllm`). Screenshots of the main states are saved
(dashboard_browser.Screenshots) and one goes to docs/dashboard.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from bawt_vllm.supervisor.config.loading import load_config
from bawt_vllm.supervisor.runtime.pool import Pool
from dashboard_browser import (
    KEY,
    PHONE,
    InProcessGateway,
    Screenshots,
    browser_page,
    button,
    card,
    dashboard_config,
    lowest_contrast,
    require_chromium,
    save_docs_screenshot,
)
from dashboard_gpus import GIB, FakeGpus
from helpers import RunningDaemon, free_port, standin_entry, standin_settings, tracked, write_models_yaml
from playwright.sync_api import expect

NO_KEY = {"BAWT_VLLM_API_KEY": ""}
LOADS_S = 30  # a stand-in load takes about a second; the machine may be busy


@pytest.fixture(autouse=True)
def _chromium() -> None:
    require_chromium()


def root_of(daemon: RunningDaemon) -> str:
    return daemon.gateway().removesuffix("/v1")


def state_of(daemon: RunningDaemon, alias: str) -> str:
    return next(row["state"] for row in daemon.client.status()["models"] if row["alias"] == alias)


def navigations(page: Any) -> list[str]:
    """The page's top-level navigations from now on (a reload would add one)."""
    seen: list[str] = []
    page.on("framenavigated", lambda frame: seen.append(frame.url) if frame == page.main_frame else None)
    return seen


def test_a_model_is_loaded_and_unloaded_from_the_page_and_its_log_streams(tmp_path: Path) -> None:
    shots = Screenshots(tmp_path)
    with RunningDaemon(dashboard_config(tmp_path), env=NO_KEY) as daemon, browser_page() as page:
        seen = navigations(page)
        page.goto(root_of(daemon) + "/ui")
        expect(page.locator("article.card")).to_have_count(3)
        expect(page.locator("#connection")).to_have_attribute("data-state", "live")
        expect(card(page, "m")).to_have_attribute("data-state", "stopped")
        expect(page.locator("#gpus")).to_contain_text("No GPU")
        shots.take(page, "1-stopped")

        page.locator("#log-model").select_option("m")  # chosen before it runs: it appears once m starts
        expect(page.locator("#log-status")).to_contain_text("no log yet")
        button(page, "Load m").focus()
        page.keyboard.press("Enter")  # the keyboard works the buttons
        expect(card(page, "m")).to_have_attribute("data-state", "starting")
        expect(card(page, "m").locator("progress")).to_be_visible()
        expect(card(page, "m").locator(".loading p")).not_to_be_empty()
        shots.take(page, "2-loading")

        expect(card(page, "m")).to_have_attribute("data-state", "ready", timeout=LOADS_S * 1000)
        expect(card(page, "m").locator(".result")).to_contain_text("Loaded: ready at http://127.0.0.1:")
        expect(card(page, "m").locator("[data-fact=gpu]")).to_have_text("CPU")
        expect(page.locator("#log")).to_contain_text("Application startup complete.")
        expect(page.locator("#events li[data-alias=m][data-kind=ready]")).to_have_count(1)
        expect(button(page, "Load m")).to_be_disabled()
        expect(button(page, "Sleep m")).to_be_hidden()  # not a sleep-mode entry
        assert state_of(daemon, "m") == "ready"
        shots.take(page, "3-ready")

        button(page, "Unload m").click()
        result = card(page, "m").locator(".result")
        expect(result).to_contain_text("Stopped: m: gone in", timeout=LOADS_S * 1000)
        expect(result).to_contain_text("none alive")
        expect(card(page, "m")).to_have_attribute("data-state", "stopped")
        expect(page.locator("#log")).to_contain_text("Shutting down")  # lines keep arriving: the log is followed
        expect(page.locator("#events li[data-alias=m][data-kind=stopped]")).to_have_count(1)
        assert state_of(daemon, "m") == "stopped"
        shots.take(page, "4-unloaded")

        button(page, "Load broken").click()
        expect(card(page, "broken")).to_have_attribute("data-state", "failed", timeout=LOADS_S * 1000)
        expect(card(page, "broken").locator(".result")).to_contain_text("out of memory")
        expect(card(page, "broken").locator("[data-fact=last_error]")).not_to_have_text("none")
        shots.take(page, "5-failed")
        assert seen == [root_of(daemon) + "/ui"], f"the page was reloaded: {seen}"


def test_a_sleep_mode_model_sleeps_and_wakes_from_the_page(tmp_path: Path) -> None:
    shots = Screenshots(tmp_path)
    with RunningDaemon(dashboard_config(tmp_path), env=NO_KEY) as daemon, browser_page() as page:
        page.goto(root_of(daemon) + "/ui/")
        expect(button(page, "Sleep chat")).to_be_disabled()  # only a ready model sleeps
        button(page, "Load chat").click()
        expect(card(page, "chat")).to_have_attribute("data-state", "ready", timeout=LOADS_S * 1000)
        expect(card(page, "chat").locator("[data-fact=unload_in]")).to_contain_text("min")  # idle_ttl_s 3600
        button(page, "Sleep chat").click()
        expect(card(page, "chat")).to_have_attribute("data-state", "sleeping", timeout=LOADS_S * 1000)
        expect(card(page, "chat").locator(".result")).to_contain_text("Asleep: asleep in")
        expect(button(page, "Wake chat")).to_be_enabled()
        shots.take(page, "6-sleeping")
        button(page, "Wake chat").click()
        expect(card(page, "chat")).to_have_attribute("data-state", "ready", timeout=LOADS_S * 1000)
        expect(card(page, "chat").locator(".result")).to_contain_text("Awake at http://127.0.0.1:")
        assert state_of(daemon, "chat") == "ready"


def test_a_wrong_or_missing_key_gets_no_data(tmp_path: Path) -> None:
    with RunningDaemon(dashboard_config(tmp_path), env={"BAWT_VLLM_API_KEY": KEY}) as daemon, \
            browser_page() as page:
        feeds: list[int] = []
        page.on("response", lambda response: feeds.append(response.status) if "/ui/api/feed" in response.url else None)
        page.goto(root_of(daemon) + "/ui")
        expect(page.get_by_label("Key", exact=True)).to_be_focused()  # no key yet: the form asks, nothing else is shown
        expect(page.locator("#board")).to_be_hidden()
        expect(page.locator("article.card")).to_have_count(0)

        page.get_by_label("Key", exact=True).fill("wrong")
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#key-error")).to_contain_text("refused")
        expect(page.locator("article.card")).to_have_count(0)
        expect(page.locator("#events li")).to_have_count(0)
        assert feeds == [401, 401], feeds
        assert "chat" not in page.content() and "stand-in vllm serve" not in page.content()

        page.get_by_label("Key", exact=True).fill(KEY)
        page.keyboard.press("Enter")
        expect(page.locator("article.card")).to_have_count(3)
        expect(button(page, "Forget key")).to_be_visible()
        page.reload()  # the key is kept for the tab
        expect(page.locator("article.card")).to_have_count(3)
        expect(page.locator("#key-form")).to_be_hidden()

        button(page, "Forget key").click()
        expect(page.locator("article.card")).to_have_count(0)
        expect(page.locator("#key-form")).to_be_visible()
        assert state_of(daemon, "m") == "stopped"


def test_an_open_bind_without_a_key_shows_the_refusal_and_no_data(tmp_path: Path) -> None:
    with RunningDaemon(dashboard_config(tmp_path, gateway_host="0.0.0.0"), env=NO_KEY) as daemon, \
            browser_page() as page:
        page.goto(root_of(daemon) + "/ui")
        expect(page.locator("#refused")).to_contain_text("the admin API is off")
        expect(page.locator("#board")).to_be_hidden()
        expect(page.locator("article.card")).to_have_count(0)
        assert "chat" not in page.content()


def test_the_page_reads_on_a_phone_and_names_every_control(tmp_path: Path) -> None:
    shots = Screenshots(tmp_path)
    with RunningDaemon(dashboard_config(tmp_path), env=NO_KEY) as daemon, browser_page(PHONE) as page:
        page.goto(root_of(daemon) + "/ui")
        button(page, "Load m").click()
        expect(card(page, "m")).to_have_attribute("data-state", "ready", timeout=LOADS_S * 1000)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "sideways scrolling"
        unnamed = page.evaluate("""[...document.querySelectorAll('button, select, input')]
            .filter((node) => !node.hidden && !(node.labels && node.labels.length) && !node.getAttribute('aria-label')
                              && !node.textContent.trim()).map((node) => node.outerHTML)""")
        assert unnamed == [], unnamed
        expect(page.get_by_label("Model", exact=True)).to_be_visible()
        shots.take(page, "7-phone")
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            ratio, where = lowest_contrast(page)
            assert ratio >= 4.5, f"{scheme}: text of {where} has a contrast of {ratio:.2f} (AA wants 4.5)"
        shots.take(page, "8-phone-dark")


def test_the_gpu_view_shows_who_holds_what(tmp_path: Path) -> None:
    """In-process gateway over a pool with a made-up NVML: two models sharing GPU 0 by budget, and a
    process on it that bawt-vllm did not start."""
    shots = Screenshots(tmp_path)
    models = {"qwen-7b": standin_entry(gpu_memory_utilization=0.45, description="chat model", idle_ttl_s=1800),
              "embedder": standin_entry(gpu_memory_utilization=0.25),
              "qwen-32b": standin_entry(description="whole GPU, loaded on demand")}
    settings = standin_settings(tmp_path, gateway_port=free_port())
    config = load_config(write_models_yaml(tmp_path / "models.yaml", models, **settings))
    gpus = FakeGpus(per_model=14 * GIB, foreign={0: (4242, 6 * GIB)})

    def make_pool() -> Pool:
        pool = tracked(Pool(config, inventory=gpus))
        gpus.watch(pool)
        return pool

    with InProcessGateway(make_pool) as gateway, browser_page() as page:
        page.goto(gateway.root + "/ui")
        for alias in ("qwen-7b", "embedder"):
            button(page, f"Load {alias}").click()
            expect(card(page, alias)).to_have_attribute("data-state", "ready", timeout=LOADS_S * 1000)
        gpu = page.locator("article.gpu[data-gpu='0']")
        expect(gpu).to_contain_text("NVIDIA H100 80GB HBM3")
        expect(gpu).to_contain_text("qwen-7b — 14.0 GiB · budget 45%")
        expect(gpu).to_contain_text("embedder — 14.0 GiB · budget 25%")
        expect(gpu.locator(".tag-foreign")).to_have_text("not started by bawt-vllm (pid 4242)")
        expect(gpu).to_contain_text("budgets 70% taken")
        expect(gpu.locator(".bar")).to_have_attribute("aria-label", "memory of GPU 0: 34.5 GiB of 80.0 GiB used "
                                                      "(43%), 6.0 GiB of it not started by bawt-vllm")
        expect(card(page, "qwen-7b").locator("[data-fact=memory]")).to_have_text("budget 45% · using 14.0 GiB")
        expect(card(page, "qwen-7b").locator("[data-fact=gpu]")).to_have_text("GPU 0")
        page.locator("#log-model").select_option("qwen-7b")
        expect(page.locator("#log")).to_contain_text("Application startup complete.")
        shot = shots.take(page, "9-gpus")
        save_docs_screenshot(shot)

        button(page, "Unload embedder").click()
        expect(card(page, "embedder").locator(".result")).to_contain_text("Stopped: embedder: gone in",
                                                                         timeout=LOADS_S * 1000)
        expect(gpu).not_to_contain_text("embedder —")
        expect(gpu).to_contain_text("budgets 45% taken")


@pytest.mark.real_vllm
def test_the_page_drives_a_real_vllm_serve(tmp_path: Path, tiny_models_yaml: Path) -> None:
    shots = Screenshots(tmp_path)
    document = yaml.safe_load(tiny_models_yaml.read_text())
    document["bawt_vllm"]["gateway_port"] = free_port()
    tiny_models_yaml.write_text(yaml.safe_dump(document, sort_keys=False))
    with RunningDaemon(tiny_models_yaml, env=NO_KEY) as daemon, browser_page() as page:
        page.goto(root_of(daemon) + "/ui")
        page.locator("#log-model").select_option("tiny")
        button(page, "Load tiny").click()
        expect(card(page, "tiny")).to_have_attribute("data-state", "starting")
        expect(card(page, "tiny")).to_have_attribute("data-state", "ready", timeout=600_000)
        expect(page.locator("#log")).to_contain_text("Application startup complete", timeout=30_000)
        shots.take(page, "real-vllm-ready")
        button(page, "Unload tiny").click()
        expect(card(page, "tiny").locator(".result")).to_contain_text("Stopped: tiny: gone in", timeout=120_000)
        expect(card(page, "tiny")).to_have_attribute("data-state", "stopped")
        assert state_of(daemon, "tiny") == "stopped"
