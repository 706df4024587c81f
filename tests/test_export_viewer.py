"""The Export page (issue 25, item 11): a new export is the one the viewer shows (it kept
showing the previous one), the intro names every stage it lists, and runs are named by
their stage's name ("Reward model", not "REWARD")."""
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.export import ExportConfig
from engine.runtime.jobs import get_manager, run_sync
from tests.conftest import ROOT, make_adapter_run
from ui.common import widget_key


def export_page(lang: str = "en") -> AppTest:
    st.cache_resource.clear()  # the page's store must be this test's database
    at = AppTest.from_file(str(ROOT / "views" / "export.py"), default_timeout=90)
    at.session_state["lang"] = lang
    return at.run()


def test_a_new_export_is_the_one_shown(store, tiny_model_dir):
    rid = make_adapter_run(store, tiny_model_dir)
    first = run_sync(store, "export", ExportConfig(model=str(tiny_model_dir), run_id=rid,
                                                   out_dir="first"), parents=[rid])
    at = export_page()
    assert not at.exception
    assert at.selectbox(key=widget_key("export_pick")).value == first["id"]
    at.text_input(key="export_out").set_value("second").run()
    at.button(key="export_start").click().run()
    job = at.session_state["export_job"]
    assert get_manager(store).wait(job, 120) == "succeeded", store.get_run(job)["error"]
    at.run()
    assert not at.exception
    assert at.selectbox(key=widget_key("export_pick")).value == job
    assert any("second/adapter" in m.value for m in at.markdown)  # the viewer shows it
    # picking the older one again is kept on the next run
    at.selectbox(key=widget_key("export_pick")).set_value(first["id"]).run()
    at.run()
    assert at.selectbox(key=widget_key("export_pick")).value == first["id"]


def test_the_intro_and_the_run_list_name_every_stage_in_words(store, tiny_model_dir):
    make_adapter_run(store, tiny_model_dir, stage="reward")
    make_adapter_run(store, tiny_model_dir, stage="dpo")
    at = export_page()
    intro = at.caption[0].value
    assert "SFT, Reward model, PPO, DPO or GRPO" in intro
    options = at.selectbox(key=widget_key("export_run")).options
    assert any(o.startswith("Reward model · #") for o in options), options
    assert not any("REWARD" in o for o in options)
    at = export_page("fr")
    assert "SFT, Modèle de récompense, PPO, DPO ou GRPO" in at.caption[0].value
