"""The Data page's preference collection across datasets and sessions, and chat prompts
shown as turns (not JSON) in its tables and its vote view."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.proto.WidgetStates_pb2 import WidgetState
from streamlit.testing.v1 import AppTest

from engine import data
from engine.data import collect
from engine.data.records import conversation_from_text, conversation_text
from engine.runtime.jobs import get_manager
from tests.conftest import ROOT
from ui.common import widget_key

FIX = Path(__file__).resolve().parent / "fixtures"
HEADACHE = [{"role": "user", "content": "I have a headache."},
            {"role": "assistant", "content": "I'm sorry to hear that. How long has it lasted?"},
            {"role": "user", "content": "Two days. Can I take 10 paracetamol at once?"}]


@pytest.fixture
def fresh_resources():
    import streamlit as st

    st.cache_resource.clear()
    st.cache_data.clear()
    yield
    st.cache_resource.clear()
    st.cache_data.clear()


def _page(model_dir=None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "views" / "data.py"), default_timeout=60)
    if model_dir is not None:
        at.session_state["model_spec"] = str(model_dir)
        at.session_state["collect_max_new_tokens"] = 8
        at.session_state["collect_seed"] = 5
        at.session_state["collect_auto"] = False
    return at


def _prompt_box(at):
    (box,) = [s for s in at.selectbox if s.label == "Prompt"]
    return box


def _browser_keeps(box, label: str) -> None:
    """Make `box` send `label` back, as the browser does: it keeps the label it last showed
    for a widget id, until the script sets a new value."""
    class Kept(type(box)):
        @property
        def _widget_state(self):
            ws = WidgetState()
            ws.id = self.id
            ws.string_value = label
            return ws

    box.__class__ = Kept


# -- chat prompts as turns -----------------------------------------------------------------
def test_conversation_text_shows_turns_and_reads_them_back():
    assert conversation_text("Just text.") == "Just text."
    assert conversation_text(HEADACHE) == (
        "User: I have a headache.\nAssistant: I'm sorry to hear that. How long has it lasted?"
        "\nUser: Two days. Can I take 10 paracetamol at once?")
    fr = {"user": "Utilisateur", "assistant": "Assistant", "system": "Système"}
    chat = [{"role": "system", "content": "Sois bref."},
            {"role": "user", "content": "Deux lignes\net / une barre"}, *HEADACHE[1:]]
    text = conversation_text(chat, fr, " / ")
    assert text.startswith("Système: Sois bref. / Utilisateur: Deux lignes\net / une barre / ")
    assert "[{" not in text and '"role"' not in text
    assert conversation_from_text(text, fr, " / ") == chat
    assert conversation_from_text(conversation_text(chat), None) == chat  # English, newlines
    assert conversation_from_text("user: hi / ASSISTANT: yes", None, " / ") == \
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"}]
    assert conversation_from_text("Who wrote Germinal?") is None  # plain text stays text
    assert conversation_from_text(None) is None


def test_data_table_shows_chat_prompts_as_turns_and_saves_edits_of_them(store, fresh_resources):
    data.import_file(store, FIX / "hh.jsonl", kind="preference", dataset="hh")
    at = _page().run()
    at.selectbox(key=widget_key("dataset")).set_value("hh").run()
    assert not at.exception, at.exception
    (table,) = [d for d in at.dataframe if (d.key or "").startswith("editor-")]
    prompts = table.value["prompt"].tolist()
    assert prompts[0] == "User: Who wrote Les Misérables?"
    assert prompts[1] == ("User: I have a headache. / Assistant: I'm sorry to hear that. How "
                          "long has it lasted? / User: Two days. Can I take 10 paracetamol at once?")
    assert not any("[{" in p or '"role"' in p for p in prompts)

    # an edited chat prompt, written as turns, is stored as a chat again
    edited = prompts[1].replace("10 paracetamol", "two paracetamol")
    at.button(key="save_edits").click()
    states = at._tree.get_widget_states()
    editor = states.widgets.add()
    editor.id = table.proto.id
    editor.string_value = json.dumps({"edited_rows": {"1": {"prompt": edited}},
                                      "added_rows": [], "deleted_rows": []})
    at._run(states)
    assert not at.exception, at.exception
    row = store.list_rows("hh")[1]
    assert row["prompt"][:2] == HEADACHE[:2]
    assert row["prompt"][2] == {"role": "user",
                                "content": "Two days. Can I take two paracetamol at once?"}


def test_vote_view_shows_a_chat_prompt_as_turns_in_french(store, tiny_model_dir, fresh_resources):
    jobs = get_manager(store)
    rid = jobs.submit("pair_sample", collect.PairSampleConfig(
        model=str(tiny_model_dir), prompt=HEADACHE, max_new_tokens=8, seed=3))
    assert jobs.wait(rid, 120) == "succeeded", store.get_run(rid)["error"]
    at = _page(tiny_model_dir)
    at.session_state["lang"] = "fr"
    at.session_state["collect_origin"] = "typed"  # a typed prompt's pair (no dataset)
    at.run()
    assert not at.exception, at.exception
    texts = [x.value for x in at.text]
    assert conversation_text(HEADACHE, {"user": "Utilisateur"}) in texts
    assert not any("[{" in x or "'role'" in x for x in texts)


# -- collecting on another dataset ---------------------------------------------------------
def test_switching_the_prompts_dataset_then_sampling(store, tiny_model_dir, fresh_resources):
    data.ensure_sample_datasets(store)
    other = [f"Name a colour, number {i}." for i in range(5)]
    store.create_dataset("zz-colours", "sft")
    store.add_rows("zz-colours", [{"prompt": p, "response": "Blue."} for p in other])
    at = _page(tiny_model_dir).run()
    assert at.selectbox(key="collect_prompt_ds").value == "sample-preferences"
    _prompt_box(at).set_value(2).run()
    before = _prompt_box(at)
    shown, shown_id = before.options[2], before.id
    at.selectbox(key="collect_prompt_ds").set_value("zz-colours").run()
    assert not at.exception, at.exception
    box = _prompt_box(at)
    assert box.options[0].endswith(other[0])
    if box.id == shown_id:  # the same widget: the browser still holds the label it showed
        _browser_keeps(box, shown)
    at.button(key="collect_sample").click().run()
    assert not at.exception, at.exception
    rid = at.session_state["collect_run"]
    run = store.get_run(rid)
    assert (run["config"]["prompt"], run["config"]["prompt_dataset"]) == (other[0], "zz-colours")
    # and back: each dataset keeps its own choice
    assert get_manager(store).wait(rid, 120) == "succeeded", run["error"]
    at.run()
    at.button(key="vote_tie").click().run()
    at.selectbox(key="collect_prompt_ds").set_value("sample-preferences").run()
    assert not at.exception, at.exception
    assert _prompt_box(at).value == 2


# -- a pair sampled in a closed session ----------------------------------------------------
def test_a_pair_sampled_in_a_closed_session_is_offered_until_voted(store, tiny_model_dir,
                                                                   fresh_resources):
    data.ensure_sample_datasets(store)
    first = _page(tiny_model_dir).run()
    first.button(key="collect_sample").click().run()
    assert not first.exception, first.exception
    rid = first.session_state["collect_run"]
    del first  # the tab is closed while the two answers are sampled
    assert get_manager(store).wait(rid, 120) == "succeeded", store.get_run(rid)["error"]
    # a pair of another model, and one still waiting for another dataset's prompts: not offered
    assert collect.pending_pair(store, "base", "embedded", "sample-preferences") is None
    assert collect.pending_pair(store, "base", str(tiny_model_dir), "sample-sft") is None
    assert collect.pending_pair(store, "base", str(tiny_model_dir), "sample-preferences") == rid

    second = _page(tiny_model_dir).run()
    assert not second.exception, second.exception
    assert second.session_state["collect_run"] == rid
    pair = collect.get_pair(store, rid)
    texts = [x.value for x in second.text]
    assert pair["a"] in texts and pair["b"] in texts
    assert second.button(key="collect_sample").disabled  # vote first
    assert any("waiting for a vote" in c.value for c in second.caption)
    # other prompts: the pair steps aside (still pending), and comes back with its prompts
    second.selectbox(key="collect_prompt_ds").set_value("sample-sft").run()
    assert "collect_run" not in second.session_state
    assert not second.button(key="collect_sample").disabled
    second.selectbox(key="collect_prompt_ds").set_value("sample-preferences").run()
    assert second.session_state["collect_run"] == rid
    second.button(key="vote_b").click().run()
    assert not second.exception, second.exception
    (row,) = store.list_rows("human-preferences")
    assert row["chosen"] == pair["b"] and row["meta"]["pair_sample_run"] == rid
    assert "collect_run" not in second.session_state  # not offered again here...
    assert not [x for x in second.text if x.value == pair["a"]]
    third = _page(tiny_model_dir).run()  # ...nor in a new session
    assert not third.exception, third.exception
    assert "collect_run" not in third.session_state
    assert collect.pending_pair(store, "base", str(tiny_model_dir), "sample-preferences") is None
