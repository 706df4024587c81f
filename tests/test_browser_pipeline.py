"""The whole pipeline in a real browser, as a newcomer clicks through it.

Debian's chromium (driven by Playwright) on a fresh data folder with the tiny model chosen
in the sidebar: load the sample data, vote on two preference pairs, train SFT, train a
reward model, run a few PPO steps, compare base/SFT/PPO, export the PPO adapter and
download its zip. Every step goes through the page widgets and waits for its job through
the page (no back doors into the engine). Screenshots land in tests/artifacts/.
"""
from __future__ import annotations

import os
import re
import time
import zipfile

import pytest

from tests.conftest import ROOT, free_port, start_streamlit
from tests.test_browser_home import CHROMIUM, LAUNCH_ARGS, wait_idle

ARTIFACTS = ROOT / "tests" / "artifacts" / "pipeline"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (apt-get install chromium)")
JOB_TIMEOUT = 150  # seconds, per job; the tiny model needs a few seconds per stage


def label(key: str, lang: str = "en", **kwargs) -> str:
    """The text the page shows for a catalogue key (English unless told)."""
    from ui.i18n import t

    return t(key, lang=lang, **kwargs)


class Clicker:
    """A newcomer's hands: find widgets by the label they read, click, type, wait."""

    def __init__(self, page):
        self.page = page
        self.main = page.get_by_test_id("stMain")
        self.sidebar = page.get_by_test_id("stSidebar")
        self.shots = 0

    def shot(self, name: str) -> None:
        """The whole page: stMain scrolls inside the window, so grow the window to fit it."""
        wait_idle(self.page)
        self.shots += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        size = self.page.viewport_size
        height = self.page.evaluate(
            "() => document.querySelector('[data-testid=stMain]').scrollHeight")
        self.page.set_viewport_size({"width": size["width"],
                                     "height": max(size["height"], min(int(height), 8000))})
        self.page.wait_for_timeout(400)  # charts re-layout to the new size
        self.page.screenshot(path=str(ARTIFACTS / f"{self.shots:02d}-{name}.png"))
        self.page.set_viewport_size(size)

    def goto(self, nav_key: str, title_key: str) -> None:
        self.sidebar.get_by_role("link", name=label(nav_key), exact=True).click()
        self.main.get_by_role("heading", name=re.compile(re.escape(label(title_key)))) \
            .first.wait_for(timeout=60_000)
        wait_idle(self.page)

    def widget(self, testid: str, text: str, scope=None):
        """The widget of a kind whose label reads exactly `text`."""
        scope = scope or self.main
        return scope.get_by_test_id(testid).filter(
            has=self.page.get_by_test_id("stWidgetLabel").get_by_text(text, exact=True)).first

    def number(self, text: str, value, scope=None) -> None:
        box = self.widget("stNumberInput", text, scope).locator("input")
        box.fill(str(value))
        box.press("Tab")

    def select(self, text: str, option, scope=None) -> None:
        self.widget("stSelectbox", text, scope).click()
        self.page.get_by_role("option").filter(has_text=option).first.click()
        wait_idle(self.page)

    def button(self, text: str, scope=None) -> None:
        (scope or self.main).get_by_role("button").filter(has_text=text).first.click()

    def expand(self, text: str) -> None:
        self.main.get_by_test_id("stExpander").filter(has_text=text).first \
            .locator("summary").click()

    def tab(self, text: str) -> None:
        self.main.get_by_role("tab").filter(has_text=text).first.click()
        wait_idle(self.page)

    def wait_text(self, text, timeout: float = 60) -> None:
        self.main.get_by_text(text).first.wait_for(timeout=timeout * 1000)

    def wait_job(self, what: str, timeout: float = JOB_TIMEOUT) -> None:
        """Wait until the page's job panel says succeeded (fail at once if it says failed)."""
        done = re.compile(r"check_circle\s*" + re.escape(label("common.status_succeeded")))
        failed = re.compile(r"error\s*" + re.escape(label("common.status_failed")))
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.main.inner_text()
            if done.search(text):
                wait_idle(self.page)
                return
            if failed.search(text):
                self.shot(f"failed-{what}")
                raise AssertionError(f"the {what} job failed:\n{text[-2000:]}")
            time.sleep(0.5)
        self.shot(f"timeout-{what}")
        raise AssertionError(f"the {what} job did not finish within {timeout} s")


