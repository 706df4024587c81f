"""The first page load after a start, as a newcomer sees it: a fresh data folder, a fresh
`streamlit run app.py`, then Debian's chromium (headless, Playwright, a new browser context:
nothing cached) from `page.goto` until the Home page's heading is visible. Prints one JSON
document: each time, the median, the time until the HTML page was loaded (DOMContentLoaded,
before the JavaScript bundle and the websocket), and the load average before each start.

    .venv/bin/python bench/first_load.py [--repeats 5] [--floor]

Every repeat starts its own server on a free port with its own empty RLHF_LAB_HOME and waits
until the server answers HTTP (`/_stcore/health`) before the clock starts, so the server's own
start (Python, Streamlit's import) is not counted: the clock sees the browser fetching the
page, the websocket and the first script run (app.py and views/home.py with their imports).

--floor also times a script that only draws a heading (`st.title`), started the same way
and interleaved with the app's starts (the same load on both): what Streamlit and the
browser cost on this machine before any line of the lab runs; `app_minus_floor_median_s`
is the median of the per-repeat differences, what the lab itself adds.

The heading is watched in the page, at every animation frame (`wait_for_function` with
`polling="raf"`): the time is the page's own clock at the first frame in which the heading
is laid out and visible (a box, `visibility: visible`, as Playwright means it), minus the
wall-clock time of `page.goto`. `locator.wait_for` alone overstates it: Playwright polls
after 0, 20, 50, 100, 100, then every 500 ms, so a heading drawn 300 ms after
DOMContentLoaded was reported up to 0.5 s late (the bench measured that way until
2026-12-07: bench/RESULTS.md, "First page load").
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
HEADING = '[data-testid="stMain"] h1'
# run at each animation frame: the page's clock (ms since the epoch) once the heading is
# laid out and visible, else null (keep polling)
HEADING_SEEN = """selector => {
    const h = document.querySelector(selector);
    if (!h) return null;
    const box = h.getBoundingClientRect();
    if (box.width <= 0 || box.height <= 0 || getComputedStyle(h).visibility !== "visible")
        return null;
    return performance.timeOrigin + performance.now();
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> float:
    """Seconds until the server answers its health check (bounded by `timeout_s`)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"streamlit did not answer HTTP within {timeout_s} s")


def one_load(browser, script: Path, tmp: Path) -> dict:
    """A fresh server of `script` on a fresh data folder; seconds from goto to the heading."""
    home = Path(tempfile.mkdtemp(prefix="lab-", dir=tmp))
    port = free_port()
    env = dict(os.environ, RLHF_LAB_HOME=str(home))
    load = os.getloadavg()[0]
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(script),
                             "--server.port", str(port), "--server.headless", "true",
                             "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server_s = wait_http(port, proc)
        context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="en-US")
        page = context.new_page()
        wall0, t0 = time.time(), time.perf_counter()
        page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
        dom = time.perf_counter() - t0
        seen_ms = page.wait_for_function(HEADING_SEEN, arg=HEADING, polling="raf",
                                         timeout=120_000).json_value()
        first = seen_ms / 1000 - wall0
        heading = page.locator(HEADING).first.inner_text()
        context.close()
    finally:
        proc.terminate()
        proc.wait(15)
    return {"first_load_s": round(first, 3), "html_s": round(dom, 3),
            "server_ready_s": round(server_s, 2),
            "load_1min": round(load, 2), "heading": heading.strip()[:60]}


def summary(runs: list[dict]) -> dict:
    times = [r["first_load_s"] for r in runs]
    return {"times_s": times, "median_s": round(statistics.median(times), 3),
            "html_s": [r["html_s"] for r in runs],
            "load_1min": [r["load_1min"] for r in runs], "heading": runs[-1]["heading"],
            "server_ready_s": [r["server_ready_s"] for r in runs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--floor", action="store_true",
                    help="also time a script that only draws a heading")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="first-load-") as tmp_name:
        tmp = Path(tmp_name)
        result: dict = {"cpus": os.cpu_count(), "repeats": args.repeats}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                        args=LAUNCH_ARGS)
            floor = tmp / "floor.py"
            floor.write_text('import streamlit as st\n\nst.title("RLHF Lab")\n')
            app, base = [], []
            for _ in range(args.repeats):  # interleaved: both series see the same load
                app.append(one_load(browser, ROOT / "app.py", tmp))
                if args.floor:
                    base.append(one_load(browser, floor, tmp))
            result["app"] = summary(app)
            if args.floor:
                result["floor"] = summary(base)
                result["app_minus_floor_median_s"] = round(statistics.median(
                    a["first_load_s"] - b["first_load_s"] for a, b in zip(app, base)), 3)
            browser.close()
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
