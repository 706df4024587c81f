"""A real browser (Debian's chromium, driven by Playwright) sees the home page."""
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, start_streamlit

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts"
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (apt-get install chromium)")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]


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
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
