"""The whole pipeline in a real browser, as a newcomer clicks through it.

Debian's chromium (driven by Playwright) on a fresh data folder with the tiny model chosen
in the sidebar: load the sample data, vote on two preference pairs (the prompts of another
dataset), train SFT, train a reward model, run a few PPO steps, run DPO and GRPO (a
built-in rule reward) from the same SFT run, compare base/SFT/PPO/DPO/GRPO with the reward
model, export the PPO adapter and download its zip, overlay reward against KL on the Runs
page, then every page in French. Every step goes through the page widgets and waits for its
job through the page (no back doors into the engine; the database is only read, to count
runs). On the way, issue 19's items 1, 2, 5 and 8: switching the prompts' dataset before
sampling a pair, Enter in a form field and a double click on Start (one run, a warning),
Cancel on a running run ("cancelling…" with the button disabled at once), a form value
kept across pages and a language switch, the language kept across a reload (?lang=).
Screenshots land in tests/artifacts/.
"""
from __future__ import annotations

import os
import re
import sqlite3
import time
import zipfile

import pytest

from tests.conftest import ROOT, free_port, start_streamlit
from tests.test_browser_home import CHROMIUM, LAUNCH_ARGS, wait_idle

ARTIFACTS = ROOT / "tests" / "artifacts" / "pipeline"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (apt-get install chromium)")
JOB_TIMEOUT = 150  # seconds, per job; the tiny model needs a few seconds per stage


