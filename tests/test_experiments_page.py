"""The Experiments page (issue 16): a finished group (made by the engine on the tiny model)
shows its charts, summary table and sentence; a sweep of more than 6 runs asks first."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from engine.experiments import plan as plan_mod
from engine.experiments import runner
from engine.experiments.plan import Chart, PlannedRun, Recipe, parse_vary, register
from engine.runtime import stages
from tests.conftest import app_with_model
from tests.test_experiments import toy_sft_dataset  # (and registers the "tick" stage)
from tests.test_metrics_labels import charts   # (spec, data) of every Vega-Lite chart


def _sft_sweep(store, tiny_model_dir) -> int:
    toy_sft_dataset(store)
    base = {"model": str(tiny_model_dir), "dataset": "toy", "max_steps": 3, "batch_size": 2,
            "eval_every": 0, "save_every": 0, "eval_samples": 0, "max_length": 64}
    group_id = runner.create_sweep(store, "sft", base,
                                   parse_vary(["learning_rate=1e-3,2e-2"], "sft"), name="lr sweep")
    assert runner.run_group_sync(store, group_id)["status"] == "succeeded"
    return group_id


def test_a_finished_sweep_shows_its_charts_table_and_sentence(store, tiny_model_dir):
    group_id = _sft_sweep(store, tiny_model_dir)
    at = app_with_model(tiny_model_dir, "views/experiments.py")
    for lang in ("en", "fr"):
        at.session_state["lang"] = lang
        at.run()
        assert not at.exception
        _check_sweep_view(at, store, group_id, lang)


def _check_sweep_view(at, store, group_id: int, lang: str) -> None:
    from ui.common import metric_label
    from ui.i18n import t

    assert at.selectbox(key="exp_pick").value == group_id
    drawn = charts(at)
    titles = [spec["title"] for spec, _ in drawn]
    assert metric_label("train_loss", lang) in titles
    spec, data = drawn[titles.index(metric_label("train_loss", lang))]
    assert data.groupby("series").size().to_dict() == {"learning_rate=0.001": 3,
                                                       "learning_rate=0.02": 3}
    assert spec["encoding"]["x"]["title"] == t("common.step", lang=lang)
    # the summary: one row per run, the varied value and the last train loss
    rate = t("settings.learning_rate", lang=lang)
    table = [df.value for df in at.dataframe if rate in df.value.columns]
    assert len(table) == 1, [list(df.value.columns) for df in at.dataframe]
    table = table[0]
    assert table[rate].tolist() == ["0.001", "0.02"]        # as typed
    assert table[metric_label("train_loss", lang)].notna().all()
    assert table[t("experiments.col_status", lang=lang)].tolist() == [t("common.status_succeeded", lang=lang)] * 2
    stored = store.get_group(group_id)["summary"]["sentence"]
    assert stored["key"] == "experiments.sweep_best_low" and stored["params"]["n"] == 2
    sentence = [i.value for i in at.info if stored["params"]["best_run"] in i.value]
    assert len(sentence) == 1 and metric_label("train_loss", lang) in sentence[0]
    assert sentence[0] == t("experiments.sweep_best_low", lang=lang, **{
        **stored["params"], "metric": metric_label("train_loss", lang)})


@dataclass
class HistConfig:
    value: float = 1.0
    steps: int = 3


def hist_stage(cfg: HistConfig, ctx):
    for step in range(1, cfg.steps + 1):
        bins = {f"ratio_hist_{k:02d}": float(k == 10 + step % 2) * cfg.value for k in range(20)}
        ctx.metrics(step, {"kl": 0.5 * step * cfg.value, "score_mean": cfg.value * step, **bins})
    return {"value": cfg.value}


stages.register("hist_test", HistConfig, hist_stage)


def test_a_recipe_group_draws_its_charts_hist_and_xy(store, tiny_model_dir):
    def summarize(st, group, runs):
        return {"table": [{"key": k, "score_mean": r["summary"]["value"]} for k, r in runs.items()],
                "sentence": {"key": "experiments.progress", "params": {"done": 2, "total": 2}}}

    register(Recipe("hist_recipe", HistConfig,
                    lambda s: [PlannedRun("a", "hist_test", {"value": 1.0}, "run a"),
                               PlannedRun("b", "hist_test", {"value": 2.0}, "run b")],
                    [Chart("metrics.score_mean", ["score_mean"], x="kl", x_transform="sqrt"),
                     Chart("metrics.ratio_hist_bin", ["ratio_hist"], kind="hist", runs=["b"])],
                    summarize, formula="clipped_policy_loss", minutes=1))
    try:
        group_id = runner.create_recipe_group(store, "hist_recipe")
        assert runner.run_group_sync(store, group_id)["status"] == "succeeded"
        at = app_with_model(tiny_model_dir, "views/experiments.py")
        assert not at.exception
        drawn = charts(at)
        xy = [(s, f) for s, f in drawn if s.get("mark", {}) == {"type": "line", "point": True}]
        assert len(xy) == 1
        data = xy[0][1]
        a = data[data["series"] == "run a"].sort_values("step")
        assert a["x"].round(4).tolist() == [round((0.5 * s) ** 0.5, 4) for s in (1, 2, 3)]
        assert xy[0][0]["encoding"]["x"]["title"].startswith("√")
        # two runs: their legend under the plot, never cut, its lines added to the height
        legend = xy[0][0]["encoding"]["color"]["legend"]
        assert legend["labelLimit"] == 0 and legend["orient"] == "bottom"
        assert xy[0][0]["height"] == 260 + 2 * 30
        hist = [(s, f) for s, f in drawn if s.get("mark") == "bar"]
        assert len(hist) == 1
        bars = hist[0][1]
        assert set(bars["label"]) == {"run b"} and bars["share"].sum() == pytest.approx(1.0)
        assert bars.loc[bars["share"].idxmax(), "bin"] == 11            # the last step's bin
        assert any("2 of 2 runs done" in i.value for i in at.info)       # the sentence
    finally:
        plan_mod.RECIPES.pop("hist_recipe", None)


def test_a_sweep_above_six_runs_asks_before_queuing(store, tiny_model_dir):
    from engine.runtime.jobs import get_manager

    at = app_with_model(tiny_model_dir, "views/experiments.py")
    assert not at.exception
    assert any("No group yet" in i.value for i in at.info)
    at.selectbox(key="exp_stage").set_value("sft").run()
    at.selectbox(key="exp_f1_sft").set_value("learning_rate").run()
    at.text_input(key="exp_v1_sft_learning_rate").set_value(
        "1e-4,2e-4,3e-4,4e-4,5e-4,6e-4,7e-4").run()
    assert not at.exception
    assert any("7 runs" in c.value for c in at.caption)
    at.button(key="exp_start_sweep").click().run()
    assert any("queues 7 runs" in w.value for w in at.warning)
    assert store.list_groups() == [] and store.list_runs() == []        # nothing queued yet
    at.button(key="exp_confirm_no").click().run()
    assert not any("queues 7 runs" in w.value for w in at.warning)
    assert store.list_groups() == []

    at.button(key="exp_start_sweep").click().run()
    at.button(key="exp_confirm_yes").click().run()
    assert not at.exception
    groups = store.list_groups()
    assert len(groups) == 1 and len(groups[0]["config"]["plan"]) == 7
    assert [p["varied"]["learning_rate"] for p in groups[0]["config"]["plan"]][-1] == 7e-4
    assert groups[0]["config"]["plan"][0]["config"]["model"] == str(tiny_model_dir)
    assert at.selectbox(key="exp_pick").value == groups[0]["id"]
    jobs = get_manager(store)
    runner.cancel_group(jobs, store, groups[0]["id"])
    jobs.wait(groups[0]["run_id"], 60)


def test_a_bad_value_is_refused_on_the_page(store, tiny_model_dir):
    at = app_with_model(tiny_model_dir, "views/experiments.py")
    at.selectbox(key="exp_stage").set_value("ppo").run()
    at.selectbox(key="exp_f1_ppo").set_value("cliprange").run()
    at.text_input(key="exp_v1_ppo_cliprange").set_value("0.05,0.2,inf").run()
    assert any("3 runs" in c.value and "cliprange=inf" in c.value for c in at.caption)
    at.selectbox(key="exp_f2_ppo").set_value("beta").run()
    at.text_input(key="exp_v2_ppo_beta").set_value("0,500").run()
    assert any("beta" in e.value and "500 is above the maximum 100" in e.value for e in at.error)
    assert at.button(key="exp_start_sweep").disabled


def test_a_finished_recipe_group_on_the_tiny_model(store, tiny_model_dir):
    """clip_epsilon at tiny scale: its four charts (the ratio histograms side by side),
    table and the sentence its summarize computed."""
    from tests.test_recipes import _tiny
    from ui.i18n import t

    group_id = runner.create_recipe_group(store, "clip_epsilon",
                                          _tiny(tiny_model_dir, "clip_epsilon"))
    assert runner.run_group_sync(store, group_id)["status"] == "succeeded"
    at = app_with_model(tiny_model_dir, "views/experiments.py")
    assert not at.exception
    drawn = charts(at)
    titles = [spec["title"] for spec, _ in drawn]          # (two columns: in column order)
    assert sorted(titles) == sorted(t("recipes.clip_epsilon.chart_" + c) for c in
                                    ("clipfrac", "approx_kl", "score_std", "ratio"))
    bars = drawn[titles.index(t("recipes.clip_epsilon.chart_ratio"))][1]
    assert bars["label"].nunique() == 3                     # ε = 0.05, 0.2 and no clip
    assert bars.groupby("label")["share"].sum().round(6).eq(1.0).all()
    sentence = store.get_group(group_id)["summary"]["sentence"]
    assert any(i.value == t(sentence["key"], **sentence["params"]) for i in at.info)
    assert len(store.get_group(group_id)["summary"]["table"]) == 3


def test_cancel_and_resume_buttons_of_a_running_group(store, tiny_model_dir):
    from engine.runtime.jobs import get_manager
    from tests.test_experiments import _wait

    jobs = get_manager(store)   # the app's own job manager (same database)
    group_id = store.create_group("slow", {"plan": [
        PlannedRun("quick", "tick", {"steps": 1}).to_dict(),
        PlannedRun("slow", "tick", {"steps": 400, "delay": 0.05}).to_dict()]})
    exp_id = runner._start(jobs, store, group_id)
    assert _wait(lambda: any(r["group_key"] == "slow" and r["step"] >= 1
                             for r in store.group_runs(group_id)))
    at = app_with_model(tiny_model_dir, "views/experiments.py")
    assert not at.exception
    assert any("running slow: step" in p.proto.text for p in at.get("progress"))
    at.button(key=f"exp_cancel_{group_id}").click().run()
    assert jobs.wait(exp_id, 30) == "cancelled"
    at.run()
    assert store.get_group(group_id)["status"] == "cancelled"
    at.button(key=f"exp_resume_{group_id}").click().run()
    assert _wait(lambda: store.get_run(exp_id)["status"] == "running")
    slow = store.group_runs(group_id)[1]
    assert _wait(lambda: store.get_run(slow["id"])["status"] == "running")
    runner.cancel_group(jobs, store, group_id)
    assert jobs.wait(exp_id, 30) == "cancelled"
    assert [r["status"] for r in store.group_runs(group_id)] == ["succeeded", "cancelled"]
