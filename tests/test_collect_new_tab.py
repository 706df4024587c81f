"""Collecting preferences (issue 25, item 12): a new tab offers the pair still waiting for
a vote whatever dataset its prompts came from (it came back only after picking that same
dataset again), and the prompt list shows a chat's turns, not only its last user turn."""
from engine import data
from engine.data import collect
from engine.runtime.jobs import get_manager
from tests.test_data_collect_page import HEADACHE, _page, _prompt_box, fresh_resources  # noqa: F401


def test_a_new_tab_offers_a_pair_whose_prompts_are_not_the_default_dataset(
        store, tiny_model_dir, fresh_resources):  # noqa: F811
    data.ensure_sample_datasets(store)
    first = _page(tiny_model_dir).run()
    default = first.selectbox(key="collect_prompt_ds").value
    first.selectbox(key="collect_prompt_ds").set_value("sample-sft").run()
    assert default != "sample-sft"
    first.button(key="collect_sample").click().run()
    rid = first.session_state["collect_run"]
    del first  # the tab is closed while the two answers are sampled
    assert get_manager(store).wait(rid, 120) == "succeeded", store.get_run(rid)["error"]

    second = _page(tiny_model_dir).run()
    assert not second.exception, second.exception
    assert second.selectbox(key="collect_prompt_ds").value == "sample-sft"
    assert second.session_state["collect_run"] == rid
    pair = collect.get_pair(store, rid)
    assert pair["a"] in [x.value for x in second.text]
    # the person's own choice of dataset afterwards is theirs: no pull back
    second.selectbox(key="collect_prompt_ds").set_value(default).run()
    assert second.selectbox(key="collect_prompt_ds").value == default


def test_the_prompt_list_shows_a_chats_first_and_last_turns(store, fresh_resources):  # noqa: F811
    store.create_dataset("hh", "preference")
    store.add_rows("hh", [{"prompt": HEADACHE, "chosen": "No.", "rejected": "Yes."}])
    at = _page()
    at.session_state["collect_prompt_ds"] = "hh"
    at.run()
    assert not at.exception, at.exception
    option = _prompt_box(at).options[0]
    assert option.startswith("1. User: I have a headache.")
    assert option.endswith("Can I take 10 paracetamol at once?")
    assert " … " in option or "Assistant:" in option
