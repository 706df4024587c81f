"""A real browser (Debian's chromium, driven by Playwright) sees the home page."""
import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, start_streamlit

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (apt-get install chromium)")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def wait_idle(page, timeout: float = 60_000) -> None:
    """Wait until Streamlit has finished the script run a click may have started."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for(
        timeout=timeout)


def test_browser_sees_home_page(lab_home, models_home, embedded_dir):
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = start_streamlit(lab_home, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.get_by_text("Align a language model on your own machine").wait_for(timeout=60_000)
            page.get_by_text("SmolLM2-135M-Instruct").first.wait_for(timeout=30_000)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "home.png"), full_page=True)

            # a French browser gets the French interface; the sidebar choice then wins
            fr = browser.new_context(locale="fr-FR", viewport={"width": 1400, "height": 900})
            page = fr.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.get_by_text("Alignez un modèle de langue").wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "home-fr.png"), full_page=True)
            wait_idle(page)
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_test_id("stSelectbox").first.click()
            page.get_by_role("option", name="English").click()  # the first click must count
            page.get_by_text("Align a language model on your own machine").wait_for(timeout=30_000)
            wait_idle(page)
            assert "Language" in sidebar.get_by_test_id("stSelectbox").first.inner_text()
            sidebar.get_by_role("link", name="Runs").click()  # the choice holds on other pages
            page.get_by_test_id("stMain").get_by_text("Runs").first.wait_for(timeout=30_000)
            assert "Language" in sidebar.get_by_test_id("stSelectbox").first.inner_text()
            fr.close()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def page_on_fresh_server(lab_home, path: str):
    """A fresh Streamlit server and an English browser page opened at `path` on it."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    proc = start_streamlit(lab_home, port)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="en-US")
            page.goto(f"http://127.0.0.1:{port}{path}", wait_until="domcontentloaded")
            yield page
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_first_visit_to_a_page_url_gets_the_app_shell(lab_home, models_home, embedded_dir):
    """A fresh server whose first visitor opens /data directly (a bookmark) must run app.py's
    navigation and sidebar, not Streamlit's old views/ file list."""
    with page_on_fresh_server(lab_home, "/data") as page:
        page.get_by_role("heading", name="Data").first.wait_for(timeout=60_000)
        wait_idle(page)
        sidebar = page.locator('[data-testid="stSidebar"]')
        # the app's sidebar (drawn by app.py's run, maybe a moment after the first paint)
        sidebar.get_by_text("Language").first.wait_for(timeout=30_000)
        assert sidebar.get_by_text("Reward model").count() == 1  # the app's page titles
        assert sidebar.get_by_text("reward", exact=True).count() == 0  # no file list
        page.screenshot(path=str(ARTIFACTS / "direct-data.png"))


def test_a_translated_radio_keeps_its_choice_across_a_language_switch(lab_home, models_home,
                                                                       embedded_dir):
    """Pick "From a dataset" on the Compare page, switch to French: the same option must
    still show selected ("Tirés d'un jeu de données"), not an empty radio, and the reward
    select box must read "Pas de modèle de récompense", not the English label."""
    with page_on_fresh_server(lab_home, "/compare") as page:
        page.get_by_text("From a dataset").first.wait_for(timeout=60_000)
        wait_idle(page)
        page.get_by_text("From a dataset").first.click()
        wait_idle(page)
        page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").first.click()
        page.get_by_role("option", name="Français").click()
        page.get_by_text("Tirés d'un jeu de données").first.wait_for(timeout=30_000)
        wait_idle(page)
        main = page.get_by_test_id("stMain")
        radios = main.get_by_test_id("stRadio").first.get_by_role("radio")  # prompts from
        assert [radios.nth(i).is_checked() for i in range(radios.count())] == [False, True]
        # select boxes show their choice in the new language too, not the old label
        boxes = main.get_by_test_id("stSelectbox").locator("input")
        values = [boxes.nth(i).input_value() for i in range(boxes.count())]
        assert "Pas de modèle de récompense" in values, values  # (the samples' box: a name)
        assert "Modèle de base" in main.get_by_test_id("stMultiSelect").first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "radio-after-language-switch.png"))
