"""How long the app takes to draw each page: the first load after a start (a fresh process:
imports, store, job manager) and a switch to each page afterwards, on a data folder seeded
with finished SFT, reward and PPO runs (full metric sets, samples). Prints one JSON document.

    .venv/bin/python bench/page_switch.py [--rounds 3] [--steps 200] [--profile sft] [--browser]

Converted models live in $RLHF_LAB_MODELS (default bench/out/models, kept between runs).

Scripts run through Streamlit's AppTest (app.py with st.navigation, then `switch_page`),
the same code a browser session runs, without the browser's own drawing time. With
--browser, also a real server and Debian's chromium (Playwright): from the click on a
page's sidebar link until the script run ended and every chart on the page is drawn.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["home", "data", "sft", "reward", "ppo", "compare", "runs", "export"]


def seed(home: Path, steps: int) -> None:
    """Finished runs of the three training stages with the metrics their engines log."""
    sys.path.insert(0, str(ROOT))
    from engine.data import ensure_samples_on_first_open
    from storage import Store

    store = Store(home / "lab.db")
    ensure_samples_on_first_open(store)
    now = time.time()

    def run(stage, config, rows):
        rid = store.create_run(stage, config, model="embedded", dataset=config.get("dataset"))
        store.update_run(rid, status="succeeded", started=now - 600, finished=now,
                         step=steps, total_steps=steps)
        for step, values in rows:
            store.log_metrics(rid, step, values)
        return rid

    sft = run("sft", {"model": "embedded", "dataset": "sample-sft"},
              [(s, {"train_loss": 2.5 - s / steps, "learning_rate": 2e-4, "grad_norm": 1.0,
                    "tokens_per_s": 160.0, "epoch": s / 50}) for s in range(1, steps + 1)]
              + [(s, {"eval_loss": 2.6 - s / steps}) for s in (0, steps // 2, steps)])
    store.add_samples(sft, steps, [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(4)])
    run("reward", {"model": "embedded", "dataset": "sample-preferences"},
        [(s, {"loss": 0.7 - s / steps / 2, "accuracy": 0.5 + s / steps / 3, "margin": s / steps,
              "reward_chosen": s / steps, "reward_rejected": -s / steps, "grad_norm": 1.0,
              "lr": 1e-4}) for s in range(1, steps + 1)]
        + [(s, {"eval_loss": 0.69 - s / steps / 4, "eval_accuracy": 0.5 + s / steps / 4,
                "eval_margin": s / steps}) for s in (steps // 2, steps)])
    ppo_names = ["score_mean", "score_std", "non_score_reward", "rlhf_reward", "kl",
                 "kl_per_token", "beta", "response_length", "eos_fraction", "value_mean",
                 "return_mean", "advantage_std_raw", "explained_variance", "time_generate",
                 "time_score", "time_train", "time_step", "policy_loss", "value_loss", "loss",
                 "clipfrac", "approx_kl", "entropy", "grad_norm", "value_clipfrac",
                 "ratio_mean", "ratio_min", "ratio_max"] + [f"ratio_hist_{k:02d}"
                                                            for k in range(20)]
    run("ppo", {"model": "embedded", "dataset": "sample-preferences", "cliprange": 0.2},
        [(s, {n: 1.0 + (s % 7) / 10 for n in ppo_names}) for s in range(1, steps // 4 + 1)])
    store.close()


def measure(home: Path, rounds: int, profile: str | None) -> dict:
    os.environ["RLHF_LAB_HOME"] = str(home)
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    first = time.perf_counter() - t0
    errors = [str(e.value)[:200] for e in at.exception]
    per_page: dict[str, list[float]] = {p: [] for p in PAGES}
    for _ in range(rounds):
        for page in PAGES:
            t = time.perf_counter()
            at.switch_page(f"views/{page}.py").run()
            per_page[page].append(time.perf_counter() - t)
            errors += [f"{page}: {str(e.value)[:200]}" for e in at.exception]
    out = {"first_load_s": round(first, 3),
           "first_switch_s": {p: round(v[0], 3) for p, v in per_page.items()},
           "switch_median_s": {p: round(statistics.median(v[1:] or v), 3)
                               for p, v in per_page.items()},
           "errors": errors}
    if profile:  # the script runs in its own thread: profile inside it
        import cProfile
        import io
        import pstats

        from streamlit.runtime.scriptrunner.script_runner import ScriptRunner

        prof = cProfile.Profile()
        original = ScriptRunner._run_script

        def profiled(self, rerun_data):
            prof.enable()
            try:
                original(self, rerun_data)
            finally:
                prof.disable()

        ScriptRunner._run_script = profiled
        at.switch_page(f"views/{profile}.py").run()
        ScriptRunner._run_script = original
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(60)
        print(buf.getvalue(), file=sys.stderr)
    return out


TITLES = {"home": "nav.home", "data": "nav.data", "sft": "nav.sft", "reward": "nav.reward",
          "ppo": "nav.ppo", "compare": "nav.compare", "runs": "nav.runs", "export": "nav.export"}
CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def _script_done(page, timeout_ms: float = 60_000) -> None:
    """The script run ended and nothing on the page is stale."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
            return !document.querySelector('[data-stale="true"]');
        }""", timeout=timeout_ms, polling=20)


def _settled(page, timeout_ms: float = 60_000) -> None:
    """The script run ended, no widget is a loading skeleton, and every visible chart
    has its canvas or svg."""
    page.wait_for_function(
        """() => {
            const app = document.querySelector('[data-testid="stApp"]');
            if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
            if (document.querySelector('[data-stale="true"]')) return false;
            // a widget whose code is still loading shows a skeleton
            if (document.querySelector('[data-testid="stSkeleton"]')) return false;
            const charts = document.querySelectorAll('[data-testid="stVegaLiteChart"]');
            // (a chart in a closed expander or another tab is not drawn until opened)
            return [...charts].every(c => c.offsetParent === null
                                          || c.querySelector('canvas, svg'));
        }""", timeout=timeout_ms, polling=50)


def browser(home: Path, rounds: int) -> dict:
    """First load after a server start, then each page switch, in chromium."""
    import socket

    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from ui.i18n import t

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, RLHF_LAB_HOME=str(home))
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                             "--server.port", str(port), "--server.headless", "true"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.perf_counter() - started > 120:
                    raise RuntimeError("streamlit did not start")
                time.sleep(0.2)
        server_s = time.perf_counter() - started
        per_page: dict[str, list[float]] = {p: [] for p in PAGES}
        script: dict[str, list[float]] = {p: [] for p in PAGES}
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 900}, locale="en-US")
            t0 = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.get_by_test_id("stSidebarNav").wait_for(timeout=120_000)
            page.wait_for_timeout(100)
            _settled(page, 120_000)
            first = time.perf_counter() - t0
            nav = page.get_by_test_id("stSidebarNav")
            for _ in range(rounds):
                for name in PAGES[1:] + PAGES[:1]:
                    t1 = time.perf_counter()
                    nav.get_by_role("link", name=t(TITLES[name], lang="en"), exact=True).click()
                    try:
                        page.wait_for_function(  # (a client-side navigation: no load event)
                            f"() => ['/{name}', '/'].includes(location.pathname)"
                            if name == "home" else f"() => location.pathname === '/{name}'",
                            timeout=30_000, polling=20)
                    except Exception as exc:
                        raise RuntimeError(f"no switch to {name}: at {page.url}") from exc
                    page.wait_for_timeout(50)
                    _script_done(page)
                    script[name].append(time.perf_counter() - t1)
                    _settled(page)
                    per_page[name].append(time.perf_counter() - t1)
            b.close()
    finally:
        proc.terminate()
        proc.wait(15)
    return {"server_start_s": round(server_s, 3), "first_load_s": round(first, 3),
            "first_switch_s": {p: round(v[0], 3) for p, v in per_page.items()},
            "switch_median_s": {p: round(statistics.median(v[1:] or v), 3)
                                for p, v in per_page.items()},
            "script_done_median_s": {p: round(statistics.median(v[1:] or v), 3)
                                     for p, v in script.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--profile", choices=PAGES, help="cProfile one more switch to this page")
    ap.add_argument("--browser", action="store_true",
                    help="also time a real server in chromium (Playwright)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--seed", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed:
        seed(Path(args.seed), args.steps)
        return
    if args.child:  # the measuring process: fresh, so the first load pays every import
        print(json.dumps(measure(Path(args.child), args.rounds, args.profile)))
        return
    with tempfile.TemporaryDirectory(prefix="page-switch-") as tmp:
        home = Path(tmp) / "lab"
        home.mkdir()
        # converted models are kept (as in a real data folder): the embedded model is
        # converted once, not timed on every run of the bench
        os.environ.setdefault("RLHF_LAB_MODELS", str(ROOT / "bench" / "out" / "models"))
        env = dict(os.environ, RLHF_LAB_HOME=str(home))
        subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--seed", str(home)],
                       check=True, env=env)
        cmd = [sys.executable, __file__, "--rounds", str(args.rounds), "--child", str(home)]
        if args.profile:
            cmd += ["--profile", args.profile]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode:
            sys.exit(res.stderr[-3000:])
        if res.stderr.strip():
            print(res.stderr, file=sys.stderr)
        result = {"apptest": json.loads(res.stdout.strip().splitlines()[-1])}
        if args.browser:
            result["browser"] = browser(home, args.rounds)
        result.update(rounds=args.rounds, steps=args.steps, cpus=os.cpu_count())
        print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
