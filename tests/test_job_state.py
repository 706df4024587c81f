"""What a job's state says (issue 19): a queued run's place in its queue, a cancel that is
under way, and honest progress estimates (no "0 s left" after the last step, no estimate
before a step of this attempt has completed, the first start kept across resumes)."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.runtime import runs as R
from engine.runtime.jobs import get_manager, queue_position, queue_positions
from tests.conftest import ROOT
from tests.job_helpers import registered_stages
from ui.common import widget_key

GATES: dict[str, threading.Event] = {}


@dataclass
class GateConfig:
    gate: str = "g"
    at: int = 4            # steps reported before the long step that waits on the gate
    total: int = 16
    message: str = ""      # the message of each step report
    phase: str = ""        # a phase reported after step `at` (e.g. "evaluating")
    first: str = ""        # a message reported at step 0, before any step (e.g. loading)
    load: float = 0.0      # seconds spent before the first step report
    pause: float = 0.0     # seconds between two step reports
    model: str = "m"


def gate_stage(cfg: GateConfig, ctx):
    """Reports `at` steps of `total`, then a long step: it waits on its gate, and sees a
    cancel only when that step ends (as a real training step does)."""
    if cfg.first:
        ctx.progress(0, cfg.total, cfg.first)
    time.sleep(cfg.load)
    start = ctx.store.get_run(ctx.run_id)["step"] if ctx.resume else 0
    for step in range(start + 1, cfg.at + 1):
        ctx.check_cancel()
        ctx.progress(step, cfg.total, cfg.message or None)
        time.sleep(cfg.pause)
    if cfg.phase:
        ctx.progress(cfg.at, cfg.total, cfg.phase)
    GATES.setdefault(cfg.gate, threading.Event()).wait(30)
    ctx.check_cancel()
    return {}


stand_in_stages = registered_stages(gate=(GateConfig, gate_stage, False),
                                    gate_light=(GateConfig, gate_stage, True))


@pytest.fixture(autouse=True)
def fresh_handles(store):
    # ui.common keeps the store and the job manager in st.cache_resource: one per test
    st.cache_resource.clear()
    GATES.clear()
    yield
    get_manager(store).shutdown()  # queued runs never start; the running one stops ...
    for gate in list(GATES.values()):
        gate.set()  # ... when its step ends
    st.cache_resource.clear()


def gate(name: str) -> threading.Event:
    return GATES.setdefault(name, threading.Event())


def wait_for(store, run_id: int, **expected) -> dict:
    deadline = time.time() + 20
    while time.time() < deadline:
        run = store.get_run(run_id)
        if all(run.get(k) == v for k, v in expected.items()):
            return run
        time.sleep(0.02)
    raise AssertionError(f"run {run_id}: {expected} not reached: {store.get_run(run_id)}")


def panel_script(run_id: int) -> None:
    from ui.common import job_panel

    job_panel(run_id, show_log=False)


def panel(run_id: int) -> AppTest:
    return AppTest.from_function(panel_script, args=(run_id,), default_timeout=30).run()


def panel_text(at: AppTest) -> str:
    """The header and the progress bar's words of a job panel."""
    return " ".join([m.value for m in at.markdown]
                    + [p.proto.text for p in at.get("progress")])


# -- 3. a queued run's place --------------------------------------------------------------
def test_queue_position_from_storage_per_lane(store):
    jobs = get_manager(store)
    busy = jobs.submit("gate", {"gate": "busy", "at": 4, "total": 16}, name="sft-hb")
    wait_for(store, busy, status="running", step=4)
    first = jobs.submit("gate", {"gate": "first", "at": 1, "total": 1})
    second = jobs.submit("gate", {"gate": "second", "at": 1, "total": 1})
    light = jobs.submit("gate_light", {"gate": "light", "at": 1, "total": 1, "model": "m"})
    wait_for(store, light, status="running")
    light_queued = jobs.submit("gate_light", {"gate": "lo", "at": 1, "total": 1, "model": "m"})

    assert queue_position(store, busy) is None  # running: not in a queue
    pos = queue_position(store, second)
    assert pos == {"lane": "train", "position": 2,
                   "behind": {"id": busy, "name": "sft-hb", "step": 4, "total_steps": 16}}
    assert queue_position(store, first)["position"] == 1
    # light jobs queue per model, behind the light job of that model, not the training run
    light_pos = queue_position(store, light_queued)
    assert light_pos["lane"] == "light:m" and light_pos["position"] == 1
    assert light_pos["behind"]["id"] == light

    # a run cancelled while queued and resumed goes to the back of its queue
    jobs.cancel(first)
    assert store.get_run(first)["status"] == "cancelled"
    jobs.resume(first)
    positions = queue_positions(store)
    assert positions[second]["position"] == 1 and positions[first]["position"] == 2


def test_job_panel_and_runs_page_say_what_a_queued_run_waits_behind(store):
    jobs = get_manager(store)
    busy = jobs.submit("gate", {"gate": "busy", "at": 4, "total": 16}, name="sft-hb")
    wait_for(store, busy, status="running", step=4)
    jobs.submit("gate", {"gate": "a", "at": 1, "total": 1})
    waiting = jobs.submit("gate", {"gate": "b", "at": 1, "total": 1})

    text = panel_text(panel(waiting))
    assert f"queued behind #{busy} sft-hb, step 4/16 · position 2 in the queue" in text

    page = AppTest.from_file(str(ROOT / "views" / "runs.py"), default_timeout=60).run()
    assert not page.exception
    table = page.dataframe[0].value
    status = dict(zip(table["id"], table["status"]))
    assert status[waiting] == "queued · position 2 in the queue"
    assert status[busy] == "running"
    page.selectbox(key=widget_key("runs_open")).set_value(waiting).run()
    assert f"queued behind #{busy} sft-hb, step 4/16" in panel_text(page)

    fr = AppTest.from_function(panel_script, args=(waiting,), default_timeout=30)
    fr.session_state["lang"] = "fr"
    assert f"en attente derrière #{busy} sft-hb, étape 4/16 · position 2 dans la file" \
        in panel_text(fr.run())


