"""Issue 25, item 1: an AI judge that agrees with people on 4 pairs out of 4 must not get a
zero-width interval of κ (Wilson's interval of the agreement carried to κ, worked out by
hand here), and a judge whose two orders disagree on most pairs (it picks the answer shown
first) is called position-driven by the engine, in words the page shows above the numbers."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine.feedback import agreement as A
from engine.objectives import LATEX, kappa_interval, wilson_interval
from tests.conftest import ROOT


def test_wilson_interval_by_hand():
    # 4 of 4: z² = 3.841459; 1 + z²/n = 1.960365; centre = (1 + 0.480182) / 1.960365 = 0.755059
    # half = (1.959964 / 1.960365) · sqrt(0 + 3.841459 / 64) = 0.999796 · 0.244996 = 0.244946
    low, high = wilson_interval(4, 4)
    assert low == pytest.approx(0.510113, abs=1e-5) and high == pytest.approx(1.0)
    # 7 of 10: centre = (0.7 + 0.192073) / 1.384146 = 0.644493;
    # half = 1.416009 · sqrt(0.021 + 0.009604) = 0.247719
    low, high = wilson_interval(7, 10)
    assert low == pytest.approx(0.396774, abs=1e-5)
    assert high == pytest.approx(0.892212, abs=1e-5)
    assert wilson_interval(0, 0) is None
    assert "z^2" in LATEX["wilson_interval"] and "p_e" in LATEX["kappa_interval"]


def test_kappa_interval_carries_the_agreement_through_cohens_formula():
    # p_e = 0.5: κ = (p − 0.5) / 0.5 = 2p − 1 at each end
    assert kappa_interval(0.510113, 1.0, 0.5) == (pytest.approx(0.020226), pytest.approx(1.0))
    # p_e = 0.42: κ(0.39677) = (0.39677 − 0.42) / 0.58 = −0.040052; κ(0.89221) = 0.814155
    low, high = kappa_interval(0.396774, 0.892212, 0.42)
    assert low == pytest.approx(-0.040045, abs=1e-5) and high == pytest.approx(0.814159, abs=1e-5)
    # p_e = 0.9: (0 − 0.9) / 0.1 = −9 and (0.1 − 0.9) / 0.1 = −8, both clipped to −1
    assert kappa_interval(0.0, 0.1, 0.9) == (-1.0, -1.0)
    assert kappa_interval(0.5, 1.0, 1.0) is None


def test_four_pairs_in_agreement_give_a_wide_interval_not_a_point():
    # the case: κ = 1.00 on 4 pairs (2 "first", 2 "second" on both sides: p_e = 0.5)
    res = A.kappa([("first", "first"), ("second", "second")] * 2)
    assert res["kappa"] == pytest.approx(1.0) and res["se"] == pytest.approx(0.0)
    assert res["ci_low"] == pytest.approx(0.020226, abs=1e-5)   # was 1.00: zero width
    assert res["ci_high"] == pytest.approx(1.0)
    # more pairs, the same agreement: the interval narrows
    more = A.kappa([("first", "first"), ("second", "second")] * 50)
    assert res["ci_low"] < more["ci_low"] < 1.0


def _ai_row(prompt: str, x: str, y: str, p1: float, p2: float) -> dict:
    """A compare job's row: P(x better) asked x first (p1) and asked x second (p2)."""
    p = (p1 + p2) / 2
    agree = (p1 > 0.5) == (p2 > 0.5)
    chosen, rejected = (x, y) if p >= 0.5 else (y, x)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected,
            "meta": {"order_agreement": agree, "p_first": p1, "p_second": p2,
                     "confidence": round(max(p, 1 - p), 4), "tie": False}}


def _position_judge(store) -> None:
    """Four pairs people voted on, and a judge that always prefers the answer shown first
    (0.95 either way), whose averaged labels happen to match people's by half a percent."""
    words = ["apples", "rivers", "trains", "clouds"]
    good = {w: f"{w.title()} are nice." for w in words}
    bad = {w: f"I do not know anything about {w} at all." for w in words}
    store.create_dataset("votes", "preference")
    for i, w in enumerate(words):
        store.add_rows("votes", [{"prompt": f"Name something about {w}.", "chosen": good[w],
                                  "rejected": bad[w],
                                  "meta": {"origin": "human", "choice": "a",
                                           "pair_sample_run": 50 + i}}],
                       source=f"pair_sample#{50 + i}")
    store.create_dataset("ai-votes", "preference")
    store.add_rows("ai-votes", [_ai_row(f"Name something about {w}.", good[w], bad[w],
                                        0.96, 0.05) for w in words], source="ai")
    run = store.create_run("ai_feedback", {"dataset": "ai-votes", "prompts": "votes",
                                           "mode": "compare"}, name="judge")
    store.finish_run(run, "succeeded", summary={"mode": "compare", "dataset": "ai-votes",
                                                "pairs_made": 4, "skipped": [],
                                                "order_agreement": 0.0,
                                                "position_driven": True})


def test_the_engine_calls_a_position_driven_judge_so(store):
    _position_judge(store)
    res = A.agreement(store, "ai-votes")
    assert res["matched"] == 4 and res["percent"] == 100.0
    assert res["position"] == {"judged": 4, "orders_disagree": 4, "first_shown": 4,
                               "second_shown": 0, "share": 1.0, "driven": True}
    honest = A.compare_labels(
        [A.Label(("p", "a", "b"), "first", "ai", orders_agree=True, shown=("first", "second"))],
        [A.Label(("p", "a", "b"), "first", "vote")])
    assert honest["position"]["driven"] is False and honest["position"]["share"] == 0.0
    # half the pairs is not "most": not called position-driven
    half = A.position_bias([A.Label(("p", "a", str(i)), "first", "ai", orders_agree=bool(i % 2))
                            for i in range(4)])
    assert half["share"] == 0.5 and half["driven"] is False


@pytest.mark.parametrize("lang, warn, interval, job", [
    ("en", "Position decides these labels", "95% interval of κ: 0.02 to 1.00",
     "disagreed on 100% of pairs"),
    ("fr", "C'est la position qui décide", "Intervalle à 95 % de κ : de 0.02 à 1.00",
     "se contredisent sur 100%")])
def test_the_page_warns_above_the_agreement(store, lang, warn, interval, job):
    import streamlit as st

    from ui.i18n import t

    st.cache_data.clear()
    _position_judge(store)
    at = AppTest.from_file(str(ROOT / "views" / "data.py"), default_timeout=90)
    at.session_state["lang"] = lang
    at.run()
    assert not at.exception, at.exception
    warnings = [w.value for w in at.warning]
    assert any(warn in w and "4" in w for w in warnings), warnings
    assert any(job in w for w in warnings), warnings     # the job's report says it too
    assert any(interval in c.value for c in at.caption), [c.value for c in at.caption]
    assert not [s.value for s in at.success if "every pair" in s.value or
                "toutes les paires" in s.value]          # no green "they agree" any more
    # above the agreement: the warning comes before the κ metric in the page's order
    order = list(_walk(at.main))
    first_warning = next(i for i, node in enumerate(order)
                         if type(node).__name__ == "Warning" and warn in node.value)
    kappa_metric = next(i for i, node in enumerate(order)
                        if type(node).__name__ == "Metric" and node.label == t("feedback.kappa", lang=lang))
    assert first_warning < kappa_metric
    st.cache_data.clear()


def _walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)
