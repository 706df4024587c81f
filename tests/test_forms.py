"""The new-run forms drawn from the settings schema (ui/forms.py): values that stay,
no run started by typing, a double start refused, the schema's message shown."""
from __future__ import annotations

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from ui.forms import field_key


@pytest.fixture
def app(store):
    st.cache_resource.clear()  # each test its own database and job manager
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    yield at
    st.cache_resource.clear()


def test_form_values_survive_leaving_the_page_and_a_language_switch(app, store):
    at = app
    at.switch_page("views/sft.py").run()
    assert not at.exception, at.exception
    at.number_input(key=field_key("sft", "max_steps")).set_value(7).run()
    at.number_input(key=field_key("sft", "epochs")).set_value(3.0).run()
    at.switch_page("views/data.py").run()
    at.switch_page("views/sft.py").run()
    assert at.number_input(key=field_key("sft", "max_steps")).value == 7
    assert at.number_input(key=field_key("sft", "epochs")).value == 3.0
    at.session_state["lang"] = "fr"  # what the sidebar's language box sets
    at.run()
    assert not at.exception, at.exception
    assert at.number_input(key=field_key("sft", "max_steps", "fr")).value == 7
    assert at.number_input(key=field_key("sft", "epochs", "fr")).value == 3.0
    at.switch_page("views/home.py")
    at.run()
    assert at.query_params["lang"] == "fr"  # the address keeps the language for a reload
    reloaded = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    reloaded.query_params["lang"] = "fr"  # a reload: a new session, the same address
    reloaded.run()
    from ui.i18n import t

    assert reloaded.title[0].value.endswith(t("home.title", lang="fr"))


def test_typing_starts_nothing_and_a_double_start_is_refused(app, store):
    at = app
    at.switch_page("views/sft.py").run()
    # every field changed (what Enter in a field does: commit the value, rerun the page)
    at.number_input(key=field_key("sft", "max_steps")).set_value(1).run()
    at.number_input(key=field_key("sft", "batch_size")).set_value(2).run()
    at.text_input(key="form.sft.run_name").set_value("typed").run()
    assert store.list_runs() == []
    at.button(key="start.sft").click().run()
    assert len(store.list_runs(stage="sft")) == 1
    at.button(key="start.sft").click().run()  # the same settings again, at once
    assert len(store.list_runs(stage="sft")) == 1
    assert at.warning and "#" in at.warning[0].value
    from engine.runtime.jobs import get_manager

    run_id = store.list_runs(stage="sft")[0]["id"]
    get_manager(store).cancel(run_id)
    get_manager(store).wait(run_id, 120)


def test_the_schema_message_is_shown_and_the_start_button_disabled(app, store):
    at = app
    at.switch_page("views/ppo.py").run()
    at.number_input(key=field_key("ppo", "batch_size")).set_value(6).run()
    at.expander[0]  # the advanced settings exist
    at.number_input(key=field_key("ppo", "minibatches")).set_value(4).run()
    assert not at.exception, at.exception
    assert any("minibatches" in e.value for e in at.error)
    assert at.button(key="start.ppo").disabled
    at.number_input(key=field_key("ppo", "minibatches")).set_value(3).run()
    assert not at.error and not at.button(key="start.ppo").disabled
