"""Issue 24, item 1: over-optimisation that shows. Best-of-n's curve reuses one set of
samples for every n and carries standard errors over the prompts (worked out by hand here);
the recipe's sentence reports the gold score's peak and a fall after it only when the fall
exceeds twice its paired standard error, and says "does not show" otherwise. GRPO against the
proxy is on by default (it goes far enough along the KL axis on a CPU); its curve is judged
against its own noise, and a group without it (or without best-of-n) draws no empty chart."""
from __future__ import annotations

import math

import pytest

from engine import objectives as O
from engine.experiments.catalogue import recipes
from engine.training.best_of_n import best_of_n_curve


def test_standard_error_of_a_mean_by_hand():
    # 1, 2, 3, 6: mean 3, s² = (4 + 1 + 0 + 9)/3 = 14/3, SE = sqrt(14/3/4)
    assert O.mean_standard_error([1.0, 2.0, 3.0, 6.0]) == pytest.approx(math.sqrt(14 / 12))
    assert O.mean_standard_error([2.0, 2.0]) == 0.0
    assert O.mean_standard_error([5.0]) is None and O.mean_standard_error([]) is None


def test_the_curve_reuses_the_samples_and_carries_standard_errors_over_prompts():
    # prompt A: proxy (2, 1), gold (0, 1): n = 1 -> proxy 1.5, gold 0.5; n = 2 -> 2, 0
    # prompt B: proxy (1, 3), gold (1, −1): n = 1 -> proxy 2, gold 0;    n = 2 -> 3, −1
    curve = best_of_n_curve([[2.0, 1.0], [1.0, 3.0]], [[0.0, 1.0], [1.0, -1.0]], 2)
    one, two = curve
    assert (one["bon_proxy_score"], one["bon_gold_score"]) == pytest.approx((1.75, 0.25))
    assert (two["bon_proxy_score"], two["bon_gold_score"]) == pytest.approx((2.5, -0.5))
    # SE over the prompts: values (0.5, 0) -> s² = 0.125, SE = sqrt(0.125/2) = 0.25
    assert one["bon_gold_score_se"] == pytest.approx(0.25)
    assert one["bon_proxy_score_se"] == pytest.approx(0.25)     # (1.5, 2)
    assert two["bon_gold_score_se"] == pytest.approx(0.5)       # (0, −1): s² = 0.5
    # the paired SE of the gap to n_max: gaps (0.5 − 0, 0 − (−1)) = (0.5, 1) -> SE 0.25;
    # unpaired it would be sqrt(0.25² + 0.5²) = 0.56: the prompts' own levels cancel
    assert one["bon_gold_gap_se"] == pytest.approx(0.25)
    assert two["bon_gold_gap_se"] == 0.0
    # one prompt: no spread, no standard error (nothing claimed from it)
    single = best_of_n_curve([[2.0, 1.0]], [[0.0, 1.0]], 2)
    assert not any(k.endswith("_se") for row in single for k in row)


# -- the sentence follows the numbers --------------------------------------------------------
N = [1, 2, 4, 8, 16, 32, 64, 128, 256]
KL = [O.kl_best_of_n(n) for n in N]
PROXY = [0.0, 0.5, 0.9, 1.2, 1.5, 1.7, 1.9, 2.0, 2.1]
RISE_FALL = [-0.60, -0.45, -0.35, -0.30, -0.32, -0.38, -0.45, -0.52, -0.58]


def _bon(store, gold: list[float], gap_se: list[float] | None, prompts: int = 8) -> dict:
    rid = store.create_run("best_of_n", {}, status="succeeded")
    for i, n in enumerate(N):
        m = {"bon_n": n, "kl_bon": KL[i], "bon_proxy_score": PROXY[i], "bon_gold_score": gold[i]}
        if gap_se is not None:
            m.update(bon_gold_gap_se=gap_se[i], bon_gold_score_se=0.1)
        store.log_metrics(rid, n, m)
    store.update_run(rid, summary={"prompts": prompts})
    return {**store.get_run(rid), "group_key": "bon"}


def _rl(store, kl: list[float], gold: list[float], stage: str = "grpo") -> dict:
    """A policy-optimisation run's steps: GRPO logs the proxy as `reward_model`, PPO (the
    groups made before issue 24) as `score_mean`."""
    rid = store.create_run(stage, {}, status="succeeded")
    proxy = "reward_model" if stage == "grpo" else "score_mean"
    for i, (k, g) in enumerate(zip(kl, gold)):
        store.log_metrics(rid, i + 1, {"kl": k, proxy: 0.1 * i, "gold_score": g})
    return {**store.get_run(rid), "group_key": stage}


def _group(*keys: str) -> dict:
    return {"config": {"plan": [{"key": k} for k in keys]}}


def check_wording(sentence: dict) -> None:
    """The sentence formats in both languages with every placeholder filled, none unknown."""
    from ui.i18n import catalogue

    for lang in ("en", "fr"):
        text = catalogue(lang)[sentence["key"]].format(**sentence["params"])
        assert "{" not in text and "?" not in text, (lang, text)


