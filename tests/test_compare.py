"""Compare before/after, blind A/B votes: equations on hand numbers, a real comparison
job on the tiny model (base vs a real LoRA adapter), and the page through AppTest."""
from __future__ import annotations

import pytest
import torch
from streamlit.testing.v1 import AppTest

from engine.compare import (blind_items, distinct_1, distinct_2, distinct_n, hidden_order_swapped,
                            kl_to_reference, method_of, model_summary, pending_items, record_vote,
                            reward_preference, wilson_interval, win_rate)
from engine.inference.generate import SamplingConfig, generate_with_lengths
from engine.runtime.jobs import JobManager
from engine.inference.models import inference_cache
from tests.conftest import ROOT, make_adapter_run, make_reward_run
from ui.common import widget_key


# -- equations on hand-checked numbers ----------------------------------------------------
def test_distinct_n_on_hand_examples():
    texts = ["the cat sat", "the cat ran"]
    assert distinct_1(texts) == pytest.approx(4 / 6)   # the, cat, sat, ran of 6 words
    assert distinct_2(texts) == pytest.approx(3 / 4)   # (the cat) twice, (cat sat), (cat ran)
    assert distinct_n(["Hi, hi!"], 1) == pytest.approx(3 / 4)  # hi , hi ! (lower-cased)
    assert distinct_2(["same same same"]) == pytest.approx(1 / 2)
    assert distinct_2(["one", ""]) == 0.0                # no bigram at all
    assert distinct_1(["a b c", "d e"]) == 1.0


def test_kl_to_reference_is_mean_log_ratio():
    src = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.5, -1.0, -0.5])
    assert kl_to_reference(src, ref) == pytest.approx((0.5 - 1.0 + 0.0) / 3)
    assert kl_to_reference(torch.tensor([]), torch.tensor([])) == 0.0


def test_wilson_interval_on_known_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    low, high = wilson_interval(50, 100)
    assert (round(low, 4), round(high, 4)) == (0.4038, 0.5962)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def _vote(a, b, choice, ra=None, rb=None):
    return {"prompt": "p", "model_a": a, "model_b": b, "choice": choice,
            "reward_a": ra, "reward_b": rb}


def test_win_rate_counts_ties_half_in_either_display_order():
    votes = ([_vote("ppo#2", "base", "a")] * 4 + [_vote("base", "ppo#2", "b")] * 3
             + [_vote("ppo#2", "base", "b")] * 2 + [_vote("base", "ppo#2", "tie")]
             + [_vote("sft#1", "base", "a")] * 5)  # another pair: ignored
    wr = win_rate(votes, "ppo#2", "base")
    assert (wr["n"], wr["wins"], wr["losses"], wr["ties"]) == (10, 7, 2, 1)
    assert wr["rate"] == pytest.approx(0.75)
    # Wilson on 7.5 / 10: (0.75 + 0.19207/1 ... ) / 1.38415, checked by hand: 0.4422 .. 0.9191
    assert (round(wr["low"], 4), round(wr["high"], 4)) == (0.4422, 0.9191)
    back = win_rate(votes, "base", "ppo#2")
    assert back["rate"] == pytest.approx(0.25) and back["wins"] == 2


def test_reward_preference_and_agreement_with_people():
    votes = [_vote("x", "y", "a", 2.0, 1.0),    # reward prefers x, person x: agree
             _vote("y", "x", "b", 0.0, 1.0),    # reward prefers x (shown B), person B=x: agree
             _vote("x", "y", "b", 3.0, 1.0),    # reward x, person y: disagree
             _vote("x", "y", "tie", 1.0, 2.0),  # tie: not decisive; reward prefers y
             _vote("x", "y", "a")]              # no rewards: left out
    rp = reward_preference(votes, "x", "y")
    assert rp["n"] == 4 and rp["reward_rate"] == pytest.approx(3 / 4)
    assert rp["decisive"] == 3 and rp["agreement"] == pytest.approx(2 / 3)


