"""Issue 27: whether a GRPO run's reward rose beyond its noise (the OLS trend of the per-step
reward mean with its standard error, in the summary, the CLI's JSON and on the page), and
the default rule set, under which a higher reward is a better answer a person can see."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from engine import objectives as O
from engine.training import rewards_builtin as RB
from engine.training.grpo import GRPOConfig, reward_trend
from tests.conftest import ROOT
from tests.rl_helpers import grpo_config as _config
from tests.rl_helpers import prompt_dataset as _dataset


def test_trend_slope_and_its_standard_error_by_hand():
    # x = 1..4, y = 1, 3, 2, 5: x̄ = 2.5, ȳ = 2.75, Σ(x−x̄)² = 5, Σ(x−x̄)(y−ȳ) = 5.5 → b̂ = 1.1;
    # residuals −0.1, 0.8, −1.3, 0.6 → RSS = 2.7, SE = sqrt(2.7 / 2 / 5) = sqrt(0.27)
    b, se = O.trend_slope([1, 2, 3, 4], [1, 3, 2, 5])
    assert b == pytest.approx(1.1)
    assert se == pytest.approx(math.sqrt(0.27))
    assert O.trend_verdict(b, se) == "rose"             # 1.1 > 2 × 0.52
    # the same points read backwards fall; a flatter noisy series is within its noise
    assert O.trend_verdict(*O.trend_slope([1, 2, 3, 4], [5, 2, 3, 1])) == "fell"
    b, se = O.trend_slope([1, 2, 3, 4, 5], [0.2, 0.6, 0.1, 0.5, 0.3])
    assert b == pytest.approx(0.01) and O.trend_verdict(b, se) == "flat"
    # points on a line: no residual, SE 0; too few points: no SE
    assert O.trend_slope([0, 1, 2], [1.0, 0.5, 0.0]) == (pytest.approx(-0.5), 0.0)
    assert O.trend_slope([3, 7], [1.0, 2.0]) == (pytest.approx(0.25), None)
    assert O.trend_slope([1], [1.0]) == (None, None)
    assert O.trend_slope([2, 2, 2], [1.0, 2.0, 3.0]) == (None, None)
    assert O.trend_verdict(0.25, None) is None
    with pytest.raises(ValueError, match="3 x values for 2 y"):
        O.trend_slope([1, 2, 3], [1.0, 2.0])


def test_trend_slope_agrees_with_numpy_least_squares():
    rng = np.random.default_rng(0)
    x = np.arange(1, 25, dtype=float)
    y = 0.02 * x + rng.normal(0, 0.3, len(x))
    (slope, _), cov = np.polyfit(x, y, 1, cov=True)   # cov scaled by RSS / (n − 2)
    b, se = O.trend_slope(list(x), list(y))
    assert b == pytest.approx(slope) and se == pytest.approx(math.sqrt(cov[0, 0]))


def test_same_language_rule():
    fr, en = "Quelle est la capitale du Canada ?", "What is the capital of Canada?"
    assert RB.same_language(fr, "La capitale du Canada est Ottawa.") == 1.0
    assert RB.same_language(fr, "The capital of Canada is Ottawa.") == -1.0
    assert RB.same_language(en, "The capital of Canada is Ottawa.") == 1.0
    assert RB.same_language(en, "....") == 0.0
    assert RB.language_of("Qui a écrit « Germinal » ?") == "fr"
    assert RB.language_of("Who wrote Les Misérables?") == "en"


def _default_reward(prompt: str, answers: list[str]) -> list[float]:
    cfg = GRPOConfig()
    scorers = {n: RB.BuiltinScorer(n, cfg.reward_params.get(n)) for n in cfg.builtin_rewards}
    parts = {n: torch.tensor(s.score([prompt] * len(answers), answers))
             for n, s in scorers.items()}
    return O.weighted_reward(parts, dict(zip(cfg.reward_names(), cfg.weights()))).tolist()


def test_under_the_default_rules_a_higher_reward_is_a_better_answer():
    prompt = "Quelle est la capitale de l'Australie ?"
    good = "La capitale de l'Australie est Canberra, où siège le gouvernement fédéral."
    other_language = "The capital of Australia is Canberra, where the federal government sits."
    rambling_cut = ("La capitale de l'Australie est Canberra, mais il faut savoir que Sydney "
                    "est la plus grande ville du pays et que Melbourne a aussi été la capitale "
                    "pendant plusieurs années avant que le gouvernement ne s'installe dans")
    dots = "." * 30
    dull = "Oui."
    scores = dict(zip(["good", "other_language", "rambling_cut", "dots", "dull"],
                      _default_reward(prompt, [good, other_language, rambling_cut, dots, dull])))
    assert scores["good"] == max(scores.values()), scores
    for worse in ("other_language", "rambling_cut", "dots", "dull"):
        assert scores["good"] > scores[worse] + 0.5, scores
    assert scores["dots"] <= 0.0, scores   # a string of full stops does not pay


def test_the_summary_and_the_cli_report_the_trend(store, bigram_dir, capsys):  # noqa: F811
    from engine.__main__ import main
    from engine.runtime.jobs import run_sync

    _dataset(store)
    run = run_sync(store, "grpo", _config(bigram_dir, max_steps=5,
                                          builtin_rewards=["ends_with_period"]))
    assert run["status"] == "succeeded", run["error"]
    rows = store.get_metrics(run["id"], ["reward_mean"])
    x, y = [r["step"] for r in rows], [r["value"] for r in rows]
    (slope, _), cov = np.polyfit(x, y, 1, cov=True)
    summary = run["summary"]
    assert summary["reward_trend"] == pytest.approx(slope)
    assert summary["reward_trend_se"] == pytest.approx(math.sqrt(cov[0, 0]))
    expected = ("rose" if slope > 2 * math.sqrt(cov[0, 0]) else
                "fell" if slope < -2 * math.sqrt(cov[0, 0]) else "flat")
    assert summary["reward_trend_verdict"] == expected
    # the CLI prints the same fields in its JSON
    args = ["--db", str(store.path), "train", "grpo", "--set", f"model={bigram_dir}",
            "--set", "dataset=prompts", "--set", "max_steps=3", "--set", "batch_size=2",
            "--set", "group_size=2", "--set", "minibatches=1", "--set", "max_new_tokens=3",
            "--set", "save_every=0", "--set", "heldout_every=0",
            "--set", 'builtin_rewards=["ends_with_period"]', "--set", "lora.r=4"]
    capsys.readouterr()
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "succeeded"
    rows = store.get_metrics(out["run_id"], ["reward_mean"])
    b, se = O.trend_slope([r["step"] for r in rows], [r["value"] for r in rows])
    assert out["reward_trend"] == pytest.approx(b)
    assert out["reward_trend_se"] == (None if se is None else pytest.approx(se))
    assert out["reward_trend_verdict"] == O.trend_verdict(b, se)


def test_the_page_says_whether_the_reward_rose(store, bigram_dir):  # noqa: F811
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    from engine.runtime.jobs import run_sync

    st.cache_resource.clear()
    _dataset(store)
    done = run_sync(store, "grpo", _config(bigram_dir, max_steps=4,
                                           builtin_rewards=["ends_with_period"]))
    assert done["status"] == "succeeded", done["error"]
    slope, se = done["summary"]["reward_trend"], done["summary"]["reward_trend_se"]
    verdict = done["summary"]["reward_trend_verdict"]
    for lang, words in (("en", {"rose": "rose beyond its noise", "flat": "No trend beyond",
                                "fell": "fell beyond its noise"}),
                        ("fr", {"rose": "a monté au-delà de son bruit",
                                "flat": "Pas de tendance au-delà", "fell": "a baissé au-delà"})):
        at = AppTest.from_file(str(ROOT / "views" / "grpo.py"), default_timeout=60)
        at.session_state["lang"] = lang
        at.session_state["model_spec"] = str(bigram_dir)
        at.session_state["grpo_view"] = done["id"]
        at.run()
        assert not at.exception, at.exception
        shown = " ".join(x.value for kind in ("success", "info", "warning")
                         for x in at.get(kind))
        assert words[verdict] in shown, shown
        assert f"{slope:+.4f} ± {se:.4f}" in shown, shown
        assert O.LATEX["trend_slope"] in " ".join(x.value for x in at.latex)
        # the groups table names each reward component as the interface does
        columns = [c for frame in at.dataframe for c in frame.value.columns]
        rule = {"en": "Ends with a full stop", "fr": "Finit par un point"}[lang]
        assert any(rule in c for c in columns) and not any("ends_with_period" in c
                                                           for c in columns), columns
    st.cache_resource.clear()


def test_a_run_of_two_steps_has_no_verdict(store):
    rid = store.create_run("grpo", {"max_steps": 2})
    for step, value in ((1, 0.25), (2, 0.75)):
        store.log_metrics(rid, step, {"reward_mean": value})
    assert reward_trend(store, rid) == (pytest.approx(0.5), None)


def test_prompt_language_keeps_the_prompts_of_one_language(store):
    from engine.schema import ConfigError
    from engine.training.rl_prompts import in_language, load_prompts

    every = load_prompts(store, "sample-preferences")          # the shipped samples, EN + FR
    english = load_prompts(store, "sample-preferences", language="en")
    french = load_prompts(store, "sample-preferences", language="fr")
    assert english and french and len(english) + len(french) == len(every)
    assert all(RB.language_of(RB.prompt_text(p)) == "en" for p in english)
    assert all(RB.language_of(RB.prompt_text(p)) == "fr" for p in french)
    assert in_language(every, "any") == every
    # a prompt whose language cannot be told is kept by either; the other language is not
    untold, en, fr = "Say something about cats.", "Who wrote Hamlet?", "Qui a écrit Hamlet ?"
    assert in_language([untold, en, fr], "en") == [untold, en]
    assert in_language([untold, en, fr], "fr") == [untold, fr]
    store.create_dataset("english-only", "preference")
    store.add_rows("english-only", [{"prompt": en, "chosen": "Shakespeare.", "rejected": "No"}])
    with pytest.raises(ConfigError, match="none of the 1 prompts") as err:
        load_prompts(store, "english-only", language="fr")
    assert err.value.field == "prompt_language"


def test_the_default_held_out_check_scores_at_least_32_answers(store):
    from engine import data
    from engine.training.rl_prompts import in_language, load_prompts

    cfg = GRPOConfig()
    load_prompts(store, cfg.dataset)                               # imports the samples
    held = in_language(data.prompts_of(store, cfg.dataset, "eval"), cfg.prompt_language)
    assert min(len(held), cfg.heldout_prompts) * cfg.heldout_answers >= 32
