"""A real browser (Debian's chromium, driven by Playwright) opens a finished run group on
the Experiments page: its charts, summary sentence and table (issue 16)."""
from __future__ import annotations

import os

import pytest

from engine.experiments import runner
from engine.experiments.plan import parse_vary
from tests.test_browser_home import ARTIFACTS, CHROMIUM, page_on_fresh_server, wait_idle
from tests.test_experiments import toy_sft_dataset

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                reason="Debian's chromium is not installed (apt-get install chromium)")


def _ppo_sweep(store, tiny_model_dir) -> int:
    """PPO on the tiny model, clip ε = 0.05 against no clip (a built-in rule reward:
    answers of three words)."""
    toy_sft_dataset(store, "prompts")
    base = {"model": str(tiny_model_dir), "dataset": "prompts", "max_steps": 5,
            "batch_size": 4, "minibatches": 2, "ppo_epochs": 2, "max_new_tokens": 6,
            "temperature": 1.0, "learning_rate": 3e-3, "save_every": 0,
            "samples_per_step": 2, "builtin_reward": "target_length",
            "reward_params": {"target": 3}}
    group_id = runner.create_sweep(store, "ppo", base,
                                   parse_vary(["cliprange=0.05,inf"], "ppo"), name="clip ε")
    run = runner.run_group_sync(store, group_id)
    assert run["status"] == "succeeded", run["error"]
    return group_id


def test_browser_opens_a_finished_group_and_its_charts(store, lab_home, tiny_model_dir):
    from tests.test_recipes import _tiny

    group_id = _ppo_sweep(store, tiny_model_dir)
    sentence = store.get_group(group_id)["summary"]["sentence"]
    assert sentence["key"] == "experiments.sweep_best_high"
    recipe_id = runner.create_recipe_group(store, "clip_epsilon",
                                           _tiny(tiny_model_dir, "clip_epsilon"))
    assert runner.run_group_sync(store, recipe_id)["status"] == "succeeded"
    with page_on_fresh_server(lab_home, "/experiments") as page:
        main = page.get_by_test_id("stMain")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # the newest group opens first: the recipe, its four charts (ratio histograms too)
        main.get_by_text("PPO instability and the clip ε").first.wait_for(timeout=60_000)
        wait_idle(page)
        charts = main.locator('[data-testid="stVegaLiteChart"]')
        charts.nth(3).wait_for(timeout=30_000)
        for i in range(4):
            charts.nth(i).locator("canvas, svg").first.wait_for(timeout=30_000)
        page.set_viewport_size({"width": 1400, "height": 2200})
        wait_idle(page)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ARTIFACTS / "experiments-recipe-group.png"), full_page=True)
        assert charts.count() == 4
        assert "Ratio π_θ/π_old at the last step" in main.inner_text()
        page.set_viewport_size({"width": 1400, "height": 1000})

        # the sweep, picked in the list
        main.get_by_test_id("stSelectbox").first.click()
        page.get_by_role("option", name=f"#{group_id} clip ε · Sweep of PPO").click()
        main.get_by_text(f"#{group_id} clip ε").first.wait_for(timeout=60_000)
        wait_idle(page)
        main.get_by_text("Best final").first.wait_for(timeout=30_000)
        charts.nth(2).wait_for(timeout=30_000)
        # every chart has drawn its lines (Vega renders SVG paths or a canvas)
        for i in range(3):
            charts.nth(i).locator("canvas, svg").first.wait_for(timeout=30_000)
        page.wait_for_timeout(1500)  # the charts' fade-in
        page.set_viewport_size({"width": 1400, "height": 2200})  # the whole group view
        wait_idle(page)
        page.screenshot(path=str(ARTIFACTS / "experiments-group.png"), full_page=True)
        assert charts.count() == 3                      # score, KL, clip fraction
        text = main.inner_text()
        assert f"with {sentence['params']['best_run']}" in text, text
        assert "2 of 2 runs done" in text, text

        page.set_viewport_size({"width": 1400, "height": 1000})
        page.get_by_role("tab", name="Recipes").click()
        wait_idle(page)
        page.screenshot(path=str(ARTIFACTS / "experiments-recipes.png"), full_page=True)
        page.get_by_role("tab", name="Custom sweep").click()
        wait_idle(page)
        main.get_by_text("Setting to vary").first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "experiments-sweep.png"), full_page=True)