# -- 5. cancel under way ------------------------------------------------------------------
def test_cancel_shows_cancelling_at_once_with_the_button_disabled(store):
    jobs = get_manager(store)
    rid = jobs.submit("gate", {"gate": "step", "at": 2, "total": 10})
    wait_for(store, rid, status="running", step=2)
    at = panel(rid)
    assert not at.button(key=f"cancel-{rid}").disabled
    at.button(key=f"cancel-{rid}").click().run()
    assert not at.exception
    # the step has not ended: still running, but every session says it is cancelling
    assert store.get_run(rid)["status"] == "running"
    assert store.get_run(rid)["cancel_requested"] is not None
    assert "cancelling…" in panel_text(at) and "running" not in panel_text(at)
    assert at.button(key=f"cancel-{rid}").disabled
    other = panel(rid)  # another session (a second tab)
    assert "cancelling…" in panel_text(other) and other.button(key=f"cancel-{rid}").disabled
    page = AppTest.from_file(str(ROOT / "views" / "runs.py"), default_timeout=60).run()
    assert dict(zip(page.dataframe[0].value["id"],
                    page.dataframe[0].value["status"]))[rid] == "cancelling…"

    gate("step").set()  # the step ends: the cancel takes effect
    assert jobs.wait(rid, 20) == "cancelled"
    done = panel(rid)
    assert "cancelling" not in panel_text(done) and "cancelled" in panel_text(done)
    # a resume starts afresh: no cancel asked
    GATES["step"] = threading.Event()
    jobs.resume(rid)
    assert store.get_run(rid)["cancel_requested"] is None
    wait_for(store, rid, status="running")
    assert "cancelling" not in panel_text(panel(rid))
    gate("step").set()
    assert jobs.wait(rid, 20) == "succeeded"


# -- 6. honest estimates --------------------------------------------------------------------
def test_no_estimate_after_the_last_step_only_the_phase(store):
    jobs = get_manager(store)
    rid = jobs.submit("gate", {"gate": "eval", "at": 3, "total": 3, "pause": 0.05,
                               "phase": "evaluating"})
    wait_for(store, rid, status="running", message="evaluating")
    text = panel_text(panel(rid))
    assert "step 3 / 3 · finishing: evaluating" in text
    assert "s left" not in text


def test_no_estimate_before_a_step_of_this_attempt_has_completed(store):
    jobs = get_manager(store)
    # pair sampling: step 1 of 2 is reported once the model is loaded
    rid = jobs.submit("gate_light", {"gate": "sample", "at": 1, "total": 2, "load": 0.3,
                                     "first": "loading the model",
                                     "message": "sampling two answers"})
    wait_for(store, rid, status="running", step=1)
    text = panel_text(panel(rid))
    assert "step 1 / 2" in text and "sampling two answers" in text
    assert "s left" not in text
    # two step reports of this attempt: now there is a pace
    two = jobs.submit("gate_light", {"gate": "two", "at": 2, "total": 6, "pause": 0.2})
    gate("sample").set()
    wait_for(store, two, status="running", step=2)
    assert "s left" in panel_text(panel(two))


def test_the_estimate_counts_this_attempts_steps_only():
    from ui.common import eta_text

    now = 10_000.0
    # resumed at step 10 (first report of this attempt at now-20), now at step 12 of 20:
    # 10 s a step, 8 steps left; the first start long ago does not matter
    run = {"status": "running", "step": 12, "total_steps": 20, "started": now - 5000,
           "attempt_step": 10, "attempt_time": now - 20}
    assert eta_text(run, now=now) == "about 80 s left"
    assert eta_text({**run, "step": 10}, now=now) == ""  # no step done in this attempt yet
    assert eta_text({**run, "step": 20}, now=now) == ""  # after the last step


def test_resume_keeps_the_first_start_and_paces_from_the_new_attempt(store):
    jobs = get_manager(store)
    rid = jobs.submit("gate", {"gate": "one", "at": 3, "total": 6})
    first = wait_for(store, rid, status="running", step=3)
    assert first["attempt_step"] == 1
    jobs.cancel(rid)
    gate("one").set()
    assert jobs.wait(rid, 20) == "cancelled"
    started = store.get_run(rid)["started"]
    time.sleep(0.3)

    store.update_run(rid, config={**store.get_run(rid)["config"], "gate": "two", "at": 5})
    jobs.resume(rid)
    run = wait_for(store, rid, status="running", step=5)
    assert run["started"] == started                    # the first start is kept
    assert run["claimed"] >= started + 0.3              # this attempt's own start
    assert run["attempt_step"] == 4 and run["attempt_time"] >= run["claimed"]
    gate("two").set()
    assert jobs.wait(rid, 20) == "succeeded"
    run = store.get_run(rid)
    assert run["started"] == started
    # both attempts, not the 0.3 s the run sat cancelled between them
    assert run["finished"] - run["claimed"] <= R.duration(run) \
        <= run["finished"] - started - 0.3 + 1e-6
