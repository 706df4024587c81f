"""Issue 24, item 2: the uncertain reward. The summary compares the ensemble's disagreement σ
(and the gold score) of the two PPO runs over their last steps with standard errors, claims
the conservative objective's effect only beyond that noise, and otherwise names the size
where it is expected: the GPU-size preset, registered beside the CPU recipe and offered by
the Experiments page."""
from __future__ import annotations

import pytest

from engine.experiments.catalogue import recipes
from tests.test_overoptimization import check_wording


def _ppo(store, key: str, std: list[float], gold: list[float], **config) -> dict:
    rid = store.create_run("ppo", {"batch_size": 8, "beta": 0.02, **config},
                           status="succeeded")
    for i, (s, g) in enumerate(zip(std, gold)):
        store.log_metrics(rid, i + 1, {"reward_ensemble_std": s, "gold_score": g,
                                       "score_mean": 0.1 * i, "kl": 0.5 * i})
    return {**store.get_run(rid), "group_key": key}


def _members(k: int = 3) -> dict:
    return {f"rm_{i}": {"status": "succeeded", "config": {"seed": i},
                        "summary": {"eval_accuracy": 0.8}} for i in range(k)}


def test_a_lower_sigma_beyond_its_noise_shows_with_standard_errors(store):
    summarize = recipes()["uncertain_reward"].summarize
    runs = {**_members(),
            "ppo_mean": _ppo(store, "ppo_mean", [0.5, 0.6, 0.5, 0.6, 0.9, 1.1, 1.0, 1.2],
                             [0.5, 0.5, 0.4, 0.5, 0.3, 0.2, 0.3, 0.2]),
            "ppo_conservative": _ppo(store, "ppo_conservative",
                                     [0.5, 0.6, 0.5, 0.5, 0.5, 0.6, 0.5, 0.6],
                                     [0.5, 0.5, 0.5, 0.6, 0.6, 0.5, 0.6, 0.6],
                                     reward_aggregate="conservative", uncertainty_lambda=1.0)}
    out = summarize(store, {}, runs)
    assert out["sentence"]["key"] == "recipes.uncertain_reward.sentence_shows_gold"
    p = out["sentence"]["params"]
    # the last 4 of 8 steps: σ (0.9, 1.1, 1.0, 1.2) -> 1.05, s² = 0.05/3, SE = sqrt(0.05/12)
    assert (p["steps"], p["steps_half"], p["std_mean"]) == (8, 4, 1.05)
    assert p["std_mean_se"] == pytest.approx((0.05 / 12) ** 0.5, abs=1e-3)
    assert (p["std_cons"], p["d_std"], p["std0"]) == (0.55, 0.5, 0.55)
    assert (p["gold_mean"], p["gold_cons"], p["d_gold"]) == (0.25, 0.575, 0.325)
    assert (p["lam"], p["batch"], p["beta"]) == (1.0, 8, 0.02)
    check_wording(out["sentence"])


def test_a_difference_within_its_noise_does_not_show_and_names_the_gpu_size(store):
    summarize = recipes()["uncertain_reward"].summarize
    # the 10-step CPU run of docs/EXPERIMENTS.md (σ per step of both runs)
    mean_std = [0.90, 0.59, 0.52, 1.11, 0.68, 0.83, 0.57, 0.55, 0.41, 0.58]
    cons_std = [0.90, 0.59, 0.53, 0.89, 0.52, 0.61, 0.52, 0.60, 0.82, 0.49]
    runs = {**_members(),
            "ppo_mean": _ppo(store, "ppo_mean", mean_std, [0.5] * 10),
            "ppo_conservative": _ppo(store, "ppo_conservative", cons_std, [0.6] * 10,
                                     reward_aggregate="conservative", uncertainty_lambda=1.0)}
    out = summarize(store, {}, runs)
    assert out["sentence"]["key"] == "recipes.uncertain_reward.sentence_no_effect_gold"
    p = out["sentence"]["params"]
    assert (p["std_mean"], p["std_cons"], p["d_std"]) == (0.588, 0.608, -0.02)
    assert p["d_std_se"] == pytest.approx(0.089, abs=1e-3)
    # σ under the mean fell rather than rose: 0.76 (first 5 steps) -> 0.588
    assert (p["std0"], p["rise"]) == (0.76, -0.172)
    gpu = recipes()["uncertain_reward_gpu"].make_settings()
    assert (p["gpu_k"], p["gpu_steps"], p["gpu_batch"], p["gpu_beta"]) == \
        (gpu.k, gpu.ppo_steps, gpu.batch_size, gpu.beta)
    check_wording(out["sentence"])
    # 25% lower at the end, but the steps scatter more than that: no claim
    noisy = {**_members(),
             "ppo_mean": _ppo(store, "ppo_mean", [0.5, 0.5, 0.5, 0.5, 0.3, 1.3, 0.4, 1.2],
                              [0.5] * 8),
             "ppo_conservative": _ppo(store, "ppo_conservative",
                                      [0.5, 0.5, 0.5, 0.5, 0.2, 1.0, 0.3, 0.9], [0.5] * 8,
                                      reward_aggregate="conservative", uncertainty_lambda=1.0)}
    out = summarize(store, {}, noisy)
    assert out["sentence"]["key"] == "recipes.uncertain_reward.sentence_no_effect_gold"
    assert out["sentence"]["params"]["d_std"] == 0.2
    # a missing PPO run: no conclusion
    out = summarize(store, {}, {k: v for k, v in runs.items() if k != "ppo_conservative"})
    assert out["sentence"]["key"] == "recipes.incomplete"


def test_the_gpu_preset_is_a_second_recipe_the_page_offers():
    from engine.experiments.runner import check_plan
    from ui.i18n import catalogue

    cpu, gpu = recipes()["uncertain_reward"], recipes()["uncertain_reward_gpu"]
    assert (cpu.device, gpu.device) == ("cpu", "gpu")
    assert gpu.summarize is cpu.summarize and gpu.plan is cpu.plan
    s, c = gpu.make_settings(), cpu.make_settings()
    assert s.ppo_steps >= 10 * c.ppo_steps and s.batch_size >= 4 * c.batch_size
    plan = gpu.plan(s)
    check_plan(plan)
    assert [p.key for p in plan][-2:] == ["ppo_mean", "ppo_conservative"]
    assert len(plan) == s.k + 2
    for lang in ("en", "fr"):
        cat = catalogue(lang)
        assert "recipes.uncertain_reward_gpu.title" in cat
        assert "recipes.uncertain_reward_gpu.text" in cat
        assert "{minutes}" in cat["experiments.recipe_meta_gpu"]


def test_the_experiments_page_offers_the_gpu_preset_with_its_own_caption(tiny_model_dir):
    from tests.conftest import app_with_model
    from ui.i18n import catalogue

    at = app_with_model(tiny_model_dir, "views/experiments.py")
    assert not at.exception, at.exception
    cat = catalogue("en")
    assert cat["recipes.uncertain_reward_gpu.title"] in [h.value for h in at.subheader]
    # the words between the minutes and the runs: "min on one GPU …" / "min on a 2-core CPU …"
    gpu_words = cat["experiments.recipe_meta_gpu"].split("{minutes}")[1].split("·")[0]
    cpu_words = cat["experiments.recipe_meta"].split("{minutes}")[1].split("·")[0]
    captions = [c.value for c in at.caption]
    assert sum(gpu_words in c for c in captions) == 1
    assert sum(cpu_words in c for c in captions) == len(recipes()) - 1