def test_a_fall_beyond_its_paired_noise_is_reported_with_peak_n_and_kl(store):
    summarize = recipes()["overoptimization"].summarize
    done = {"status": "succeeded"}
    gap = [0.04] * len(N)
    gap[-1] = 0.0
    runs = {"pairs": done, "proxy": done, "bon": _bon(store, RISE_FALL, gap)}
    out = summarize(store, _group("pairs", "proxy", "bon"), runs)
    assert out["sentence"]["key"] == "recipes.overoptimization.sentence_bon_fell"
    p = out["sentence"]["params"]
    assert (p["bon_peak_n"], p["bon_peak"], p["bon_peak_kl"]) == (8, -0.3, 1.2)
    assert (p["bon_last_n"], p["bon_last"], p["bon_last_kl"]) == (256, -0.58, 4.55)
    assert p["bon_fall"] == 0.28 and p["bon_fall_se"] == 0.04 and p["bon_prompts"] == 8
    check_wording(out["sentence"])
    # the table: one row per n, with √KL (the paper's axis) and the gold score's SE
    rows = out["table"]
    assert [r["point"] for r in rows] == [f"n={n}" for n in N]
    assert rows[-1]["sqrt_kl"] == pytest.approx(math.sqrt(KL[-1]), abs=1e-3)
    assert rows[0]["gold_se"] == 0.1


def test_a_fall_within_its_noise_or_without_one_does_not_show(store):
    summarize = recipes()["overoptimization"].summarize
    done = {"status": "succeeded"}
    group = _group("pairs", "proxy", "bon")
    # the same fall (0.28) with a paired SE of 0.15: 0.28 < 2 × 0.15
    gap = [0.15] * len(N)
    gap[-1] = 0.0
    out = summarize(store, group, {"pairs": done, "proxy": done,
                                   "bon": _bon(store, RISE_FALL, gap)})
    assert out["sentence"]["key"] == "recipes.overoptimization.sentence_bon_held"
    assert out["sentence"]["params"]["bon_fall_se"] == 0.15
    check_wording(out["sentence"])
    # no standard error stored (one prompt): nothing to test the fall against
    out = summarize(store, group, {"pairs": done, "proxy": done,
                                   "bon": _bon(store, RISE_FALL, None, prompts=1)})
    assert out["sentence"]["key"] == "recipes.overoptimization.sentence_bon_held"
    # the gold score rising with the proxy to the end: its peak is the last point
    rising = [-0.6 + 0.03 * i for i in range(len(N))]
    out = summarize(store, group, {"pairs": done, "proxy": done,
                                   "bon": _bon(store, rising, [0.0] * len(N))})
    assert out["sentence"]["key"] == "recipes.overoptimization.sentence_bon_rose"
    assert out["sentence"]["params"]["bon_peak_n"] == 256
    check_wording(out["sentence"])


