"""Issue 25, items 2 and 8: a sweep from the Experiments page carries every setting of
the stage page (the SFT run it starts from and the reward model included), shows them, and
its summary names the runs used; the run name and the custom-sweep form survive a page
switch."""
from __future__ import annotations

import pytest

from engine.experiments import runner
from engine.runtime.jobs import get_manager
from tests.conftest import app_with_model
from tests.test_experiments import toy_sft_dataset


def _finished(store, stage: str, name: str) -> int:
    run = store.create_run(stage, {"model": "embedded"}, name=name)
    store.finish_run(run, "succeeded", summary={})
    return run


def test_page_settings_name_the_runs_a_sweep_uses(store):
    sft = _finished(store, "sft", "sft-tiny")
    rm = _finished(store, "reward", "rm-tiny")
    items = {i["name"]: i for i in runner.page_settings(
        store, "ppo", {"sft_run": sft, "reward_run": rm, "dataset": "sample-preferences"})}
    assert items["sft_run"]["runs"] == [{"id": sft, "name": "sft-tiny"}]
    assert items["reward_run"]["runs"] == [{"id": rm, "name": "rm-tiny"}]
    assert items["dataset"]["value"] == "sample-preferences" and "model" not in items
    none = {i["name"]: i for i in runner.page_settings(store, "ppo", {})}
    assert none["sft_run"]["runs"] == [] and none["builtin_reward"]["value"] == "ends_with_period"
    store.delete_run(rm)
    gone = {i["name"]: i for i in runner.page_settings(store, "ppo", {"reward_run": rm})}
    assert gone["reward_run"]["runs"] == [{"id": rm, "name": None}]
    assert runner._parents({"sft_run": sft, "reward_runs": [rm, 9], "steps": 3}) == \
        sorted([sft, rm, 9])


def test_a_sweep_starts_from_the_runs_chosen_on_the_stage_page(store, tiny_model_dir):
    toy_sft_dataset(store, "prompts")   # the PPO page needs a dataset to offer a run
    sft = _finished(store, "sft", "sft-tiny")
    rm = _finished(store, "reward", "rm-tiny")
    at = app_with_model(tiny_model_dir, "views/ppo.py")
    assert not at.exception
    # the PPO page's own defaults: the newest SFT run and the newest reward model
    chosen = at.session_state["page.ppo"]
    assert (chosen["sft_run"], chosen["reward_run"], chosen["dataset"]) == (sft, rm, "prompts")
    at.switch_page("views/experiments.py").run()
    at.selectbox(key="exp_stage").set_value("ppo").run()
    assert not at.exception
    shown = [i.value for i in at.info if "From the PPO page" in i.value]
    assert shown and f"Start from: #{sft} sft-tiny" in shown[0], [i.value for i in at.info]
    assert f"Reward-model run: #{rm} rm-tiny" in shown[0]
    at.selectbox(key="exp_f1_ppo").set_value("cliprange").run()
    at.text_input(key="exp_v1_ppo_cliprange").set_value("0.1,0.2").run()
    at.button(key="exp_start_sweep").click().run()
    assert not at.exception
    group = runner.list_groups(store)[0]
    jobs = get_manager(store)
    try:
        base = group["config"]["base"]
        assert (base["sft_run"], base["reward_run"]) == (sft, rm)   # was: None, None
        for planned in group["config"]["plan"]:
            assert (planned["config"]["sft_run"], planned["config"]["reward_run"]) == (sft, rm)
    finally:
        runner.cancel_group(jobs, store, group["id"])
        jobs.wait(store.get_group(group["id"])["run_id"], 60)
    at.run()
    used = [c.value for c in at.caption if c.value.startswith("The runs used")]
    assert used and f"#{sft} sft-tiny" in used[0] and f"#{rm} rm-tiny" in used[0], used


def test_a_sweep_without_the_stage_page_says_its_defaults(store, tiny_model_dir):
    at = app_with_model(tiny_model_dir, "views/experiments.py")
    at.selectbox(key="exp_stage").set_value("ppo").run()
    shown = [i.value for i in at.info if "was not opened" in i.value]
    assert shown and "Start from: none (the base model)" in shown[0], [i.value for i in at.info]
    assert "Reward-model run: none (the built-in rule)" in shown[0]


def test_the_run_name_and_the_sweep_form_survive_a_page_switch(store, tiny_model_dir):
    at = app_with_model(tiny_model_dir, "views/sft.py")
    at.text_input(key="form.sft.run_name").set_value("my-sft").run()
    at.switch_page("views/experiments.py").run()
    at.selectbox(key="exp_stage").set_value("ppo").run()
    at.selectbox(key="exp_f1_ppo").set_value("cliprange").run()
    at.text_input(key="exp_v1_ppo_cliprange").set_value("0.1,0.2").run()
    at.selectbox(key="exp_f2_ppo").set_value("beta").run()
    at.text_input(key="exp_v2_ppo_beta").set_value("0,0.05").run()
    at.text_area(key="exp_overrides_ppo").set_value("max_steps=2").run()
    at.text_input(key="exp_sweep_name").set_value("clip × beta").run()
    at.switch_page("views/data.py").run()
    at.switch_page("views/sft.py").run()
    assert not at.exception
    assert at.text_input(key="form.sft.run_name").value == "my-sft"      # was: empty
    at.switch_page("views/experiments.py").run()
    assert not at.exception
    assert at.selectbox(key="exp_stage").value == "ppo"
    assert at.selectbox(key="exp_f1_ppo").value == "cliprange"
    assert at.text_input(key="exp_v1_ppo_cliprange").value == "0.1,0.2"
    assert at.selectbox(key="exp_f2_ppo").value == "beta"
    assert at.text_input(key="exp_v2_ppo_beta").value == "0,0.05"
    assert at.text_area(key="exp_overrides_ppo").value == "max_steps=2"
    assert at.text_input(key="exp_sweep_name").value == "clip × beta"
    assert any("4 runs" in c.value for c in at.caption), [c.value for c in at.caption]


@pytest.fixture(autouse=True)
def _fresh_caches():
    import streamlit as st

    st.cache_data.clear()
    yield
    st.cache_data.clear()
