"""States that go stale (issue 25, item 13): a stopped run's progress line does not keep
the phase it was in ("step 0 / 3 · evaluating before training" after a cancel), and the AI
feedback job selector, drawn outside the live panel, shows no status that can stay
"running" after the job succeeded."""
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from ui.common import progress_text, widget_key


def test_a_stopped_runs_progress_keeps_no_phase():
    run = {"status": "running", "step": 0, "total_steps": 3,
           "message": "evaluating before training"}
    assert progress_text(run) == "step 0 / 3 · evaluating before training"
    for status in ("cancelled", "failed", "interrupted", "succeeded"):
        assert progress_text({**run, "status": status}) == "step 0 / 3", status
    assert "evaluating" in progress_text({**run, "status": "queued"})  # still on its way


def test_the_ai_feedback_job_selector_has_no_status_to_go_stale(store):
    run = store.create_run("ai_feedback", {}, name="judge-job")
    store.update_run(run, status="succeeded", summary={"pairs": 0, "skipped": []})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90).run()
    at.switch_page("views/data.py").run()
    assert not at.exception, at.exception
    box = at.selectbox(key=widget_key("fb_run"))
    label = box.format_func(box.value)
    assert label == f"#{run} judge-job"
    assert "running" not in label and "succeeded" not in label