def test_grpo_runs_by_default_and_is_judged_against_its_noise(store):
    from engine.experiments.runner import charts_of
    from engine.schema import ConfigError

    recipe = recipes()["overoptimization"]
    plan = recipe.plan(recipe.make_settings())
    assert [p.key for p in plan] == ["pairs", "proxy", "bon", "grpo"]
    pairs, _, bon, grpo = (p.config for p in plan)
    # the pairs hold whole answers, most longer than the gold's target (so nearly every pair
    # is won by the shorter one); best-of-n and GRPO optimise answers of one length limit
    assert pairs["max_new_tokens"] > bon["max_new_tokens"] == grpo["max_new_tokens"]
    assert pairs["gold_params"]["target"] < grpo["max_new_tokens"] < pairs["max_new_tokens"]
    # the proxy alone is GRPO's reward: no rule, no penalty for an answer cut at the limit
    assert grpo["builtin_rewards"] == [] and grpo["missing_eos_penalty"] == 0.0
    assert grpo["reward_run"] == {"$run": "proxy"} and grpo["gold_reward"] == "target_length"
    assert bon["n_max"] >= 64
    # a chart for each optimiser planned, none for one left out; both on √KL
    charts = charts_of({"recipe": "overoptimization",
                        "config": {"plan": [p.to_dict() for p in plan]}})
    assert [c.runs for c in charts] == [["bon"], ["grpo"]]
    assert all(c.x_transform == "sqrt" for c in charts)
    for size, runs in (({"rl_steps": 0}, [["bon"]]), ({"bon_prompts": 0}, [["grpo"]])):
        only = recipe.plan(recipe.make_settings(size))
        assert [c.runs for c in charts_of({"recipe": "overoptimization", "config": {
            "plan": [p.to_dict() for p in only]}})] == runs
    with pytest.raises(ConfigError) as err:
        recipe.make_settings({"rl_steps": 0, "bon_prompts": 0})
    assert err.value.field == "rl_steps"

    done = {"status": "succeeded"}
    gap = [0.04] * len(N)
    gap[-1] = 0.0
    base = {"pairs": done, "proxy": done, "bon": _bon(store, RISE_FALL, gap)}
    group = _group("pairs", "proxy", "bon", "grpo")
    # GRPO planned but missing: no conclusion
    out = recipe.summarize(store, group, base)
    assert out["sentence"]["key"] == "recipes.incomplete" and "grpo" in \
        out["sentence"]["params"]["runs"]
    # batch noise with a KL that goes back and forth (a real 12-step PPO run on the
    # embedded model): the highest smoothed point is not a peak the numbers show
    noisy = _rl(store, [0.0, 1.03, 0.78, 2.65, 3.66, 6.8, 5.45, 4.76, 7.2, 6.72, 5.89, 2.8],
                [-.89, -.6, -.9, -.83, -.49, -.8, -.56, -.74, -.6, -.35, -.76, -1.15])
    out = recipe.summarize(store, group, {**base, "grpo": noisy})
    assert out["sentence"]["key"] == "recipes.overoptimization.sentence_bon_fell_rl_held"
    check_wording(out["sentence"])
    # a clean rise and fall against KL: peak on the 3-point moving average, fall to the
    # mean of the points beyond it, against the spread around that average
    clean = _rl(store, [0.1, 0.4, 0.9, 1.5, 2.2, 3.0, 3.6, 4.1],
                [-1.0, -0.6, -0.4, -0.4, -0.6, -0.9, -1.2, -1.3])
    out = recipe.summarize(store, group, {**base, "grpo": clean})
    assert out["sentence"]["key"] == "recipes.overoptimization.sentence_bon_fell_rl_fell"
    p = out["sentence"]["params"]
    assert (p["rl"], p["rl_steps"], p["rl_peak_kl"], p["rl_peak"]) == ("GRPO", 8, 0.9, -0.47)
    # beyond the peak: (−0.4 − 0.6 − 0.9 − 1.2 − 1.3)/5 = −0.88; fall −0.47 + 0.88 = 0.41
    assert p["rl_last"] == pytest.approx(-0.88, abs=0.01) and p["rl_last_kl"] == 4.1
    assert p["rl_fall"] == pytest.approx(0.41, abs=0.01) and 0 < p["rl_fall_se"] < 0.205
    check_wording(out["sentence"])
    # the gold score highest at the start and falling from there: said as such (no rise)
    falling = _rl(store, [0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0],
                  [-0.2, -0.22, -0.25, -0.3, -0.4, -0.5, -0.6])
    out = recipe.summarize(store, group, {**base, "grpo": falling})
    assert out["sentence"]["key"] == \
        "recipes.overoptimization.sentence_bon_fell_rl_fell_from_start"
    assert out["sentence"]["params"]["rl_peak_kl"] == 0.0
    check_wording(out["sentence"])
    # GRPO alone (no best-of-n), and an older group whose proxy PPO optimised
    alone = recipe.summarize(store, _group("pairs", "proxy", "grpo"),
                             {"pairs": done, "proxy": done, "grpo": clean})
    assert alone["sentence"]["key"] == "recipes.overoptimization.sentence_rl_fell"
    check_wording(alone["sentence"])
    old = recipe.summarize(store, _group("pairs", "proxy", "bon", "ppo"),
                           {**base, "ppo": _rl(store, [0.1, 0.4, 0.9, 1.5, 2.2, 3.0, 3.6, 4.1],
                                               [-1.0, -0.6, -0.4, -0.4, -0.6, -0.9, -1.2,
                                                -1.3], stage="ppo")})
    assert old["sentence"]["key"] == "recipes.overoptimization.sentence_bon_fell_rl_fell"
    assert old["sentence"]["params"]["rl"] == "PPO"


def test_every_sentence_the_summary_can_pick_exists_in_both_languages():
    from ui.i18n import catalogue

    for lang in ("en", "fr"):
        cat = catalogue(lang)
        for bon in ("", "_bon_fell", "_bon_held", "_bon_rose"):
            for rl in ("", "_rl_fell", "_rl_held", "_rl_fell_from_start"):
                if bon or rl:
                    key = f"recipes.overoptimization.sentence{bon}{rl}"
                    assert key in cat, (lang, key)


def test_every_summary_column_has_a_label_in_both_languages(store):
    """The Experiments page names a summary column from the catalogues (recipes.col_*, a
    metric's or a setting's label); a column none knows showed its raw name ("sqrt_kl")."""
    from ui.i18n import catalogue

    done = {"status": "succeeded"}
    gap = [0.04] * len(N)
    gap[-1] = 0.0
    out = recipes()["overoptimization"].summarize(
        store, _group("pairs", "proxy", "bon", "grpo"),
        {"pairs": done, "proxy": done, "bon": _bon(store, RISE_FALL, gap),
         "grpo": _rl(store, [0.1, 0.4, 0.9, 1.5], [-1.0, -0.6, -0.4, -0.7])})
    columns = {k for row in out["table"] for k in row} - {"run"}
    for lang in ("en", "fr"):
        cat = catalogue(lang)
        unnamed = [c for c in columns if not any(
            k in cat for k in (f"recipes.col_{c}", f"metrics.{c}", f"settings.{c}"))]
        assert not unnamed, (lang, unnamed)
