"""A held-out check that can be read (issue 24, item 3): several answers to each held-out
prompt, each point's mean with its standard error clustered by prompt, first vs last point
against the SE of their difference, and the sentence that says whether the held-out score
(and the training-vs-held-out gap) moved beyond its noise. On the hand-set bigram model of
tests/rl_helpers.py (it answers Yes / No / Sure / Fine, then "." or EOS)."""
from __future__ import annotations

import math
import statistics

import pytest

from engine import objectives as O
from engine.training import heldout
from tests.conftest import ROOT
from tests.rl_helpers import grpo_config
from tests.rl_helpers import split_dataset as _split_dataset


# ======================================================================================
# The equations, by hand
# ======================================================================================
def test_prompt_clustered_mean_and_its_se_by_hand():
    # three prompts: means 0.5, 1, 0 -> mean 0.5; deviations 0, 0.5, -0.5 -> Σ² = 0.5;
    # SE = sqrt(0.5 / (3·2)) = sqrt(1/12)
    mean, se = O.prompt_clustered_mean([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert mean == pytest.approx(0.5) and se == pytest.approx(math.sqrt(1 / 12))
    # every prompt weighs the same, whatever its number of answers: means 1 and 0
    mean, se = O.prompt_clustered_mean([[1.0, 1.0, 1.0, 1.0], [0.0]])
    assert mean == pytest.approx(0.5) and se == pytest.approx(0.5)   # sqrt(0.5 / 2)
    # the spread of the answers within a prompt is not the noise of the mean over prompts
    mean, se = O.prompt_clustered_mean([[0.0, 2.0], [0.0, 2.0]])
    assert (mean, se) == (1.0, 0.0)
    assert O.prompt_clustered_mean([[3.0, 1.0]]) == (2.0, None)        # one prompt: no SE
    assert O.prompt_clustered_mean([]) == (None, None)
    # Δ = 1.5 − 1.0, SE(Δ) = sqrt(0.3² + 0.4²) = 0.5
    d, se = O.difference_with_se(1.0, 0.3, 1.5, 0.4)
    assert d == pytest.approx(0.5) and se == pytest.approx(0.5)
    assert O.difference_with_se(1.0, None, 1.5, 0.4) == (pytest.approx(0.5), None)
    assert "SE" in O.LATEX["prompt_clustered_mean"] and "SE" in O.LATEX["difference_with_se"]


def _point(step, train, train_se, held, held_se, answers=32):
    return {"step": step, "train": train, "train_se": train_se, "heldout": held,
            "heldout_se": held_se, "answers": answers}


def test_the_three_verdicts_and_the_gap_from_hand_made_numbers():
    # 0.1 ± 0.05 then 0.4 ± 0.05: Δ = 0.3 > 2·sqrt(0.05² + 0.05²) = 0.141 -> rose
    rose = heldout.change([_point(1, 0.1, 0.05, 0.1, 0.05), _point(5, 0.2, 0.05, 0.3, 0.05),
                           _point(10, 0.4, 0.05, 0.4, 0.05)])
    assert rose["verdict"] == "rose" and (rose["first_step"], rose["last_step"]) == (1, 10)
    assert rose["change"] == pytest.approx(0.3)
    assert rose["change_se"] == pytest.approx(math.sqrt(2) * 0.05)
    assert rose["gap_verdict"] == "flat"            # gap 0 then 0
    fell = heldout.change([_point(1, 0.4, 0.05, 0.4, 0.05), _point(10, 0.1, 0.05, 0.1, 0.05)])
    assert fell["verdict"] == "fell" and fell["change"] == pytest.approx(-0.3)
    # the same change, SEs of 0.2: 2·SE(Δ) = 0.566 > 0.3 -> did not move beyond its noise
    flat = heldout.change([_point(1, 0.1, 0.2, 0.1, 0.2), _point(10, 0.4, 0.2, 0.4, 0.2)])
    assert flat["verdict"] == "flat"
    # the training score rises 0.8 while the held-out one stays: the gap grows from 0 to 0.8,
    # SE(Δgap) = sqrt(4·0.01²) = 0.02 -> grew (poor generalisation); the held-out score flat
    grew = heldout.change([_point(1, 0.1, 0.01, 0.1, 0.01), _point(10, 0.9, 0.01, 0.1, 0.01)])
    assert grew["verdict"] == "flat" and grew["gap_verdict"] == "grew"
    assert grew["gap_change"] == pytest.approx(0.8)
    assert grew["gap_change_se"] == pytest.approx(0.02)
    # a gap growing by 0.8 within noise (SEs 0.3: 2·SE = 1.2) is not said to grow
    noisy = heldout.change([_point(1, 0.1, 0.3, 0.1, 0.3), _point(10, 0.9, 0.3, 0.1, 0.3)])
    assert noisy["gap_verdict"] == "flat"

    keys = [s["key"] for s in heldout.sentences(grew)]
    assert keys == ["ppo.heldout_flat", "ppo.gap_grew"]
    assert [s["key"] for s in heldout.sentences(rose)][0] == "ppo.heldout_rose"
    assert [s["key"] for s in heldout.sentences(fell)][0] == "ppo.heldout_fell"
    assert [s["key"] for s in heldout.sentences(noisy)] == ["ppo.heldout_flat", "ppo.gap_flat"]
    # one point: nothing to judge; no SE stored: no verdict said
    one = heldout.change([_point(4, 0.2, 0.1, 0.3, 0.1)])
    assert [s["key"] for s in heldout.sentences(one)] == ["ppo.heldout_one_point"]
    blind = heldout.change([_point(1, 0.1, None, 0.1, None), _point(4, 0.9, None, 0.9, None)])
    assert blind["verdict"] is None
    assert [s["key"] for s in heldout.sentences(blind)] == ["ppo.heldout_no_se"]
    assert heldout.change([]) is None and heldout.sentences(None) == []


# ======================================================================================
# A real run on the tiny model
# ======================================================================================
def _yes(text: str) -> float:
    return 1.0 if "yes" in text.lower() else 0.0


def _by_hand(rows: list[dict], which: str, field: str = "score") -> tuple[float, float]:
    """Mean over prompts of each prompt's mean answer, and the SE of those prompt means."""
    by_prompt: dict[str, list[float]] = {}
    for r in rows:
        if r["set"] == which:
            by_prompt.setdefault(str(r["prompt"]), []).append(r[field])
    means = [sum(v) / len(v) for v in by_prompt.values()]
    return statistics.mean(means), statistics.stdev(means) / math.sqrt(len(means))


def test_a_grpo_run_stores_each_point_with_its_se_recomputable_from_its_answers(store,
                                                                            bigram_dir):
    from engine.inference.specs import run_dir
    from engine.runtime.jobs import run_sync

    _split_dataset(store)
    K, A = 4, 3
    cfg = grpo_config(bigram_dir, dataset="split-prompts", max_steps=2, heldout_every=1,
                      heldout_prompts=K, heldout_answers=A, builtin_rewards=["contains_words"],
                      reward_params={"contains_words": {"words": ["yes"]}},
                      gold_reward="ends_with_period")
    run = run_sync(store, "grpo", cfg)
    assert run["status"] == "succeeded", run["error"]
    by_name: dict[str, dict[int, float]] = {}
    for m in store.get_metrics(run["id"]):
        by_name.setdefault(m["name"], {})[m["step"]] = m["value"]
    answers = heldout.read_answers(run_dir(run["id"]))
    assert sorted(answers) == [1, 2]
    for step, rows in answers.items():
        held = [r for r in rows if r["set"] == "heldout"]
        assert len(held) == K * A == by_name["eval_heldout_answers"][step]
        assert len({r["prompt"] for r in held}) == K                   # A answers to each
        assert len([r for r in rows if r["set"] == "train"]) == K * A
        for r in rows:                                                  # the run's reward
            assert r["score"] == _yes(r["answer"])
        for which, name in (("heldout", "eval_heldout_score"), ("train", "eval_train_score")):
            mean, se = _by_hand(rows, which)
            assert by_name[name][step] == pytest.approx(mean, abs=1e-6), (step, name)
            assert by_name[f"{name}_se"][step] == pytest.approx(se, abs=1e-6), (step, name)
        mean, se = _by_hand(held, "heldout", "gold")
        assert by_name["eval_heldout_gold"][step] == pytest.approx(mean, abs=1e-6)
        assert by_name["eval_heldout_gold_se"][step] == pytest.approx(se, abs=1e-6)
    # the summary (and so the CLI's JSON) says it in English, from the same numbers
    summary = run["summary"]
    c = summary["heldout"]
    assert (c["first_step"], c["last_step"]) == (1, 2)
    assert c["change"] == pytest.approx(by_name["eval_heldout_score"][2]
                                        - by_name["eval_heldout_score"][1])
    assert c["verdict"] in ("rose", "fell", "flat")
    said = {"rose": "rose beyond its noise", "fell": "fell beyond its noise",
            "flat": "did not move beyond its noise"}[c["verdict"]]
    assert said in summary["heldout_sentence"]


def test_successive_points_of_one_policy_are_drawn_alike(store, bigram_dir):
    """The eval seed is fixed: the same policy scores exactly the same at two points, so
    a difference between points is the policy's, not the draw's."""
    from engine.training.grpo import GRPOTrainer

    _split_dataset(store)
    trainer = GRPOTrainer(grpo_config(bigram_dir, dataset="split-prompts", max_steps=8,
                                      heldout_every=4, heldout_prompts=3, heldout_answers=4),
                          store)
    first, last = trainer.heldout_eval(4), trainer.heldout_eval(8)
    assert first == last and first["eval_heldout_answers"] == 12


# ======================================================================================
# The page says it, from a stored run
# ======================================================================================
@pytest.fixture
def fresh_resources():
    import streamlit as st

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


@pytest.mark.parametrize("stage", ["ppo", "grpo"])
def test_the_page_says_whether_the_heldout_score_moved_beyond_its_noise(store, fresh_resources,
                                                                       stage):
    from dataclasses import asdict

    from streamlit.testing.v1 import AppTest

    from engine.training.grpo import GRPOConfig
    from engine.training.ppo import PPOConfig
    from tests.test_metrics_labels import charts
    from ui.common import metric_label
    from ui.i18n import t

    store.create_dataset("prompts", "preference")
    store.add_rows("prompts", [{"prompt": "Hi?", "chosen": "Yes.", "rejected": "No"}])
    cfg = asdict((PPOConfig if stage == "ppo" else GRPOConfig)(dataset="prompts"))
    rid = store.create_run(stage, cfg, name="noise")
    store.claim_run(rid)
    score = "score_mean" if stage == "ppo" else "reward_mean"
    # held-out 0.10 ± 0.05 then 0.40 ± 0.05 (rose); training 0.10 ± 0.05 then 0.90 ± 0.05:
    # the gap grows 0 -> 0.5, SE(Δgap) = sqrt(4·0.05²) = 0.1 (grew)
    for step, train, held in ((1, 0.1, 0.1), (2, 0.5, 0.25), (3, 0.9, 0.4)):
        store.log_metrics(rid, step, {score: 0.1 * step, "kl": 0.1, "eos_fraction": 1.0,
                                      "response_length": 8.0, "time_step": 1.0,
                                      "eval_train_score": train, "eval_train_score_se": 0.05,
                                      "eval_heldout_score": held, "eval_heldout_score_se": 0.05,
                                      "eval_heldout_kl": 0.0, "eval_heldout_answers": 32.0})
    store.finish_run(rid, "succeeded", summary={})
    for lang in ("en", "fr"):
        at = AppTest.from_file(str(ROOT / "views" / f"{stage}.py"), default_timeout=60)
        at.session_state["lang"] = lang
        at.run()
        assert not at.exception, at.exception
        captions = " ".join(c.value for c in at.caption)
        common = dict(first=0.1, last=0.4, first_step=1, last_step=3, first_se=0.05,
                      last_se=0.05, answers=32)
        assert t("ppo.heldout_rose", lang, change=0.3, bound=2 * math.sqrt(2) * 0.05,
                 **common) in captions
        assert t("ppo.gap_grew", lang, gap_first=0.0, gap_last=0.5, gap_change=0.5,
                 bound=0.2) in captions
        assert t("ppo.generalisation_caption", lang, answers=32,
                 prompts=32 // cfg["heldout_answers"], per_prompt=cfg["heldout_answers"]) \
            in captions
    # the held-out score's chart draws each point's error bar, value ± 2 SE
    bars = [layer["data"]["values"] for spec, _ in charts(at) for layer in spec["layer"]
            if layer["mark"].get("type") == "errorbar"]
    assert bars, "no chart with error bars"
    held = sorted((b["step"], b["lo"], b["hi"]) for b in bars[0]
                  if b["series"] == metric_label("eval_heldout_score", "fr"))
    assert [s for s, _, _ in held] == [1, 2, 3]
    assert held[-1][1:] == (pytest.approx(0.4 - 0.1), pytest.approx(0.4 + 0.1))
