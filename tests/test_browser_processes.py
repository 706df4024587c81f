"""In a real browser (Debian's chromium, Playwright): "processes" raised to 2 on the SFT page
with its + button, Start, and the run finishes on two processes (the job engine launches
`accelerate launch`, two CPU processes on gloo) as one succeeded run of the page."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

from tests.conftest import free_port, start_streamlit
from tests.test_browser_home import CHROMIUM, LAUNCH_ARGS, wait_idle
from tests.test_browser_pipeline import Clicker, label, runs_of

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (apt-get install chromium)")


def test_sft_page_runs_on_two_processes(lab_home, models_home, tiny_model_dir):
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = start_streamlit(lab_home, port, env_extra={"OMP_NUM_THREADS": "1"})
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            context = browser.new_context(viewport={"width": 1400, "height": 1000},
                                          locale="en-US")
            context.set_default_timeout(30_000)
            page = context.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            ui = Clicker(page)
            ui.wait_text(label("home.intro"))
            wait_idle(page)
            ui.sidebar.get_by_test_id("stRadio").get_by_text(label("app.model_folder"),
                                                              exact=True).click()
            wait_idle(page)
            folder = ui.widget("stTextInput", label("app.model_folder_input"), ui.sidebar) \
                .locator("input")
            folder.fill(str(tiny_model_dir))
            folder.press("Enter")
            wait_idle(page)
            page.get_by_text(tiny_model_dir.name).first.wait_for()

            ui.goto("nav.sft", "sft.title")
            ui.settings({"batch_size": 2, "max_length": 64, "max_steps": 3})
            processes = ui.widget("stNumberInput", label("settings.processes"))
            assert processes.locator("input").input_value() == "1"  # the default
            processes.get_by_test_id("stNumberInputStepUp").click()
            wait_idle(page)
            assert ui.value(label("settings.processes")) == "2"
            ui.button(label("sft.start"))
            ui.wait_job("sft", timeout=400)
            ui.no_error("a run of two processes")
            page.screenshot(path="/tmp/i26-browser-sft-two-processes.png", full_page=True)
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    [(run_id, status)] = runs_of(lab_home, "sft")
    assert status == "succeeded"
    with sqlite3.connect(f"file:{lab_home / 'lab.db'}?mode=ro", uri=True) as db:
        config = json.loads(db.execute("SELECT config FROM runs WHERE id = ?",
                                       [run_id]).fetchone()[0])
        steps = [s for (s,) in db.execute("SELECT step FROM metrics WHERE run_id = ? AND "
                                          "name = 'train_loss' ORDER BY step", [run_id])]
        log = [m for (m,) in db.execute("SELECT message FROM logs WHERE run_id = ?", [run_id])]
    assert config["processes"] == 2 and steps == [1, 2, 3]
    assert any(m.startswith("starting on 2 processes") for m in log), log
    assert any("× 2 process(es)" in m for m in log), log  # the stage saw two processes
