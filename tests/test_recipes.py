"""The course's recipes (engine.experiments.recipes) and the gold_pairs stage: every plan
validates against its stages' schemas; the summaries' sentences follow the numbers (an
effect the numbers do not show gets the "does not show" wording); each recipe runs end to
end at tiny scale on the tiny model through the experiment runner."""
from __future__ import annotations

import pytest

from engine.experiments.catalogue import recipes
from engine.experiments.runner import check_plan, create_recipe_group, run_group_sync

NAMES = ("overoptimization", "clip_epsilon", "kl_penalty", "length_bias", "uncertain_reward")


def test_the_five_recipes_are_registered_with_a_formula_and_labels():
    from engine import schema
    from engine.objectives import LATEX
    from ui.i18n import catalogue

    known = recipes()
    assert set(NAMES) <= set(known)
    for name in NAMES:
        recipe = known[name]
        assert recipe.formula in LATEX, name
        for lang in ("en", "fr"):
            cat = catalogue(lang)
            for chart in recipe.charts:
                assert chart.title_key in cat, (lang, chart.title_key)
            for info in schema.describe(recipe.settings_cls):
                assert info.label_key in cat, (lang, name, info.label_key)
                assert any(k in cat for k in info.help_keys()), (lang, name, info.name)


@pytest.mark.parametrize("name", NAMES)
def test_every_planned_config_passes_its_stage_schema(name):
    recipe = recipes()[name]
    plan = recipe.plan(recipe.make_settings())
    check_plan(plan)   # refs filled with distinct dummy ids; every config validated
    assert len({p.key for p in plan}) == len(plan)


def test_a_bad_recipe_setting_is_refused_naming_the_field():
    from engine.schema import ConfigError

    with pytest.raises(ConfigError) as exc:
        recipes()["overoptimization"].make_settings({"gold_params": {"tagret": 3}})
    assert exc.value.field == "gold_params"
    with pytest.raises(ConfigError) as exc:
        recipes()["clip_epsilon"].make_settings({"batch_size": 6, "minibatches": 4})
    assert exc.value.field == "minibatches"


# -- the sentences follow the numbers ------------------------------------------------------
def _run(store, stage, metrics: dict[str, list[float]], key: str, **config) -> dict:
    rid = store.create_run(stage, config, status="succeeded")
    steps = len(next(iter(metrics.values())))
    for i in range(steps):
        store.log_metrics(rid, i + 1, {k: v[i] for k, v in metrics.items()})
    return {**store.get_run(rid), "group_key": key}


