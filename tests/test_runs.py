"""The runs page and engine.runtime.runs: overview, key metrics, open, overlay, clone, resume,
delete (only that run), and a page that still renders with 100 runs / 50,000 metrics."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pyarrow as pa
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine.runtime import runs as R
from engine.runtime.jobs import get_manager
from engine.inference.models import run_dir
from storage import NotFound
from tests.conftest import ROOT
from tests.job_helpers import registered_stages
from ui.common import widget_key

PAGE = str(ROOT / "views" / "runs.py")


@dataclass
class TickConfig:
    steps: int = 3
    lr: float = 0.1


def tick_stage(cfg: TickConfig, ctx):
    """A tiny training-like stage: resumes from ckpt.txt, logs a loss per step."""
    ckpt = ctx.run_dir / "ckpt.txt"
    start = int(ckpt.read_text()) if ctx.resume and ckpt.exists() else 0
    for step in range(start + 1, cfg.steps + 1):
        ctx.check_cancel()
        ctx.metrics(step, {"loss": cfg.lr / step})
        ctx.progress(step, cfg.steps)
        ckpt.write_text(str(step))
    return {"final_loss": cfg.lr / cfg.steps, "resumed_from": start}


stand_in_stages = registered_stages(runs_tick=(TickConfig, tick_stage, False))


@pytest.fixture(autouse=True)
def fresh_handles():
    # ui.common keeps the store and the job manager in st.cache_resource: one per test
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def app() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=60)


def finished_run(store, stage, config, status="succeeded", parents=None, metrics=None,
                 seconds=60.0, name=None):
    rid = store.create_run(stage, config, name=name, parents=parents,
                           model=config.get("model"), dataset=config.get("dataset"))
    now = time.time()
    store.update_run(rid, status=status, started=now - seconds, finished=now)
    for step, values in (metrics or {}).items():
        store.log_metrics(rid, step, values)
    return rid


def chart_frames(at) -> list:
    """The data of every Altair chart on the page, as DataFrames."""
    def walk(node):
        for child in getattr(node, "children", {}).values():
            yield child
            yield from walk(child)
    out = []
    for el in walk(at.main):
        if getattr(el, "type", None) == "vega_lite_chart":
            for ds in el.proto.datasets:
                out.append(pa.ipc.open_stream(ds.data.data).read_all().to_pandas())
    return out


# -- engine.runtime.runs ----------------------------------------------------------------------------
def test_key_metric_prefers_eval_then_summary():
    assert R.key_metric({"stage": "sft", "last_metrics": {"train_loss": 1.0, "eval_loss": 2.0}}) \
        == ("eval_loss", 2.0)
    assert R.key_metric({"stage": "reward", "last_metrics": {"loss": 0.5, "eval_accuracy": 0.8}}) \
        == ("eval_accuracy", 0.8)
    assert R.key_metric({"stage": "ppo", "last_metrics": {"policy_loss": 0.1, "kl": 0.2,
                                                          "score_mean": 1.5}}) == ("score_mean", 1.5)
    assert R.key_metric({"stage": "sft", "last_metrics": {},
                         "summary": {"final_train_loss": 0.7, "adapter": "x"}}) \
        == ("final_train_loss", 0.7)
    assert R.key_metric({"stage": "export", "summary": {"adapter": "x"}}) == (None, None)
    # a known stage's ids and timestamps are not its key metric
    assert R.key_metric({"stage": "export", "summary": {"run_id": 3, "created": 1.7e9}}) \
        == (None, None)
    assert R.key_metric({"stage": "pair_sample", "summary": {"seed": 1, "attempts": 1,
                                                             "seconds": 2.5}}) == ("seconds", 2.5)
    # a stage a plugin registered: its first number, for want of a better one
    assert R.key_metric({"stage": "my_stage", "summary": {"b": 2.0, "a": 1.0}}) == ("a", 1.0)


def test_overview_filters_and_search(store):
    a = finished_run(store, "sft", {"dataset": "d1"}, name="alpha",
                     metrics={1: {"train_loss": 2.0}, 2: {"train_loss": 1.5}})
    b = finished_run(store, "reward", {}, status="failed", name="beta", parents=[a])
    rows = R.overview(store)
    assert [r["id"] for r in rows] == [b, a]
    assert rows[1]["metric"] == "train_loss" and rows[1]["value"] == 1.5
    assert rows[1]["n_metrics"] == 2 and rows[0]["parents"] == f"#{a}"
    assert 59 < rows[1]["duration"] < 61
    assert [r["id"] for r in R.overview(store, stages_=["sft"])] == [a]
    assert [r["id"] for r in R.overview(store, statuses=["failed"])] == [b]
    assert [r["id"] for r in R.overview(store, search="ALP")] == [a]
    assert [r["id"] for r in R.overview(store, search=f"#{b}")] == [b]


def test_clone_validates_config_and_keeps_parents(store):
    parent = finished_run(store, "sft", {})
    src = finished_run(store, "runs_tick", {"steps": 2, "lr": 0.5}, parents=[parent])
    assert R.clone_config(store, src) == ("runs_tick", {"steps": 2, "lr": 0.5})
    jobs = get_manager(store)
    with pytest.raises(ValueError, match="bogus"):
        R.clone_run(jobs, src, '{"bogus": 1}')
    with pytest.raises(ValueError, match="JSON"):
        R.clone_run(jobs, src, "{not json")
    new = R.clone_run(jobs, src, {"steps": 4, "lr": 0.5})
    assert jobs.wait(new, 30) == "succeeded"
    run = store.get_run(new)
    assert run["stage"] == "runs_tick" and run["parents"] == [parent]
    assert run["config"] == {"steps": 4, "lr": 0.5}
    assert R.config_diff([store.get_run(src), run]) == [{"field": "steps", f"#{src}": "2",
                                                         f"#{new}": "4"}]


def test_delete_refuses_a_running_run(store):
    rid = store.create_run("runs_tick", {})
    store.update_run(rid, status="running")
    with pytest.raises(ValueError, match="cancel"):
        R.delete_run(store, rid)
    assert store.get_run(rid)["status"] == "running"


# -- the page ---------------------------------------------------------------------------------
def test_page_without_runs(store):
    at = app().run()
    assert not at.exception
    assert at.info and "No runs yet" in at.info[0].value


def test_page_lists_and_opens_a_run(store):
    sft = finished_run(store, "sft", {"model": "embedded", "dataset": "demo", "max_steps": 3},
                       metrics={s: {"train_loss": 2.0 / s, "eval_loss": 2.5 / s} for s in (1, 2, 3)})
    store.add_samples(sft, 3, [{"prompt": "What is RLHF?", "response": "Alignment.",
                                "reference": "A method."}])
    store.log(sft, "adapter saved")
    store.add_artifact(sft, "adapter", run_dir(sft) / "adapter")
    rew = finished_run(store, "reward", {"dataset": "prefs"}, parents=[sft],
                       metrics={1: {"loss": 0.6, "eval_accuracy": 0.75}})
    ppo = finished_run(store, "ppo", {}, status="interrupted", parents=[sft, rew])

    at = app().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["id"]) == [ppo, rew, sft]
    assert "Eval accuracy = 0.75" in set(table["metric"])
    assert "Eval loss = 0.8333" in set(table["metric"])
    assert f"#{sft}, #{rew}" in set(table["parents"])

    at.multiselect(key=widget_key("runs_stage")).set_value(["reward"]).run()
    assert list(at.dataframe[0].value["id"]) == [rew]
    at.multiselect(key=widget_key("runs_stage")).set_value([]).run()
    at.text_input(key="runs_search").set_value(f"sft-{sft}").run()
    assert list(at.dataframe[0].value["id"]) == [sft]

    at.selectbox(key=widget_key("runs_open")).set_value(sft).run()
    assert not at.exception
    assert any(json.loads(j.value).get("dataset") == "demo" for j in at.json)  # its config
    samples = [d.value for d in at.dataframe if "response" in d.value.columns]
    assert samples and samples[0]["response"][0] == "Alignment."
    assert any("adapter saved" in c.value for c in at.code)  # its log
    assert any("path" in d.value.columns for d in at.dataframe)  # its artifacts
    frames = chart_frames(at)
    assert {f["name"].iloc[0] for f in frames} >= {"eval_loss", "train_loss"}
    at.slider(key="runs_smoothing").set_value(0.0).run()
    assert not at.exception


def test_page_in_french(store):
    finished_run(store, "sft", {}, metrics={1: {"train_loss": 1.0}})
    at = app()
    at.session_state["lang"] = "fr"
    at.run()
    assert not at.exception
    assert at.title[0].value.endswith("Exécutions")


def test_overlay_of_two_runs(store):
    a = finished_run(store, "sft", {"learning_rate": 1e-4},
                     metrics={s: {"train_loss": 2.0 - s / 10} for s in range(20)})
    b = finished_run(store, "sft", {"learning_rate": 3e-4},
                     metrics={s: {"train_loss": 2.0 - s / 5, "grad_norm": 1.0} for s in range(20)})
    finished_run(store, "reward", {}, metrics={1: {"loss": 0.5}})
    at = app().run()
    at.selectbox(key=widget_key("runs_overlay_stage")).set_value("sft").run()
    at.multiselect(key="runs_overlay_ids_sft").set_value([a, b]).run()
    assert not at.exception
    assert at.selectbox(key=widget_key("runs_overlay_metric")).options == ["Train loss"]
    overlay = [f for f in chart_frames(at) if f["run"].nunique() == 2]  # (shared only)
    assert overlay and set(overlay[-1]["series"]) == {f"#{a} Train loss", f"#{b} Train loss"}
    diff = at.dataframe[-1].value
    assert list(diff.iloc[:, 0]) == ["learning_rate"]  # what differs in their configs


def test_resume_an_interrupted_run_from_the_page(store):
    rid = store.create_run("runs_tick", {"steps": 4, "lr": 0.2})
    store.update_run(rid, status="interrupted", started=time.time() - 5, step=2)
    (run_dir(rid) / "ckpt.txt").write_text("2")
    at = app().run()
    at.selectbox(key=widget_key("runs_open")).set_value(rid).run()
    at.button(key=f"resume-{rid}").click().run()
    assert not at.exception
    assert get_manager(store).wait(rid, 30) == "succeeded"
    run = store.get_run(rid)
    assert run["summary"]["resumed_from"] == 2
    assert [m["step"] for m in store.get_metrics(rid, ["loss"])] == [3, 4]


def test_clone_from_the_page_with_an_edited_config(store):
    src = finished_run(store, "runs_tick", {"steps": 2, "lr": 0.1})
    at = app().run()
    at.selectbox(key=widget_key("runs_open")).set_value(src).run()
    at.text_area(key=f"runs_clone_cfg_{src}").set_value(json.dumps({"steps": 5, "lr": 0.1})).run()
    at.text_input(key=f"runs_clone_name_{src}").set_value("longer").run()
    at.button(key=f"runs_clone_{src}").click().run()
    assert not at.exception
    new = [r for r in store.list_runs() if r["name"] == "longer"]
    assert len(new) == 1 and new[0]["config"]["steps"] == 5
    assert get_manager(store).wait(new[0]["id"], 30) == "succeeded"
    assert at.selectbox(key=widget_key("runs_open")).value == new[0]["id"]  # the copy is opened


def _seed_full_run(store, tag: str) -> int:
    rid = finished_run(store, "sft", {"dataset": tag},
                       metrics={s: {"train_loss": 1.0 / s} for s in (1, 2)})
    store.add_samples(rid, 1, [{"prompt": tag, "response": tag}])
    store.log(rid, f"log {tag}")
    folder = run_dir(rid)
    (folder / "adapter").mkdir()
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"weights " + tag.encode())
    store.add_artifact(rid, "adapter", folder / "adapter")
    return rid


def test_delete_from_the_page_removes_that_run_and_nothing_else(store, lab_home):
    keep = _seed_full_run(store, "keep")
    gone = _seed_full_run(store, "gone")
    outside = lab_home / "runs" / "notes.txt"
    outside.write_text("not a run")
    at = app().run()
    at.selectbox(key=widget_key("runs_open")).set_value(gone).run()
    at.button(key=f"runs_delete_{gone}").click().run()
    assert at.warning and "cannot be undone" in at.warning[0].value  # asks first
    assert store.get_run(gone)  # nothing deleted yet
    at.button(key="runs_delete_no").click().run()
    assert not at.warning and store.get_run(gone)
    at.button(key=f"runs_delete_{gone}").click().run()
    at.button(key="runs_delete_yes").click().run()
    assert not at.exception

    with pytest.raises(NotFound):
        store.get_run(gone)
    assert not store.get_metrics(gone) and not store.get_samples(gone)
    assert not store.get_log(gone) and not store.list_artifacts(gone)
    assert not (lab_home / "runs" / str(gone)).exists()
    # the other run and anything else in the runs folder are untouched
    assert store.get_run(keep)["status"] == "succeeded"
    assert len(store.get_metrics(keep)) == 2 and store.get_samples(keep)
    assert store.get_log(keep) and store.list_artifacts(keep)
    assert (lab_home / "runs" / str(keep) / "adapter" / "adapter_model.safetensors").read_bytes() \
        == b"weights keep"
    assert outside.read_text() == "not a run"
    assert list(at.dataframe[0].value["id"]) == [keep]
    assert any("was deleted" in s.value for s in at.success)


def test_page_renders_with_100_runs_and_50000_metric_rows(store):
    names = ("train_loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s")
    ids = []
    for i in range(100):
        rid = store.create_run(("sft", "reward", "ppo")[i % 3], {"seed": i})
        store.update_run(rid, status="succeeded", started=time.time() - 100, finished=time.time())
        ids.append(rid)
    # one long run (25,000 rows) and 99 short ones (the other 25,000)
    big = ids[0]
    store.db["metrics"].insert_all(
        ({"run_id": big, "step": s, "name": n, "value": 1.0 / (s + 1), "time": 0.0}
         for s in range(5000) for n in names), batch_size=5000)
    rows = []
    for rid in ids[1:]:
        rows += [{"run_id": rid, "step": s, "name": names[s % 2], "value": 1.0, "time": 0.0}
                 for s in range(253 if rid != ids[-1] else 25000 - 98 * 253)]
    store.db["metrics"].insert_all(rows, batch_size=5000)
    assert store.db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 50_000

    t0 = time.perf_counter()
    at = app().run()
    first = time.perf_counter() - t0
    assert not at.exception
    assert len(at.dataframe[0].value) == 100
    t0 = time.perf_counter()
    at.selectbox(key=widget_key("runs_open")).set_value(big).run()
    opened = time.perf_counter() - t0
    assert not at.exception
    frames = chart_frames(at)
    assert frames and max(len(f) for f in frames) <= 1200  # drawn downsampled
    assert len(store.get_metrics(big, ["train_loss"])) == 5000  # stored in full
    at.selectbox(key=widget_key("runs_overlay_stage")).set_value("sft").run()
    at.multiselect(key="runs_overlay_ids_sft").set_value([big, ids[3]]).run()
    assert not at.exception
    print(json.dumps({"first_render_s": round(first, 2), "open_big_run_s": round(opened, 2)}))


# -- light jobs (pair sampling, compare, export, try-outs) ---------------------------------
def test_light_jobs_are_left_out_unless_asked_for(store):
    sft = finished_run(store, "sft", {}, name="train")
    pair = finished_run(store, "pair_sample", {"prompt": "hi"}, name="pair-vote")
    cmp_ = finished_run(store, "compare", {}, name="cmp")
    assert all(R.is_light(s) for s in ("pair_sample", "compare", "export", "try", "score_text"))
    assert not R.is_light("sft") and not R.is_light("runs_tick") and not R.is_light("nope")
    assert [r["id"] for r in R.overview(store)] == [sft]
    every = R.overview(store, show_light=True)
    assert [r["id"] for r in every] == [cmp_, pair, sft]
    assert [r["light"] for r in every] == [True, True, False]
    assert [r["id"] for r in R.filter_rows(every, search="vote")] == []
    assert [r["id"] for r in R.filter_rows(every, search="vote", show_light=True)] == [pair]
    # a light stage picked in the stage filter is a request to see it
    assert [r["id"] for r in R.filter_rows(every, stages_=["pair_sample"])] == [pair]


def test_page_hides_pair_sampling_runs_until_the_toggle(store):
    sft = finished_run(store, "sft", {}, name="train")
    pairs = [finished_run(store, "pair_sample", {"prompt": "hi"}) for _ in range(2)]
    at = app().run()
    assert not at.exception
    assert list(at.dataframe[0].value["id"]) == [sft]
    assert "1 of 3 runs · 2 light jobs hidden" in at.caption[1].value
    assert at.multiselect(key=widget_key("runs_stage")).options == ["SFT"]
    at.toggle(key="runs_show_light").set_value(True).run()
    assert not at.exception
    assert list(at.dataframe[0].value["id"]) == pairs[::-1] + [sft]
    assert at.caption[1].value.startswith("3 of 3 runs")


# -- reward against KL (PPO, DPO, GRPO on shared axes) ---------------------------------------
def _three_rl_runs(store) -> tuple[int, int, int]:
    ppo = finished_run(store, "ppo", {}, name="ppo-a", metrics={
        s: {"kl": 0.01 * s, "score_mean": 0.1 * s, "policy_loss": 0.5} for s in range(1, 6)})
    # DPO: the KL of its greedy answers and the eval margin at each evaluation only
    dpo = finished_run(store, "dpo", {}, name="dpo-a", metrics={
        **{s: {"loss": 0.69 - 0.01 * s} for s in range(1, 5)},
        0: {"kl_to_ref": 0.0, "eval_reward_margin": 0.0, "eval_reward_accuracy": 0.5},
        5: {"loss": 0.6, "kl_to_ref": 0.2, "eval_reward_margin": 0.4,
            "eval_reward_accuracy": 0.75}})
    grpo = finished_run(store, "grpo", {}, name="grpo-a", metrics={
        s: {"kl": 0.02 * s, "reward_mean": -1 + 0.2 * s, "reward_std": 0.3} for s in (1, 2, 3)})
    return ppo, dpo, grpo


def test_reward_vs_kl_pairs_each_stage_with_its_metrics(store):
    ppo, dpo, grpo = _three_rl_runs(store)
    sft = finished_run(store, "sft", {}, metrics={1: {"train_loss": 1.0}})
    points = R.reward_vs_kl(store, [ppo, dpo, grpo, sft])
    by_run = {}
    for p in points:
        by_run.setdefault(p["run"], []).append(p)
    assert set(by_run) == {ppo, dpo, grpo}  # SFT has no such pair
    assert [(p["step"], p["kl"], p["reward"]) for p in by_run[dpo]] == [(0, 0.0, 0.0),
                                                                         (5, 0.2, 0.4)]
    assert {(p["kl_metric"], p["reward_metric"]) for p in points} == {
        ("kl", "score_mean"), ("kl_to_ref", "eval_reward_margin"), ("kl", "reward_mean")}
    assert len(by_run[ppo]) == 5 and by_run[ppo][-1]["reward"] == pytest.approx(0.5)
    # a DPO run without eval margins falls back on its eval accuracy
    only_acc = finished_run(store, "dpo", {}, metrics={
        0: {"kl_to_ref": 0.0, "eval_reward_accuracy": 0.5}})
    assert R.reward_kl_pair(store, store.get_run(only_acc)) == ("kl_to_ref",
                                                                 "eval_reward_accuracy")
    assert R.reward_kl_pair(store, store.get_run(sft)) is None


@pytest.mark.parametrize("lang", ["en", "fr"])
def test_overlay_draws_reward_against_kl_for_ppo_dpo_and_grpo(store, lang):
    from ui.common import metric_label
    from ui.i18n import t

    ppo, dpo, grpo = _three_rl_runs(store)
    at = app()
    at.session_state["lang"] = lang
    at.run()
    assert not at.exception
    picker = at.multiselect(key="runs_rkl_ids")
    assert sorted(picker.value) == sorted([ppo, dpo, grpo])  # one of each stage by default
    assert picker.label == t("runs.rkl_runs", lang=lang)
    charts = [el for el in _walk(at.main) if getattr(el, "type", None) == "vega_lite_chart"
              and '"kl_name"' in el.proto.spec]
    assert len(charts) == 1
    spec = json.loads(charts[0].proto.spec)
    assert spec["encoding"]["x"]["title"] == t("runs.rkl_x", lang=lang)
    assert spec["encoding"]["y"]["title"] == t("runs.rkl_y", lang=lang)
    assert spec["encoding"]["color"]["title"] == t("runs.rkl_legend", lang=lang)
    frame = [f for f in chart_frames(at) if "kl_name" in f.columns][0]
    assert frame.groupby("run").size().to_dict() == {ppo: 5, dpo: 2, grpo: 3}
    names = dict(zip(frame["run"], zip(frame["kl_name"], frame["reward_name"])))
    assert names[ppo] == (metric_label("kl", lang), metric_label("score_mean", lang))
    assert names[dpo] == (metric_label("kl_to_ref", lang),
                          metric_label("eval_reward_margin", lang))
    assert names[grpo] == (metric_label("kl", lang), metric_label("reward_mean", lang))
    stage = t("runs.stage_grpo", lang=lang)
    assert f"#{grpo} grpo-a · {stage}" in set(frame["series"])
    # fewer runs: only theirs are drawn
    picker.set_value([dpo]).run()
    assert not at.exception
    frame = [f for f in chart_frames(at) if "kl_name" in f.columns][0]
    assert set(frame["run"]) == {dpo}


def _walk(node):
    for child in getattr(node, "children", {}).values():
        yield child
        yield from _walk(child)
