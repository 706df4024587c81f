"""The pages' "try it" boxes as light jobs (engine.inference.tryout): the SFT side-by-side and the
reward tester give what the models give when called directly, and the SFT page shows the
job's answers once it finished (the page's script runs no model)."""
from __future__ import annotations

import pytest
import streamlit as st

from engine.runtime import stages
from engine.inference.generate import SamplingConfig, generate
from engine.runtime.jobs import get_manager, run_sync
from engine.inference.models import adapter_dir, inference_cache, load_adapter, load_base
from tests.conftest import app_with_model, make_adapter_run, make_reward_run

PROMPT = "Name a colour."


@pytest.fixture(autouse=True)
def fresh_caches():
    st.cache_resource.clear()  # the pages' store and job manager: this test's database
    inference_cache.clear()
    yield
    st.cache_resource.clear()
    inference_cache.clear()


def test_try_and_score_text_are_light_stages():
    assert stages.get("try").light and stages.get("score_text").light


def test_try_job_gives_the_models_own_greedy_answers(store, tiny_model_dir):
    rid = make_adapter_run(store, tiny_model_dir)
    run = run_sync(store, "try", {"run_id": rid, "prompt": PROMPT, "max_new_tokens": 12})
    assert run["status"] == "succeeded", run["error"]
    out = run["summary"]
    # the same greedy answers from a fresh copy of the model, outside the inference cache
    fresh = load_base(str(tiny_model_dir))
    cfg = SamplingConfig(max_new_tokens=12, greedy=True, batch_size=1)
    base = generate(fresh.model, fresh.tokenizer, [PROMPT], cfg)[0]
    tuned = generate(load_adapter(fresh.model, adapter_dir(rid)), fresh.tokenizer, [PROMPT], cfg)[0]
    assert (out["base"], out["tuned"]) == (base, tuned)
    assert out["base"] != out["tuned"]  # the adapter (lora_B perturbed) changes the answer
    assert out["model"] == str(tiny_model_dir) and out["label"] == f"sft#{rid}"
    assert 0 < out["tuned_tokens"] <= 12
    assert [s["response"] for s in store.get_samples(run["id"])] == [base, tuned]


def test_try_refuses_an_empty_prompt_and_a_run_without_adapter(store, tiny_model_dir):
    rid = make_adapter_run(store, tiny_model_dir)
    run = run_sync(store, "try", {"run_id": rid, "prompt": "  "})
    assert run["status"] == "failed" and "the prompt is empty" in run["error"]
    bare = store.create_run("sft", {"model": str(tiny_model_dir)}, status="succeeded")
    run = run_sync(store, "try", {"run_id": bare, "prompt": PROMPT})
    assert run["status"] == "failed" and "has no saved adapter" in run["error"]


def test_score_text_job_gives_the_reward_models_scores(store, tiny_model_dir):
    from engine.training.reward import RewardScorer, clear_scorers

    reward_id = make_reward_run(store, tiny_model_dir, normalize=True)  # r̂ applies
    answers = ["Cats are fine.", "Cats are fine!", "Cats."]
    run = run_sync(store, "score_text", {"reward_run": reward_id, "prompt": "About cats?",
                                         "responses": answers + ["   "]})
    assert run["status"] == "succeeded", run["error"]
    out = run["summary"]
    assert out["responses"] == answers  # blank lines dropped, order kept
    # directly: a private copy of the base with the run's reward adapter and head
    direct = RewardScorer(store, reward_id, device="cpu").score(["About cats?"] * 3, answers)
    assert out["scores"] == pytest.approx(direct, abs=1e-5)
    assert [s["reward"] for s in store.get_samples(run["id"])] == pytest.approx(out["scores"])
    clear_scorers()


def test_sft_page_try_it_runs_a_job_and_shows_its_answers(store, tiny_model_dir):
    from ui.i18n import t

    rid = make_adapter_run(store, tiny_model_dir)
    at = app_with_model(tiny_model_dir, "views/sft.py")
    assert not at.exception, at.exception
    assert at.selectbox(key="sft_view").value == rid
    next(a for a in at.text_area if a.label == t("sft.try_prompt")).set_value(PROMPT)
    next(b for b in at.button if b.label == t("sft.try_go")).click().run()
    assert not at.exception, at.exception
    job = at.session_state[f"sft_try_job_{rid}"]  # submitted: the script did not generate
    assert store.get_run(job)["stage"] == "try"
    assert get_manager(store).wait(job, 120) == "succeeded", store.get_run(job)["error"]
    at.run()
    assert not at.exception, at.exception
    out = store.get_run(job)["summary"]
    shown = [e.value for e in at.text]
    assert (out["base"] or "∅") in shown and (out["tuned"] or "∅") in shown
    assert any(t("sft.try_tuned", id=rid) in m.value for m in at.markdown)
