"""The Compare page (issue 25, item 14): answers are shown as the text the model wrote,
not rendered as Markdown (a stray "2. **" became a list and bold), methods by their stage's
name, and a negative KL comes with the line that says why it can be."""
import streamlit as st
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

ANSWER = "Steps:\n1. Boil water\n2. **"


def compare_page(store, kl: float, lang: str = "en") -> AppTest:
    cid = store.create_comparison("demo", {"prompts": ["How to make tea?"],
                                           "labels": {"base": "base", "3": "reward#3"}})
    store.add_comparison_outputs(cid, [
        {"prompt_index": 0, "prompt": "How to make *tea*?", "model": m, "response": ANSWER,
         "reward": 0.5, "kl": kl if m != "base" else 0.0, "length": 9}
        for m in ("base", "ppo#3")])
    st.cache_resource.clear()
    at = AppTest.from_file(str(ROOT / "views" / "compare.py"), default_timeout=60)
    at.session_state["lang"] = lang
    return at.run()


def test_answers_and_prompts_are_shown_as_text(store):
    at = compare_page(store, kl=0.01)
    assert not at.exception, at.exception
    texts = [x.value for x in at.text]
    assert texts.count(ANSWER) >= 2  # both columns (and the blind vote's answers)
    assert "How to make *tea*?" in texts
    assert not any("2. **" in m.value for m in at.markdown)
    assert not any("KL" in c.value and "below 0" in c.value for c in at.caption)


def test_a_negative_kl_is_explained(store):
    at = compare_page(store, kl=-0.0153)
    captions = " ".join(c.value for c in at.caption)
    assert "KL −0.0153" in captions or "KL -0.0153" in captions
    assert "A KL below 0 is possible here" in captions
    fr = " ".join(c.value for c in compare_page(store, kl=-0.0153, lang="fr").caption)
    assert "Un KL négatif est possible ici" in fr
