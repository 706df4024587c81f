"""Names and charts on screen (issue 25, items 6 and 7): no internal stage or metric name
(the Runs filter's "ai_feedback", the PPO caption's "score_mean: …"), legends never cut
off, and the Data page's length histograms not squeezed."""
import json

from streamlit.testing.v1 import AppTest

from engine.runtime.stages import BUILTIN
from tests.conftest import ROOT
from ui.i18n import catalogue


def page(path: str, lang: str = "en") -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.session_state["lang"] = lang
    at.run()
    return at.switch_page(path).run()


def charts(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def test_every_stage_has_a_name_on_the_runs_page_in_both_languages(store):
    for lang in ("en", "fr"):
        missing = [s for s in BUILTIN if f"runs.stage_{s}" not in catalogue(lang)]
        assert not missing, (lang, missing)
    run = store.create_run("ai_feedback", {}, name="judge")
    store.update_run(run, status="succeeded")
    at = page("views/runs.py")
    assert not at.exception
    assert "AI feedback" in at.multiselect[0].options
    assert "ai_feedback" not in at.multiselect[0].options
    assert "Retour d'IA" in page("views/runs.py", "fr").multiselect[0].options


def ppo_run(store) -> int:
    run = store.create_run("ppo", {"dataset": "sample-preferences", "beta": 0.05},
                           name="ppo-done")
    store.update_run(run, status="succeeded", step=3, total_steps=3)
    for step in range(4):
        store.log_metrics(run, step, {
            "score_mean": 0.1 * step, "rlhf_reward": 0.1 * step - 0.01,
            "non_score_reward": -0.01 * step, "kl": 0.02 * step,
            "advantage_std_raw": 1.0, "value_mean": 0.2, "return_mean": 0.3,
            "time_generate": 1.0, "time_score": 1.0, "time_train": 2.0})
    return run


def test_ppo_captions_name_metrics_as_the_legends_do(store):
    ppo_run(store)
    for lang, score in (("en", "Mean score: R(x, y)"), ("fr", "Score moyen : R(x, y)")):
        at = page("views/ppo.py", lang)
        assert not at.exception
        captions = " ".join(c.value for c in at.caption)
        assert score in captions
        for raw in ("score_mean", "non_score_reward", "rlhf_reward", "advantage_std_raw",
                    "value_mean", "return_mean", "generate:", "train:"):
            assert raw not in captions, (lang, raw)


def test_legends_are_never_cut_and_leave_the_plot_its_height(store):
    ppo_run(store)
    at = page("views/ppo.py", "fr")
    with_legend = [c for c in charts(at) if any(
        (layer["encoding"].get("color") or {}).get("legend") for layer in c.get("layer", []))]
    assert with_legend
    for spec in with_legend:
        legend = spec["layer"][-1]["encoding"]["color"]["legend"]
        assert legend["labelLimit"] == 0 and legend["orient"] == "bottom"
    reward = next(c for c in with_legend if c["title"] == catalogue("fr")["ppo.chart_reward"])
    assert reward["height"] >= 220 + 3 * 24  # its 3 legend lines come on top of the plot


def test_length_histograms_are_not_squeezed_by_a_chart_height(store):
    at = page("views/data.py")
    assert not at.exception
    histograms = [c for c in charts(at) if c.get("mark", {}).get("type") == "bar"]
    assert len(histograms) == 3  # prompt, chosen, rejected of sample-preferences
    for spec in histograms:
        # a height on the chart was shared with its title and axes: ~25 px of bars
        assert "height" not in spec
        assert spec["config"]["axis"]["labelOverlap"] is True