def _outputs(models=("base", "sft#1"), n=6):
    return [{"prompt_index": i, "prompt": f"q{i}", "model": m, "response": f"{m} says {i}",
             "reward": float(i) + (0.5 if m != "base" else 0.0), "kl": 0.0, "length": 3}
            for m in models for i in range(n)]


def test_blind_order_is_hidden_deterministic_and_mixed():
    outputs = _outputs()
    items = blind_items(outputs, "base", "sft#1", comparison_id=7)
    assert items == blind_items(outputs, "sft#1", "base", comparison_id=7)  # pick order irrelevant
    firsts = {it["model_a"] for it in items}
    assert firsts == {"base", "sft#1"}  # both orders occur over 6 items
    for it in items:
        swapped = hidden_order_swapped(7, it["prompt_index"], "base", "sft#1")
        assert it["model_a"] == ("sft#1" if swapped else "base")
        assert it["response_a"].startswith(it["model_a"])  # the answer matches its model


def test_votes_store_real_names_and_pending_shrinks(store):
    cid = store.create_comparison("c", {})
    items = blind_items(_outputs(n=3), "base", "sft#1", comparison_id=cid)
    record_vote(store, items[0], "a", comparison_id=cid)
    record_vote(store, items[1], "tie", comparison_id=cid)
    votes = store.list_votes(cid)
    assert votes[0]["model_a"] == items[0]["model_a"] and votes[0]["choice"] == "a"
    assert votes[0]["reward_a"] == items[0]["reward_a"]
    assert pending_items(items, votes) == [items[2]]
    with pytest.raises(ValueError):
        record_vote(store, items[2], "maybe", comparison_id=cid)


def test_model_summary_per_model():
    rows = _outputs(n=4)
    summary = {s["model"]: s for s in model_summary(rows)}
    assert summary["base"]["mean_reward"] == pytest.approx(1.5)
    assert summary["sft#1"]["mean_reward"] == pytest.approx(2.0)
    # "base says 0".."base says 3": 12 words, unique: base, says, 0, 1, 2, 3
    assert summary["base"]["distinct_1"] == pytest.approx(6 / 12)
    assert summary["base"]["mean_length"] == 3
    # the method column: the stage that trained each source
    assert summary["base"]["method"] == "base" and summary["sft#1"]["method"] == "sft"
    assert [method_of(x) for x in ("dpo#4", "grpo#7", "ppo#2")] == ["dpo", "grpo", "ppo"]


# -- a real comparison job -------------------------------------------------------------------
def test_comparison_job_end_to_end_with_tiny_model(store, tiny_model_dir):
    rid = make_adapter_run(store, tiny_model_dir)
    prompts = ["Hello", "What is RLHF?", "Name a colour."]
    inference_cache.clear()
    jobs = JobManager(store)
    job = jobs.submit("compare", {"model": str(tiny_model_dir), "sources": ["base", rid],
                                  "prompts": prompts, "max_new_tokens": 8, "seed": 3,
                                  "name": "before-after", "capability_limit": 2})
    assert jobs.wait(job, 120) == "succeeded", store.get_run(job)["error"]
    summary = store.get_run(job)["summary"]
    cid = summary["comparison_id"]
    comparison = store.get_comparison(cid)
    assert comparison["name"] == "before-after" and comparison["run_id"] == job
    assert store.list_comparisons()[0]["id"] == cid  # reopened from the list
    outputs = store.get_comparison_outputs(cid)
    assert len(outputs) == 6 and {o["model"] for o in outputs} == {"base", f"sft#{rid}"}
    base_rows = [o for o in outputs if o["model"] == "base"]
    run_rows = [o for o in outputs if o["model"] == f"sft#{rid}"]
    assert all(o["kl"] == 0.0 for o in base_rows)
    assert all(o["kl"] is not None and o["kl"] != 0.0 for o in run_rows)
    # lengths are the generated tokens: never over max_new_tokens, as re-tokenising can be
    assert all(0 <= o["length"] <= 8 for o in outputs)
    # same seed and settings: the stored answers are what the app's generate gives
    cfg = SamplingConfig(max_new_tokens=8, seed=3)
    with inference_cache.use(store, rid) as (m, tok):
        again, lengths = generate_with_lengths(m, tok, prompts, cfg)
    assert [o["response"] for o in run_rows] == again
    assert [o["length"] for o in run_rows] == lengths
    assert {s["model"] for s in summary["per_model"]} == {"base", f"sft#{rid}"}
    # capability_limit=2: one English and one French question, answered by both models
    answers = store.get_capability_answers(cid)
    assert sorted((a["model"], a["lang"]) for a in answers) == [
        ("base", "en"), ("base", "fr"), (f"sft#{rid}", "en"), (f"sft#{rid}", "fr")]
    assert [c["n"] for c in summary["capability"]["per_model"]] == [2, 2]
    inference_cache.clear()


