"""The reward page's tester (issue 25, item 9): its example is real text that "Score and
rank" scores as it is (a grey placeholder looked filled in, and pressing the button then
said "Write a prompt and at least one answer"); it follows the language until edited."""
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from ui.i18n import t


def reward_page(store, lang="en") -> AppTest:
    run = store.create_run("reward", {}, name="rm-done")
    store.update_run(run, status="succeeded")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.session_state["lang"] = lang
    at.run()
    return at.switch_page("views/reward.py").run()


def test_the_example_is_scored_as_it_stands(store):
    at = reward_page(store)
    assert not at.exception
    assert at.text_area(key="reward_tester_prompt").value == "How do I make a cup of tea?"
    assert at.text_area(key="reward_tester_answers").value.count("\n") == 2
    at.button(key="reward_tester_go").click().run()
    assert not [w for w in at.warning if w.value == t("reward.tester_need", "en")]
    job = at.session_state["reward_tester_job"]
    cfg = store.get_run(job)["config"]
    assert cfg["prompt"] == "How do I make a cup of tea?" and len(cfg["responses"]) == 3


def test_the_example_follows_the_language_until_edited(store):
    at = reward_page(store)
    at.session_state["lang"] = "fr"
    at.run()
    assert at.text_area(key="reward_tester_prompt").value == \
        "Comment préparer une tasse de thé ?"
    at.text_area(key="reward_tester_prompt").set_value("Mon prompt").run()
    at.session_state["lang"] = "en"
    at.run()
    assert at.text_area(key="reward_tester_prompt").value == "Mon prompt"