def test_newcomer_runs_the_whole_pipeline_in_a_browser(lab_home, models_home, tiny_model_dir):
    from playwright.sync_api import sync_playwright

    port = free_port()
    # one torch thread: the tiny model's small ops crawl on two threads when other
    # processes share the cores (10-30x slower sampling measured on this 2-core machine)
    proc = start_streamlit(lab_home, port, env_extra={"OMP_NUM_THREADS": "1"})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                          locale="en-US", accept_downloads=True)
            context.set_default_timeout(30_000)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            ui = Clicker(page)
            try:
                ui.wait_text(label("home.intro"))
                wait_idle(page)

                # -- the model: a local folder (the tiny Llama) --------------------------------
                ui.sidebar.get_by_test_id("stRadio").get_by_text(label("app.model_folder"),
                                                                  exact=True).click()
                wait_idle(page)
                folder = ui.widget("stTextInput", label("app.model_folder_input"), ui.sidebar) \
                    .locator("input")
                folder.fill(str(tiny_model_dir))
                folder.press("Enter")
                wait_idle(page)
                page.get_by_text(tiny_model_dir.name).first.wait_for()
                assert not ui.sidebar.get_by_test_id("stAlert").count(), "the tiny model was refused"

                # -- data: the samples, then two votes -------------------------------------------
                ui.goto("nav.data", "data.title")  # the samples were loaded on first open
                ui.shot("data")
                ui.tab(label("data.tab_collect"))
                ui.button(label("data.collect_sample"))
                ui.main.get_by_role("button").filter(has_text=label("data.vote_a")).first \
                    .wait_for(timeout=JOB_TIMEOUT * 1000)
                ui.shot("data-vote")
                ui.button(label("data.vote_a"))
                ui.wait_text(label("data.collect_stored", name="human-preferences",
                                   choice=label("data.vote_a")))
                wait_idle(page)  # the first pair's buttons are gone; the next pair is sampling
                ui.main.get_by_role("button").filter(has_text=label("data.vote_b")).first \
                    .wait_for(timeout=JOB_TIMEOUT * 1000)  # the next pair, sampled on its own
                ui.button(label("data.vote_b"))
                ui.wait_text(re.compile(r"human-preferences: 2 "))

                # -- SFT ------------------------------------------------------------------------------
                ui.goto("nav.sft", "sft.title")
                ui.number(label("settings.batch_size"), 4)
                ui.number(label("settings.max_length"), 64)
                ui.number(label("settings.max_steps"), 4)
                ui.expand(label("settings.advanced"))
                ui.number(label("settings.eval_every"), 2)
                ui.button(label("sft.start"))
                ui.wait_job("sft")
                ui.shot("sft")

                # -- reward model ------------------------------------------------------------------
                ui.goto("nav.reward", "reward.title")
                ui.number(label("settings.max_steps"), 3)
                ui.number(label("settings.batch_size"), 4)
                ui.number(label("settings.max_length"), 64)
                ui.number(label("settings.max_eval_pairs"), 8)
                ui.button(label("reward.start"))
                ui.wait_job("reward")
                ui.shot("reward")

                # -- PPO: from the SFT run, scored by the reward model -----------------------------
                ui.goto("nav.ppo", "ppo.title")
                ui.select(label("ppo.start_from"), "sft-")
                ui.main.get_by_test_id("stRadio").get_by_text(label("ppo.reward_model"),
                                                               exact=True).click()
                wait_idle(page)
                ui.widget("stSelectbox", label("ppo.reward_run")).wait_for()
                ui.number(label("settings.max_steps"), 2)
                ui.number(label("settings.batch_size"), 4)
                ui.number(label("settings.max_new_tokens"), 12)
                ui.button(label("ppo.start"))
                ui.wait_job("ppo")
                ui.shot("ppo")

                # -- compare base, SFT and PPO ---------------------------------------------------
                ui.goto("nav.compare", "compare.title")
                ui.widget("stMultiSelect", label("compare.models")).click()
                page.get_by_role("option").filter(has_text="PPO").first.click()
                page.keyboard.press("Escape")
                wait_idle(page)
                ui.select(label("compare.reward_run"), "reward-")
                ui.expand(label("compare.sampling"))
                ui.number(label("compare.max_new_tokens"), 16)
                ui.button(label("compare.start"))
                ui.wait_text(re.compile(r"Comparison #\d+ is ready"), JOB_TIMEOUT)
                ui.shot("compare-new")
                ui.tab(label("compare.tab_results"))
                ui.shot("compare-results")

                # -- export the PPO adapter and download it ----------------------------------------
                ui.goto("nav.export", "export.title")
                ui.wait_text(label("export.run"))  # newest first: the PPO run is chosen
                ui.button(label("export.start"), ui.main)
                download = ui.main.get_by_role("button").filter(
                    has_text=label("export.download_adapter")).first
                download.wait_for(timeout=JOB_TIMEOUT * 1000)
                wait_idle(page)
                with page.expect_download(timeout=60_000) as info:
                    download.click()
                assert "ppo" in info.value.suggested_filename, info.value.suggested_filename
                zipped = ARTIFACTS / "ppo-adapter.zip"
                info.value.save_as(zipped)
                names = zipfile.ZipFile(zipped).namelist()
                assert any(n.endswith("adapter_config.json") for n in names), names
                assert any(n.endswith("adapter_model.safetensors") for n in names), names
                ui.shot("export")

                # -- the overview -----------------------------------------------------------------
                ui.goto("nav.runs", "runs.title")
                ui.shot("runs")
                ui.goto("nav.home", "home.title")
                ui.shot("home")
                captions = ui.main.inner_text()
                assert "radio_button_unchecked" not in captions, "a pipeline step is still open"

                # -- the same pages in French, with everything in them -----------------------------
                ui.sidebar.get_by_test_id("stSelectbox").first.click()
                page.get_by_role("option", name="Français").click()
                ui.wait_text(label("home.intro", lang="fr")[:40])
                wait_idle(page)  # the model chosen in English is still the one in use
                assert tiny_model_dir.name in ui.main.inner_text()
                for ns in ("data", "sft", "reward", "ppo", "compare", "runs", "export"):
                    ui.sidebar.get_by_role("link", name=label("nav." + ns, lang="fr"),
                                           exact=True).click()
                    ui.main.get_by_role("heading", name=re.compile(
                        re.escape(label(ns + ".title", lang="fr")))).first.wait_for()
                    ui.shot("fr-" + ns)
            except Exception:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
                raise
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