def runs_of(home, stage: str) -> list[tuple[int, str]]:
    """(id, status) of a stage's runs, read from the database (never written)."""
    with sqlite3.connect(f"file:{home / 'lab.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT id, status FROM runs WHERE stage = ? ORDER BY id",
                          [stage]).fetchall()


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

    def quick_shot(self, name: str) -> None:
        """The window as it is now (a state that will not last: no waiting, no resizing)."""
        self.shots += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{self.shots:02d}-{name}.png"))

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
        self.heading(label(title_key)).wait_for(timeout=60_000)
        wait_idle(self.page)

    def heading(self, text: str):
        """A heading of the main area that contains `text` (after its icon's name)."""
        return self.main.get_by_role("heading").filter(has_text=text).first

    def widget(self, testid: str, text: str, scope=None):
        """The widget of a kind whose label reads exactly `text`."""
        scope = scope or self.main
        return scope.get_by_test_id(testid).filter(
            has=self.page.get_by_test_id("stWidgetLabel").get_by_text(text, exact=True)).first

    def number(self, text: str, value, scope=None, key: str = "Tab") -> None:
        box = self.widget("stNumberInput", text, scope).locator("input")
        box.fill(str(value))
        box.press(key)
        if key == "Enter":  # Enter commits the field (a script run); Tab leaves it first
            wait_idle(self.page)

    def settings(self, values: dict, advanced: dict | None = None) -> None:
        """Fill a stage form's number fields by their settings labels (the advanced ones
        after opening the expander)."""
        for name, value in values.items():
            self.number(label("settings." + name), value)
        if advanced:
            self.expand(label("settings.advanced"))
            self.settings(advanced)

    def value(self, text: str, scope=None) -> str:
        return self.widget("stNumberInput", text, scope).locator("input").input_value()

    def choice(self, text: str, scope=None) -> str:
        """What a select box shows as chosen."""
        return self.widget("stSelectbox", text, scope).locator("input").input_value()

    def no_error(self, where: str) -> None:
        errors = self.main.get_by_test_id("stException").count() \
            + self.main.get_by_test_id("stAlertContentError").count()
        if errors:
            self.shot(f"error-{where}")
        assert not errors, f"{where}: the page shows an error:\n{self.main.inner_text()[-1500:]}"

    def pick(self, multiselect, option, typed: str) -> None:
        """Add an option (text or regex) to a multiselect, typing `typed` to find it (a click
        on a multiselect that had its menu open before does not open it again)."""
        box = multiselect.locator("input")
        box.click()
        box.press_sequentially(typed)
        self.page.get_by_role("option").filter(has_text=option).first.click()
        self.page.keyboard.press("Escape")
        wait_idle(self.page)

    def table(self, index: int = 0) -> list[list[str]]:
        """The rows of a st.dataframe, read from the accessible table that the canvas grid
        keeps beside it (not shown: attached, not visible), header row first."""
        rows = self.main.get_by_test_id("stDataFrame").nth(index).locator("tr[role=row]")
        rows.first.wait_for(state="attached")
        return [[c.strip() for c in rows.nth(i).locator("[role=columnheader], [role=gridcell]")
                 .all_text_contents()] for i in range(rows.count())]

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
                # (issue 19, item 1) the prompts of another dataset, then a pair of answers
                prompts_of = label("data.collect_prompt_ds")
                other = "sample-preferences" if ui.choice(prompts_of) == "sample-sft" \
                    else "sample-sft"
                ui.select(prompts_of, other)
                assert ui.choice(prompts_of) == other
                ui.button(label("data.collect_sample"))
                ui.main.get_by_role("button").filter(has_text=label("data.vote_a")).first \
                    .wait_for(timeout=JOB_TIMEOUT * 1000)
                assert ui.main.get_by_test_id("stText").count() >= 3  # the prompt, A and B
                ui.no_error("sampling a pair after switching datasets")
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
                # (issue 19, item 2) Enter in a field commits it and starts nothing
                ui.number(label("settings.max_steps"), 4, key="Enter")
                assert ui.value(label("settings.max_steps")) == "4"
                ui.wait_text(label("sft.no_runs"))
                assert runs_of(lab_home, "sft") == []
                ui.expand(label("settings.advanced"))
                ui.number(label("settings.eval_every"), 2)
                # ... and Start clicked twice quickly starts one run, and says so
                start = ui.main.get_by_role("button").filter(has_text=label("sft.start")).first
                start.click()
                start.click()
                warned = re.compile(re.escape(label("settings.duplicate", id=999))
                                    .replace("999", r"\d+"))
                try:
                    ui.wait_text(warned, timeout=5)
                except Exception:  # the second click came before the first one's run: again
                    start.click()
                    ui.wait_text(warned, timeout=8)
                assert len(runs_of(lab_home, "sft")) == 1, runs_of(lab_home, "sft")
                ui.wait_job("sft")
                assert len(runs_of(lab_home, "sft")) == 1, runs_of(lab_home, "sft")
                ui.shot("sft")

                # -- reward model ------------------------------------------------------------------
                ui.goto("nav.reward", "reward.title")
                ui.settings({"max_steps": 3, "batch_size": 4, "max_length": 64,
                             "max_eval_pairs": 8})
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
                ui.settings({"max_steps": 2, "batch_size": 4, "max_new_tokens": 12})
                ui.button(label("ppo.start"))
                ui.wait_job("ppo")
                ui.shot("ppo")

                # -- DPO from the same SFT run, on the sample preference pairs --------------------
                ui.goto("nav.dpo", "dpo.title")
                assert "sft-" in ui.choice(label("dpo.start_from"))
                ui.settings({"max_steps": 2, "batch_size": 2, "max_length": 64},
                            advanced={"max_eval_pairs": 4, "max_new_tokens": 8})
                ui.button(label("dpo.start"))
                ui.wait_job("dpo")
                ui.shot("dpo")

                # -- GRPO from the same SFT run, rewarded by a built-in rule ----------------------
                ui.goto("nav.grpo", "grpo.title")
                assert "sft-" in ui.choice(label("ppo.start_from"))
                rules = ui.widget("stMultiSelect", label("grpo.rules")).inner_text()
                assert label("ppo.rw_ends_with_period") in rules, rules
                # (issue 19, item 5) first a long run (long answers: seconds a step), cancelled
                ui.settings({"max_steps": 50, "batch_size": 1, "group_size": 2,
                             "max_new_tokens": 256})
                ui.button(label("grpo.start"))
                ui.wait_text(re.compile(r"step [1-9]\d* / 50"), JOB_TIMEOUT)
                cancel = ui.main.get_by_role("button").filter(
                    has_text=label("common.cancel")).first
                cancel.click()
                ui.wait_text(label("common.status_cancelling"), timeout=10)
                stopping = ui.main.get_by_role("button").filter(
                    has_text=label("common.cancel")).first
                assert stopping.is_disabled(), "Cancel stays enabled after a cancel"
                ui.quick_shot("grpo-cancelling")
                ui.wait_text(re.compile(r"stop_circle\s*"
                                        + re.escape(label("common.status_cancelled"))), 60)
                assert [s for _, s in runs_of(lab_home, "grpo")] == ["cancelled"]
                # then the real one: two short steps
                ui.settings({"max_steps": 2, "max_new_tokens": 8})
                ui.button(label("grpo.start"))
                ui.wait_job("grpo")
                assert [s for _, s in runs_of(lab_home, "grpo")] == ["cancelled", "succeeded"]
                ui.shot("grpo")

                # -- compare base, SFT and PPO ---------------------------------------------------
                # -- compare base, SFT, PPO, DPO and GRPO on the same prompts --------------------
                ui.goto("nav.compare", "compare.title")
                models = ui.widget("stMultiSelect", label("compare.models"))
                for method in ("SFT", "PPO", "DPO", "GRPO"):
                    if not re.search(rf"(^|\W){method} ·", models.inner_text(), re.M):
                        ui.pick(models, re.compile(rf"^{method} ·"), method)
                for method in ("SFT", "PPO", "DPO", "GRPO"):
                    assert re.search(rf"(^|\W){method} ·", models.inner_text(), re.M), \
                        models.inner_text()
                ui.select(label("compare.reward_run"), "reward-")
                ui.number(label("compare.cap_limit"), 6)   # 3 EN + 3 FR capability questions
                ui.expand(label("compare.sampling"))
                ui.number(label("compare.max_new_tokens"), 12)
                ui.button(label("compare.start"))
                ui.wait_text(re.compile(r"Comparison #\d+ is ready"), JOB_TIMEOUT)
                ui.shot("compare-new")
                ui.tab(label("compare.tab_results"))
                table = ui.table()
                method = table[0].index(label("compare.col_method"))
                reward = table[0].index(label("compare.col_reward"))
                assert sorted(r[method] for r in table[1:]) == sorted(
                    [label("compare.method_base"), "SFT", "PPO", "DPO", "GRPO"]), table
                assert all(r[reward] != "—" for r in table[1:]), table  # scored by the RM
                capability = ui.table(1)   # accuracy on the 6 questions, with its interval
                interval = capability[0].index(label("compare.cap_col_interval"))
                assert len(capability) == 6 and all(" – " in r[interval]
                                                    for r in capability[1:]), capability
                ui.shot("compare-results")

                # -- export the PPO adapter and download it ----------------------------------------
                ui.goto("nav.export", "export.title")
                ui.wait_text(label("export.run"))  # newest first: the GRPO run; pick PPO's
                ui.select(label("export.run"), "ppo-")
                assert "ppo-" in ui.choice(label("export.run"))
                ui.button(label("export.start"), ui.main)
                download = ui.main.get_by_role("button").filter(
                    has_text=label("export.download_adapter")).first
                download.wait_for(timeout=JOB_TIMEOUT * 1000)
                for attempt in range(3):
                    # the zip is made on click (a deferred download): a click racing a script
                    # run can be left spinning, so open the page afresh and click again
                    wait_idle(page)
                    try:
                        with page.expect_download(timeout=20_000) as info:
                            download.click()
                        break
                    except Exception:
                        if attempt == 2:
                            raise
                        ui.goto("nav.runs", "runs.title")
                        ui.goto("nav.export", "export.title")
                        download.wait_for(timeout=60_000)
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
                ui.tab(label("runs.tab_overlay"))
                ui.main.get_by_text(label("runs.rkl_title")).first.wait_for()
                picked = ui.widget("stMultiSelect", label("runs.rkl_runs")).inner_text()
                for stage in ("ppo", "dpo", "grpo"):
                    assert label(f"runs.stage_{stage}") in picked, picked
                ui.main.get_by_test_id("stVegaLiteChart").last.wait_for()
                ui.wait_text(re.compile(re.escape(label("runs.rkl_pairs", pairs="")[:-1])))
                ui.no_error("runs overlay")
                ui.shot("runs-reward-kl")
                ui.goto("nav.home", "home.title")
                ui.shot("home")
                captions = ui.main.inner_text()
                # the classic path (data, SFT, reward, PPO, compare) is done: "start here"
                # says so (DPO, GRPO and Experiments keep their own open cards)
                assert label("home.start_done")[:40] in captions, "a pipeline step is still open"

                # -- the same pages in French, with everything in them -----------------------------
                ui.sidebar.get_by_test_id("stSelectbox").first.click()
                page.get_by_role("option", name="Français").click()
                ui.wait_text(label("home.intro", lang="fr")[:40])
                wait_idle(page)  # the model chosen in English is still the one in use
                assert tiny_model_dir.name in ui.main.inner_text()
                assert "lang=fr" in page.url, page.url
                for ns in ("data", "sft", "reward", "ppo", "dpo", "grpo", "compare", "runs",
                           "export"):
                    ui.sidebar.get_by_role("link", name=label("nav." + ns, lang="fr"),
                                           exact=True).click()
                    ui.heading(label(ns + ".title", lang="fr")).wait_for()
                    if ns == "sft":
                        # (issue 19, item 8) the SFT form's values, set in English pages ago,
                        # are still there in French
                        ui.widget("stNumberInput", label("settings.max_length", lang="fr")) \
                            .wait_for()
                        assert ui.value(label("settings.max_length", lang="fr")) == "64"
                        assert ui.value(label("settings.batch_size", lang="fr")) == "4"
                    ui.shot("fr-" + ns)
                # ... and a reload keeps the language (the address carries ?lang=fr)
                assert "lang=fr" in page.url, page.url
                page.reload(wait_until="domcontentloaded")
                ui.heading(label("export.title", lang="fr")).wait_for(timeout=60_000)
                wait_idle(page)
                assert "lang=fr" in page.url, page.url
                assert ui.sidebar.get_by_test_id("stSelectbox").first.locator("input") \
                    .input_value() == "Français"
            except Exception:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
                raise
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
