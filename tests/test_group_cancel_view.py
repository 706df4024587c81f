"""Issue 25, items 3 to 6 (the Experiments page): a group cancelled during its last run
ends cancelled, and shows "cancelling…" with its Cancel button disabled at once; a group
just started is the one the Groups tab opens; a run whose number of steps is not known yet
says what it does instead of "step 0/?"; no internal name or "None" in the group's view."""
from __future__ import annotations

import pytest

from engine.experiments import runner
from engine.experiments.catalogue import recipes
from engine.experiments.plan import PlannedRun
from engine.runtime import runs as R
from engine.runtime.jobs import JobManager, get_manager
from tests.conftest import app_with_model
from tests.test_experiments import (_wait, started_tick_group,  # (registers the "tick" stage)
                                    toy_sft_dataset)


def test_a_cancel_during_the_last_run_ends_the_group_cancelled(store):
    jobs = JobManager(store)
    try:
        # one run of one step that sleeps after its last progress: the cancel comes while
        # it finishes its work, which it then completes
        group_id, exp_id = started_tick_group(jobs, store, "only", steps=1, delay=3.0)
        assert runner.cancel_group(jobs, store, group_id)
        view = runner.group_view(store, group_id)
        assert view["group"]["cancelling"] is True          # at once, before it stops
        assert [g["cancelling"] for g in runner.list_groups(store)] == [True]
        child = store.group_runs(group_id)[0]
        assert store.get_run(child["id"])["cancel_requested"]   # the child says so too
        assert jobs.wait(exp_id, 30) == "cancelled"
        assert store.get_group(group_id)["status"] == "cancelled"   # was "succeeded"
        assert store.get_run(child["id"])["status"] == "succeeded"  # its work is kept
        assert runner.group_view(store, group_id)["group"]["cancelling"] is False
        # a resume only writes the summary: nothing is run again
        runner.resume_group(jobs, store, group_id)
        assert jobs.wait(exp_id, 30) == "succeeded"
        assert store.get_group(group_id)["status"] == "succeeded"
        assert [r["id"] for r in store.group_runs(group_id)] == [child["id"]]
    finally:
        jobs.shutdown()


def test_the_page_shows_cancelling_at_once_and_disables_the_button(store, tiny_model_dir):
    jobs = get_manager(store)   # the app's own job manager (same database)
    group_id, exp_id = started_tick_group(jobs, store, "slow", steps=3, delay=2.0)
    at = app_with_model(tiny_model_dir, "views/experiments.py")
    assert not at.exception
    assert not at.button(key=f"exp_cancel_{group_id}").disabled
    at.button(key=f"exp_cancel_{group_id}").click().run()
    assert not at.exception
    try:
        # the run sleeps in its step: the page has not waited for it to stop
        assert store.get_run(exp_id)["status"] == "running"
        assert at.button(key=f"exp_cancel_{group_id}").disabled
        assert any("cancelling" in m.value for m in at.markdown), [m.value for m in at.markdown]
        assert any("cancelling" in p.proto.text for p in at.get("progress"))
        listed = [df.value for df in at.dataframe if "kind" in df.value.columns]
        assert listed and listed[0]["status"].tolist() == ["cancelling…"]
        runs = [df.value for df in at.dataframe if "stage" in df.value.columns][0]
        assert runs["status"].tolist() == ["cancelling…"]     # its run in flight too
    finally:
        assert jobs.wait(exp_id, 30) == "cancelled"
    at.run()
    assert store.get_group(group_id)["status"] == "cancelled"
    assert at.button(key=f"exp_resume_{group_id}")


def test_a_group_just_started_is_the_one_opened(store, tiny_model_dir):
    toy_sft_dataset(store)
    base = {"model": str(tiny_model_dir), "dataset": "toy", "max_steps": 1,
            "batch_size": 2, "eval_every": 0, "save_every": 0, "eval_samples": 0}
    first = runner.create_sweep(store, "sft", base, {"learning_rate": [1e-3, 2e-3]},
                                name="older")
    other = runner.create_sweep(store, "sft", base, {"learning_rate": [1e-3, 3e-3]},
                                name="picked")
    at = app_with_model(tiny_model_dir, "views/experiments.py")
    at.selectbox(key="exp_pick").set_value(first).run()      # a person looks at #1
    assert at.selectbox(key="exp_pick").value == first and other > first
    at.selectbox(key="exp_stage").set_value("sft").run()
    at.selectbox(key="exp_f1_sft").set_value("learning_rate").run()
    at.text_input(key="exp_v1_sft_learning_rate").set_value("1e-3,4e-3").run()
    at.button(key="exp_start_sweep").click().run()
    assert not at.exception
    new = runner.list_groups(store)[0]["id"]
    try:
        assert new > other
        assert any(f"#{new}" in s.value and "open in the Groups tab" in s.value
                   for s in at.success)
        assert at.selectbox(key="exp_pick").value == new       # was: still #1
    finally:
        runner.cancel_group(get_manager(store), store, new)
        exp = store.get_group(new)["run_id"]
        get_manager(store).wait(exp, 60)


def test_a_run_not_yet_counting_steps_says_what_it_does(store, tiny_model_dir):
    jobs = get_manager(store)   # made first: it would mark the hand-made runs interrupted
    assert jobs is not None
    group_id = store.create_group("sweep", {"plan": [
        PlannedRun("a", "tick", {}, label="value=1").to_dict(),
        PlannedRun("b", "tick", {}, label="value=2").to_dict()]}, stage="tick")
    exp = store.create_run("experiment", {"group_id": group_id}, name="sweep")
    store.claim_run(exp)
    store.update_group(group_id, status="running", run_id=exp)
    child = store.create_run("tick", {}, name="sweep · value=1", group_id=group_id,
                             group_key="a")
    store.claim_run(child)   # no step counted yet: total_steps unknown
    store.update_run(child, message="loading the model")
    try:
        at = app_with_model(tiny_model_dir, "views/experiments.py")
        assert not at.exception
        texts = [p.proto.text for p in at.get("progress")]
        assert any("running value=1: loading the model" in x for x in texts), texts
        assert not any("?" in x for x in texts), texts
        runs = [df.value for df in at.dataframe if "stage" in df.value.columns][0]
        assert runs["id"].tolist() == [f"#{child}", "—"]          # not "None"
        assert runs["steps"].tolist() == ["—", "—"]
        assert "None" not in runs.to_string()
    finally:
        store.finish_run(child, "cancelled")
        store.finish_run(exp, "cancelled")


def test_no_internal_names_in_a_group_view():
    from ui.i18n import catalogue

    # every stage a run group can hold (sweeps: the training stages; the recipes' plans)
    from engine.runtime import stages

    held = set(stages.training_stages())
    for recipe in recipes().values():
        held |= {p.stage for p in recipe.plan(recipe.make_settings(None))}
    for lang in ("en", "fr"):
        known = catalogue(lang)
        missing = [s for s in held if f"experiments.stage_{s}" not in known
                   and f"runs.stage_{s}" not in known]
        assert not missing, (lang, missing)      # was: gold_pairs
    # the experiment run's own summary is ids, not a result: no key metric
    assert R.key_metric({"stage": "experiment", "summary": {"group_id": 3, "runs": 2,
                                                            "run_ids": {"a": 4}}}) == (None, None)


@pytest.fixture(autouse=True)
def _fresh_caches():
    import streamlit as st

    st.cache_data.clear()
    yield
    st.cache_data.clear()
