"""The Runs page after a Resume (issue 25, item 10): the resumed run stays open when the
status filter no longer matches it (the view jumped from #1 to #2), and its duration counts
its attempts, not the time it sat cancelled."""
import threading
from dataclasses import dataclass

from streamlit.testing.v1 import AppTest

from engine.runtime import runs as R
from engine.runtime import stages
from engine.runtime.jobs import get_manager
from tests.conftest import ROOT
from ui.common import widget_key

released = threading.Event()


@dataclass
class WaitConfig:
    total: int = 2


def wait_stage(cfg: WaitConfig, ctx):
    ctx.progress(0, cfg.total)
    released.wait(30)  # bounded: the test releases it
    ctx.progress(cfg.total, cfg.total)
    return {}


stages.register("resume_view_wait", WaitConfig, wait_stage)


def test_a_resumed_run_stays_open_outside_the_status_filter(store):
    one = store.create_run("resume_view_wait", {"total": 2}, name="first")
    two = store.create_run("resume_view_wait", {"total": 2}, name="second")
    for rid in (one, two):
        store.update_run(rid, status="cancelled", started=100.0, claimed=100.0, finished=110.0)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("views/runs.py").run()
    at.multiselect(key=widget_key("runs_status")).set_value(["cancelled"]).run()
    at.selectbox(key=widget_key("runs_open")).set_value(one).run()
    try:
        at.button(key=f"resume-{one}").click().run()
        assert not at.exception
        assert store.get_run(one)["status"] in ("queued", "running")
        assert at.selectbox(key=widget_key("runs_open")).value == one  # not #2
        assert any(f"#{one} no longer matches the filters" in c.value for c in at.caption)
    finally:
        released.set()
        get_manager(store).wait(one, 30)
    assert store.get_run(one)["status"] == "succeeded"


def test_a_resumed_runs_duration_leaves_out_the_time_it_sat_cancelled(store):
    rid = store.create_run("sft", {}, name="paused")
    store.update_run(rid, status="cancelled", started=100.0, claimed=100.0, finished=110.0)
    store.requeue_run(rid)  # resumed long after: 10 s ran before
    assert R.duration(store.get_run(rid)) == 10.0  # queued again: its earlier attempt
    store.update_run(rid, status="succeeded", claimed=500.0, finished=520.0)
    assert R.duration(store.get_run(rid)) == 30.0  # 10 + 20, not 420
    store.update_run(rid, status="cancelled", finished=530.0)
    store.requeue_run(rid)
    store.update_run(rid, status="running", claimed=900.0)
    assert R.duration(store.get_run(rid), now=905.0) == 45.0  # 10 + 30 + 5