def test_comparison_rejects_bad_sources(store, tiny_model_dir):
    jobs = JobManager(store)
    job = jobs.submit("compare", {"model": str(tiny_model_dir), "sources": ["base", "base"],
                                  "prompts": ["hi"]})
    assert jobs.wait(job, 60) == "failed"
    assert "chosen twice" in store.get_run(job)["error"]


# -- the page ------------------------------------------------------------------------------
def _app(lang="en") -> AppTest:
    import streamlit as st

    st.cache_resource.clear()  # the page's store must be this test's database
    at = AppTest.from_file(str(ROOT / "views" / "compare.py"), default_timeout=60)
    at.session_state["lang"] = lang
    return at


def test_compare_page_shows_columns_and_blind_vote(store):
    cid = store.create_comparison("demo", {"prompts": ["q0", "q1", "q2"],
                                           "labels": {"base": "base", "1": "sft#1"}})
    store.add_comparison_outputs(cid, _outputs(n=3))
    at = _app().run()
    assert not at.exception, at.exception
    text = " ".join(x.value for x in at.text)  # answers in columns, as plain text
    assert "sft#1 says 2" in text and "base says 0" in text
    frames = [d.value for d in at.dataframe]
    assert any("distinct-2" in f.columns for f in frames)
    # blind vote: answers shown as A and B, the vote stored with the real names
    assert any(m.value == "#### Answer A" for m in at.markdown)
    vote_buttons = [b for b in at.button if b.key and b.key.startswith("vote-a")]
    assert vote_buttons
    vote_buttons[0].click().run()
    assert not at.exception, at.exception
    votes = store.list_votes(cid)
    assert len(votes) == 1 and votes[0]["choice"] == "a"
    assert {votes[0]["model_a"], votes[0]["model_b"]} == {"base", "sft#1"}
    assert at.metric[0].value == ("100%" if votes[0]["model_a"] == "sft#1" else "0%")
    captions = " ".join(c.value for c in at.caption)
    won = votes[0]["model_a"] == "sft#1"  # X is the last model: sft#1
    assert ("1 vote: 1 win, 0 losses, 0 ties" if won else "1 vote: 0 wins, 1 loss, 0 ties") \
        in captions
    assert "on 1 voted pair with rewards" in captions and "1 decisive vote ·" in captions
    assert "1 votes" not in captions and "1 pairs" not in captions
    # every answer has 3 tokens: corr(reward, length) is undefined, shown "—" and explained
    table = next(f for f in frames if "distinct-2" in f.columns)
    assert list(table["corr(reward, length)"]) == ["—", "—"]
    assert "None" not in table.astype(str).to_string()
    assert "undefined" in captions and "3 tokens" in captions


def test_counts_agree_in_number_in_both_languages(store):
    cid = store.create_comparison("demo", {"prompts": ["q0"],
                                           "labels": {"base": "base", "1": "sft#1"}})
    outputs = _outputs(n=1)
    outputs[1]["length"] = 1
    store.add_comparison_outputs(cid, outputs)
    record_vote(store, blind_items(outputs, "base", "sft#1", comparison_id=cid)[0], "tie",
                comparison_id=cid)
    at = _app("fr").run()
    assert not at.exception, at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "1 vote : 0 victoire, 0 défaite, 1 égalité" in captions
    assert "0 vote tranché" in captions and "1 token" in captions and "3 tokens" in captions
    assert at.subheader[1].value == "Réponses (1 prompt)"