def test_clip_kl_and_length_sentences_follow_the_numbers(store):
    from engine.experiments.recipes import BETAS, EPSILONS, beta_key, eps_key

    recipe = recipes()["clip_epsilon"]
    akl = {0.05: [0.001, 0.002], 0.2: [0.004, 0.006], 1e6: [0.02, 0.05]}
    runs = {eps_key(e): _run(store, "ppo", {"approx_kl": akl[e], "clipfrac": [0.2, 0.3],
                                            "score_std": [0.4, 0.5], "ratio_min": [0.9, 0.8],
                                            "ratio_max": [1.1, 1.3], "score_mean": [0, 1],
                                            "kl": [0.1, 0.2]}, eps_key(e)) for e in EPSILONS}
    out = recipe.summarize(store, {}, runs)
    assert out["sentence"]["key"] == "recipes.clip_epsilon.sentence_shows"
    assert out["sentence"]["params"]["ratio"] == pytest.approx(23.3, abs=0.1)
    # the sentence's numbers: three significant digits, whole numbers from 1000 up
    assert out["sentence"]["params"]["kl_inf"] == 0.035
    assert out["sentence"]["params"]["score_inf"] == 1.0
    from engine.experiments.recipes import sig
    assert (sig(223.0463), sig(1074363.0), sig(0.0044123), sig(None)) == (223.0, 1074363,
                                                                           0.00441, None)
    same = {k: _run(store, "ppo", {"approx_kl": [0.01, 0.01], "clipfrac": [0, 0],
                                   "score_std": [1, 1], "ratio_min": [1, 1], "ratio_max": [1, 1],
                                   "score_mean": [0, 0], "kl": [0, 0]}, k) for k in runs}
    out = recipe.summarize(store, {}, same)
    assert out["sentence"]["key"] == "recipes.clip_epsilon.sentence_no_effect"

    recipe = recipes()["kl_penalty"]
    kls = {0.0: [0.5, 2.0, 4.0, 6.0], 0.05: [0.3, 1.0, 1.5, 2.0], 0.3: [0.2, 0.4, 0.5, 0.5]}
    runs = {beta_key(b): _run(store, "ppo", {"kl": kls[b], "score_mean": [0, .2, .4, .6],
                                             "distinct_1": [.6, .5, .4, .3],
                                             "distinct_2": [.9, .7, .5, .3] if b == 0 else
                                             [.9, .9, .85, .85],
                                             "self_similarity": [.1, .2, .3, .4]}, beta_key(b))
            for b in BETAS}
    out = recipe.summarize(store, {}, runs)
    assert out["sentence"]["key"] == "recipes.kl_penalty.sentence_shows_diversity"
    flat = {beta_key(b): _run(store, "ppo", {"kl": [0.2, 0.3, 0.3, 0.3], "score_mean": [0] * 4,
                                             "distinct_1": [.5] * 4, "distinct_2": [.8] * 4,
                                             "self_similarity": [.2] * 4}, beta_key(b))
            for b in BETAS}
    assert recipe.summarize(store, {}, flat)["sentence"]["key"] == \
        "recipes.kl_penalty.sentence_no_effect"

    recipe = recipes()["length_bias"]
    rm = {"rm_biased": {"status": "succeeded", "summary": {"length_correlation": 0.9}},
          "rm_balanced": {"status": "succeeded", "summary": {"length_correlation": 0.1}}}
    grow = {**rm, "ppo_biased": _run(store, "ppo", {"response_length": [20, 24, 30, 36, 40, 44],
                                                    "score_mean": [0] * 6,
                                                    "eos_fraction": [1] * 6}, "ppo_biased"),
            "ppo_balanced": _run(store, "ppo", {"response_length": [20, 21, 20, 19, 20, 21],
                                                "score_mean": [0] * 6,
                                                "eos_fraction": [1] * 6}, "ppo_balanced")}
    out = recipe.summarize(store, {}, grow)
    assert out["sentence"]["key"] == "recipes.length_bias.sentence_shows"
    assert out["sentence"]["params"]["b1"] == 40.0 and out["sentence"]["params"]["rho_b"] == 0.9
    both = dict(grow, ppo_balanced=grow["ppo_biased"])
    assert recipe.summarize(store, {}, both)["sentence"]["key"] == \
        "recipes.length_bias.sentence_no_effect"


# -- gold pairs --------------------------------------------------------------------------
def test_label_pairs_prefers_the_higher_gold_score_and_drops_ties():
    from engine.experiments.gold_pairs import label_pairs

    pairs, dropped = label_pairs(["p1", "p2", "p3", "p4"], ["a b c", "x", "same", "u"],
                                 ["a", "x y", "same", "v"], [0.5, -1.0, 0.0, 0.2],
                                 [-0.5, -0.2, 0.3, 0.2])
    assert dropped == 2          # identical answers, then a gold tie
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("a b c", "a"), ("x y", "x")]
    assert pairs[1]["meta"] == {"origin": "gold", "gold_chosen": -0.2, "gold_rejected": -1.0}


