"""The Data page's AI feedback tab (ui/feedback.py) in AppTest: it renders in English and
French, a template without one of its placeholders is refused naming it, a compare job with
the tiny model as judge makes pairs that show in the dataset's source stats, and agreement
with people shows where they voted on the same pairs."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine.feedback import agreement as A
from engine.feedback import templates as tpl
from engine.runtime.jobs import get_manager
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def fresh_caches():
    """Streamlit's caches outlive an AppTest (each test has its own database); t() outside
    a run goes back to English."""
    import streamlit as st

    import ui.i18n

    caches = (st.cache_resource, st.cache_data)
    for cache in caches:
        cache.clear()
    yield
    for cache in caches:
        cache.clear()
    ui.i18n._last_language = ui.i18n.DEFAULT


def _page(lang: str = "en", model_dir=None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "views" / "data.py"), default_timeout=90)
    at.session_state["lang"] = lang
    if model_dir is not None:
        at.session_state["model_spec"] = str(model_dir)
    return at


def _texts(at) -> list[str]:
    return [e.value for kind in (at.caption, at.markdown, at.info, at.error, at.success)
            for e in kind]


@pytest.mark.parametrize("lang, start, constitution", [
    ("en", "Start the AI feedback job", "helpful-safe-en"),
    ("fr", "Lancer la tâche de retour d'IA", "helpful-safe-fr")])
def test_the_section_renders_in_both_languages(store, lang, start, constitution):
    at = _page(lang).run()
    assert not at.exception, at.exception
    assert at.button(key="start.ai_feedback").label == start
    assert at.session_state["fb_constitution"] == constitution   # the page's language
    principles = at.text_area(key=f"fb_principles_{constitution}_1").value
    assert principles.count("\n") >= 2
    assert at.text_area(key="fb_template_compare").value == tpl.DEFAULTS["compare"]
    no_ai = "No AI-labelled dataset yet" if lang == "en" else "Aucun jeu étiqueté"
    assert any(no_ai in x for x in _texts(at))


def test_a_missing_placeholder_is_named_and_blocks_the_start(store):
    at = _page().run()
    compare = at.text_area(key="fb_template_compare").value
    at.text_area(key="fb_template_compare").input(compare.replace("{principle}", "the rule"))
    at.run()
    assert not at.exception, at.exception
    errors = [e.value for e in at.error]
    assert any("Comparison template: the placeholder {principle} is missing" in e
               for e in errors), errors
    assert at.button(key="start.ai_feedback").disabled
    # kept outside the widget's state (which leaving the page drops)
    assert "the rule" in at.session_state["fb_templates"]["compare"]
    at.text_area(key="fb_template_critique").input("Judge {prompt} by {principle}: {answer}")
    at.run()
    errors = [e.value for e in at.error]
    assert any("Critique template: the placeholder {response} is missing" in e for e in errors)
    at.button(key="fb_templates_reset").click().run()
    assert not at.error and not at.button(key="start.ai_feedback").disabled


def test_constitution_edit_saves_a_new_version(store):
    from engine.feedback import constitutions as C

    at = _page().run()
    key = "fb_principles_helpful-safe-en_1"
    at.text_area(key=key).input(at.text_area(key=key).value + "\nNever invent a source.")
    at.button(key="fb_save_constitution").click().run()
    assert not at.exception, at.exception
    assert C.get_constitution(store, "helpful-safe-en")["version"] == 2
    assert C.get_constitution(store, "helpful-safe-en")["principles"][-1] == \
        "Never invent a source."
    assert at.selectbox(key="fb_version_helpful-safe-en").value == 2
    assert any("Saved helpful-safe-en version 2" in s.value for s in at.success)


def _voted_pairs(store) -> list[dict]:
    """Pairs people voted on in the app (as engine.data.collect stores them)."""
    rows = [{"prompt": f"Name something about {w}.", "chosen": f"{w.title()} are nice.",
             "rejected": f"I do not know anything about {w} at all.",
             "meta": {"origin": "human", "choice": "a", "pair_sample_run": 50 + i}}
            for i, w in enumerate(["apples", "rivers", "trains", "clouds"])]
    store.create_dataset("votes", "preference")
    for row in rows:
        store.add_rows("votes", [row], source=f"pair_sample#{row['meta']['pair_sample_run']}")
    return rows


def test_a_compare_job_makes_pairs_with_sources_and_agreement(store, tiny_model_dir):
    _voted_pairs(store)
    at = _page(model_dir=tiny_model_dir)
    at.session_state["fb_prompts"] = "votes"              # judge the voted pairs themselves
    at.session_state["form.ai_feedback"] = {"limit": 4, "dataset": "ai-votes",
                                            "order_disagreement": "tie"}
    at.run()
    assert not at.exception, at.exception
    assert any("tiny-llama" in c.value for c in at.caption)   # the judge: the sidebar's model
    at.button(key="start.ai_feedback").click().run()
    assert not at.exception, at.exception
    rid = at.session_state["fb_run"]
    assert get_manager(store).wait(rid, 300) == "succeeded", store.get_run(rid)["error"]
    cfg = store.get_run(rid)["config"]
    assert cfg["judge"] == str(tiny_model_dir) and cfg["prompts"] == "votes"
    assert cfg["constitution"] == "helpful-safe-en" and cfg["constitution_version"] == 1

    at.session_state["dataset"] = "ai-votes"
    at.run()
    assert not at.exception, at.exception
    summary = store.get_run(rid)["summary"]
    assert summary["pairs_made"] == 4
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Pairs made"] == "4" and metrics["Rows skipped"] == "0"
    assert any(c.value == "Sources: AI: 4" for c in at.caption)
    rows_filter = at.multiselect(key="rows_sources_%d__en" % store.get_dataset("ai-votes")["id"])
    assert rows_filter.options == ["AI"]

    # people voted on these four pairs: the agreement the engine computes is on the page
    assert at.session_state["fb_agree_reference_ai-votes"] == "votes"   # the judged pairs
    expected = A.agreement(store, "ai-votes", reference="votes")
    assert expected["matched"] == 4
    assert A.agreement(store, "ai-votes")["percent"] == expected["percent"]  # votes alone
    assert metrics["Pairs with both labels"] == "4"
    assert metrics["Agreement"] == f"{expected['percent']:.0f}%"
    kappa = expected["kappa"]
    assert metrics["Cohen's κ"] == ("—" if kappa is None else f"{kappa:.2f}")
    if expected["disagreements"]:
        assert any(f"disagree: {len(expected['disagreements'])}" in m.value
                   for m in at.markdown)
    else:
        assert any("agree on every pair" in s.value for s in at.success)

    # the same views in French
    at.session_state["lang"] = "fr"
    at.run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Paires produites"] == "4" and metrics["Accord"] == f"{expected['percent']:.0f}%"
    assert any(c.value == "Sources : IA : 4" for c in at.caption)


def test_a_stopped_job_shows_the_pairs_it_kept_and_can_resume(store):
    rid = store.create_run("ai_feedback", {"mode": "compare", "dataset": "ai-x",
                                           "prompts": "sample-sft"}, status="cancelled")
    store.create_dataset("ai-x", "preference")
    store.add_rows("ai-x", [{"prompt": f"Q{i}?", "chosen": f"A{i}.", "rejected": f"B{i}!",
                             "meta": {"job_run": rid if i < 3 else rid + 1}}
                            for i in range(5)], source="ai")
    at = _page().run()
    assert not at.exception, at.exception
    assert any(c.value.startswith("3 pairs stored in ai-x before the job stopped")
               for c in at.caption)
    assert at.button(key=f"resume-{rid}").label == "Resume"