def test_answer_length_counts_generated_tokens_up_to_eos():
    from engine.inference.generate import answer_length

    assert answer_length([5, 7, 2, 0, 0], eos_token_id=2) == 2   # EOS, then padding
    assert answer_length([5, 7, 9], eos_token_id=2) == 3         # cut at max_new_tokens
    assert answer_length([2, 0], eos_token_id=2) == 0


def test_compare_page_in_french_without_comparisons(store):
    at = _app("fr").run()
    assert not at.exception, at.exception
    assert any("Comparer" in t.value for t in at.title)


def test_compare_page_starts_a_job_and_shows_it(store, tiny_model_dir):
    from engine.runtime.jobs import get_manager

    rid = make_adapter_run(store, tiny_model_dir)
    inference_cache.clear()
    at = _app()
    at.session_state["model_spec"] = str(tiny_model_dir)
    at.run()
    assert at.multiselect(key=widget_key("compare_models")).value == ["base", str(rid)]
    at.text_area(key="compare_prompts").set_value("Hello\nName a colour.")
    at.number_input(key="cmp_mnt").set_value(6)
    at.number_input(key="cmp_cap_limit").set_value(2)   # capability: tests/test_capability.py
    at.button(key="compare_start").click().run()
    job = at.session_state["compare_job"]
    assert get_manager(store).wait(job, 120) == "succeeded", store.get_run(job)["error"]
    at.run()
    assert not at.exception, at.exception
    cid = store.get_run(job)["summary"]["comparison_id"]
    assert at.selectbox(key=widget_key("compare_pick")).value == cid
    assert len(store.get_comparison_outputs(cid)) == 4
    inference_cache.clear()


def test_comparison_with_reward_model_on_dataset_prompts(store, tiny_model_dir):
    from engine.training.reward import clear_scorers, load_scorer

    rid = make_adapter_run(store, tiny_model_dir, stage="ppo", seed=2)
    reward_id = make_reward_run(store, tiny_model_dir)
    inference_cache.clear()
    jobs = JobManager(store)
    job = jobs.submit("compare", {"model": str(tiny_model_dir), "sources": [rid, "base"],
                                  "dataset": "prefs", "split": "eval", "num_prompts": 3,
                                  "reward_run": reward_id, "max_new_tokens": 6,
                                  "compute_kl": False, "capability": None})
    assert jobs.wait(job, 180) == "succeeded", store.get_run(job)["error"]
    cid = store.get_run(job)["summary"]["comparison_id"]
    prompts = store.get_comparison(cid)["config"]["prompts"]
    eval_prompts = [r["prompt"] for r in store.list_rows("prefs", split="eval")]
    assert len(prompts) == 3 and set(prompts) <= set(eval_prompts)
    outputs = store.get_comparison_outputs(cid)
    run_rows = [o for o in outputs if o["model"] == f"ppo#{rid}"]
    assert all(o["kl"] is None for o in run_rows)  # KL switched off
    expected = load_scorer(store, reward_id).score(prompts, [o["response"] for o in run_rows])
    assert [o["reward"] for o in run_rows] == pytest.approx(expected, abs=1e-5)
    summary = {s["model"]: s for s in model_summary(outputs)}
    assert summary["base"]["mean_reward"] is not None
    # votes on this comparison carry the rewards, so the reward model's preference shows
    items = blind_items(outputs, f"ppo#{rid}", "base", comparison_id=cid)
    for item in items:
        record_vote(store, item, "a", comparison_id=cid)
    rp = reward_preference(store.list_votes(cid), f"ppo#{rid}", "base")
    assert rp["n"] == 3 and rp["reward_rate"] is not None
    clear_scorers()
    inference_cache.clear()