def test_gold_pairs_labels_the_models_own_answers_with_the_gold_rule(store, tiny_model_dir):
    from engine.runtime.jobs import run_sync
    from engine.training.rewards_builtin import target_length

    store.create_dataset("qs", "sft")
    store.add_rows("qs", [{"prompt": f"Question {i}?", "response": "ok"} for i in range(10)])
    run = run_sync(store, "gold_pairs", {"model": str(tiny_model_dir), "dataset": "qs",
                                         "num_prompts": 10, "max_new_tokens": 12,
                                         "gold_reward": "target_length",
                                         "gold_params": {"target": 3}, "out_dataset": "gold",
                                         "eval_fraction": 0.5})
    assert run["status"] == "succeeded", run["error"]
    rows = store.list_rows("gold")
    assert rows and run["summary"]["pairs"] == len(rows)
    assert run["summary"]["pairs"] + run["summary"]["dropped_ties"] == 10
    for row in rows:
        gc, gr = (target_length(row["prompt"], row[k], target=3) for k in ("chosen", "rejected"))
        assert gc > gr and row["meta"]["gold_chosen"] == pytest.approx(gc)
    assert {r["split"] for r in rows} <= {"train", "eval"}
    # a second run replaces the dataset (overwrite defaults on), a refused one keeps it
    from engine.runtime.stages import get

    cfg = get("gold_pairs").make_config({"model": str(tiny_model_dir), "dataset": "qs",
                                         "out_dataset": "gold", "overwrite": False})
    again = run_sync(store, "gold_pairs", cfg)
    assert again["status"] == "failed" and "exists" in again["error"]
    assert len(store.list_rows("gold")) == len(rows)


# -- each recipe end to end at tiny scale ------------------------------------------------------
TINY_PPO = {"max_new_tokens": 6, "batch_size": 4}


def _tiny(model_dir, name: str) -> dict:
    m = {"model": str(model_dir)}
    return {
        "overoptimization": {**m, "max_new_tokens": 6, "num_pairs": 8, "proxy_steps": 2,
                             "bon_prompts": 2, "n_max": 4, "rl_steps": 2, "rl_prompts": 2,
                             "group_size": 2, "gold_params": {"target": 3}},
        "clip_epsilon": {**m, **TINY_PPO, "max_steps": 1, "ppo_epochs": 2, "minibatches": 2},
        "kl_penalty": {**m, **TINY_PPO, "max_steps": 2},
        "length_bias": {**m, **TINY_PPO, "reward_steps": 2, "ppo_steps": 2},
        "uncertain_reward": {**m, **TINY_PPO, "k": 2, "reward_steps": 2, "ppo_steps": 2},
    }[name]


@pytest.mark.parametrize("name", NAMES)
def test_each_recipe_runs_end_to_end_at_tiny_scale(store, tiny_model_dir, name):
    from engine import data
    from engine.experiments.runner import charts_of, group_view

    data.ensure_sample_datasets(store)
    recipe = recipes()[name]
    group_id = create_recipe_group(store, name, _tiny(tiny_model_dir, name))
    run = run_group_sync(store, group_id)
    group = store.get_group(group_id)
    plan = group["config"]["plan"]
    runs = {r["group_key"]: r for r in store.group_runs(group_id)}
    failed = {k: (r["error"] or "")[:400] for k, r in runs.items() if r["status"] != "succeeded"}
    assert run["status"] == "succeeded" and not failed, (run["error"], failed)
    assert group["status"] == "succeeded" and group["recipe"] == name
    assert set(runs) == {p["key"] for p in plan}
    # every chart has something to draw
    view = group_view(store, group_id)
    drawn = {m["name"] for m in view["metrics"]}
    for chart in charts_of(group):
        assert drawn & set(chart.metrics) or chart.kind == "hist", chart
    summary = group["summary"]
    assert summary["table"], summary
    sentence = summary["sentence"]
    assert sentence["key"].startswith(f"recipes.{name}.sentence_"), sentence
    # the sentence formats with its params in both languages
    from ui.i18n import catalogue

    for lang in ("en", "fr"):
        text = catalogue(lang)[sentence["key"]]
        assert "{" not in text.format(**sentence["params"]), (lang, text)
    assert recipe.summarize(store, group, {k: r for k, r in runs.items()}) == \
        {k: v for k, v in summary.items() if k != "problems"}
