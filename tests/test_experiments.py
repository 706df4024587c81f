"""Run groups (issue 16): sweeps validated before anything is stored, the `experiment`
stage running planned runs one after another (refs, cancel and resume, failures), the
`sweep` CLI."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

from engine.experiments import plan as plan_mod
from engine.experiments.plan import (Chart, PlannedRun, Recipe, expand_sweep, parse_vary,
                                     ref, register)
from engine.experiments import runner
from engine.runtime import stages
from engine.runtime.jobs import JobManager
from engine.schema import ConfigError


# -- tiny stages: a counter that checkpoints, and one that reads another run's summary -----
@dataclass
class TickConfig:
    steps: int = 3
    delay: float = 0.0
    fail: bool = False
    source: int | None = None     # a run whose summary["value"] is added to ours
    value: int = 1


def tick_stage(cfg: TickConfig, ctx):
    if cfg.fail:
        raise RuntimeError("tick failed on purpose")
    # a resumed run goes on from the last step it reported
    start = ctx.store.get_run(ctx.run_id)["step"] if ctx.resume else 0
    step = start
    while step < cfg.steps:
        ctx.check_cancel()
        step += 1
        ctx.metrics(step, {"loss": 1.0 / step})
        ctx.progress(step, cfg.steps)
        time.sleep(cfg.delay)
    value = cfg.value
    if cfg.source is not None:
        value += ctx.store.get_run(cfg.source)["summary"]["value"]
    return {"value": value, "started_at": start}


stages.register("tick", TickConfig, tick_stage)


def toy_sft_dataset(store, name: str = "toy") -> str:
    """Twelve sums to learn (three held out): SFT on the tiny model in a second a step."""
    store.create_dataset(name, "sft", eval_fraction=0.25)
    store.add_rows(name, [{"prompt": f"What is {a} plus {b}?", "response": f"{a + b}."}
                          for a in range(4) for b in range(3)])
    return name


def _group(store, planned: list[PlannedRun], name="g") -> int:
    return store.create_group(name, {"plan": [p.to_dict() for p in planned]}, stage="tick")


def started_tick_group(jobs, store, name: str, steps: int, delay: float) -> tuple[int, int]:
    """A group of one "tick" run started on `jobs`, returned once that run reported a step:
    (group id, the orchestrating run's id)."""
    group_id = store.create_group(name, {"plan": [PlannedRun(
        name, "tick", {"steps": steps, "delay": delay}).to_dict()]})
    exp_id = runner._start(jobs, store, group_id)
    assert _wait(lambda: any(r["step"] >= 1 for r in store.group_runs(group_id)))
    return group_id, exp_id


def _wait(predicate, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


# -- validation: nothing stored before every config is valid ----------------------------
def test_unknown_varied_field_is_refused_with_the_nearest_name(store):
    with pytest.raises(ConfigError) as err:
        parse_vary(["clip_range=0.1,0.2"], "ppo")
    assert err.value.field == "clip_range" and "did you mean cliprange?" in str(err.value)
    with pytest.raises(ConfigError, match="did you mean max_steps"):
        expand_sweep("sft", {}, {"max_step": [1, 2]})
    with pytest.raises(ConfigError, match=r"lora\.rr.*did you mean lora\.r\?"):
        parse_vary(["lora.rr=4,8"], "sft")
    assert store.list_groups() == [] and store.list_runs() == []


def test_value_out_of_bounds_names_the_field_and_the_value(store):
    with pytest.raises(ConfigError) as err:
        runner.create_sweep(store, "ppo", {}, parse_vary(["beta=0,200"], "ppo"))
    assert err.value.field == "beta"
    assert "200 is above the maximum 100" in str(err.value) and "beta=200" in str(err.value)
    with pytest.raises(ConfigError, match="lora.r: 0 is below the minimum 1"):
        expand_sweep("sft", {}, parse_vary(["lora.r=0,8"], "sft"))
    with pytest.raises(ConfigError, match="schedule: 'steep' is not one of"):
        expand_sweep("sft", {}, parse_vary(["schedule=cosine,steep"], "sft"))
    assert store.list_groups() == [] and store.list_runs() == []


def test_three_varied_fields_are_refused():
    with pytest.raises(ConfigError, match="at most 2 fields, not 3"):
        expand_sweep("ppo", {}, {"beta": [0.0], "cliprange": [0.2], "learning_rate": [1e-4]})


def test_inf_is_the_schema_maximum_when_it_means_no_limit():
    vary = parse_vary(["cliprange=0.05,0.2,inf", "cliprange_value=∞"], "ppo")
    assert vary == {"cliprange": [0.05, 0.2, 1e6], "cliprange_value": [1e6]}
    with pytest.raises(ConfigError, match="beta"):   # beta's maximum is 100: no "no limit"
        parse_vary(["beta=0,inf"], "ppo")
    vary = parse_vary(["cliprange=0.05,inf", "beta=0,0.3"], "ppo")
    planned = expand_sweep("ppo", {"max_steps": 2}, vary)
    assert [p.key for p in planned] == ["ppo_cliprange_0.05_beta_0", "ppo_cliprange_0.05_beta_0.3",
                                        "ppo_cliprange_inf_beta_0", "ppo_cliprange_inf_beta_0.3"]
    assert planned[2].config["cliprange"] == 1e6 and planned[2].config["max_steps"] == 2
    assert planned[2].label == "cliprange=inf, beta=0"
    assert planned[3].varied == {"cliprange": 1e6, "beta": 0.3}
    # a nested field keeps the stage's own nested defaults (PPO's LoRA dropout is 0)
    lora = expand_sweep("ppo", {}, parse_vary(["lora.r=4,8"], "ppo"))[1].config["lora"]
    assert lora["r"] == 8 and lora["dropout"] == 0.0


def test_refs_resolve_and_a_plan_is_checked():
    config = {"a": ref("x"), "b": [1, {"c": ref("y")}]}
    assert plan_mod.refs_of(config) == ["x", "y"]
    assert plan_mod.resolve_refs(config, {"x": 3, "y": 4}) == {"a": 3, "b": [1, {"c": 4}]}
    with pytest.raises(ConfigError, match="does not run before it"):
        runner.check_plan([PlannedRun("b", "tick", {"source": ref("a")}),
                           PlannedRun("a", "tick", {})])
    with pytest.raises(ConfigError, match="listed twice"):
        runner.check_plan([PlannedRun("a", "tick", {}), PlannedRun("a", "tick", {})])


# -- the runner ------------------------------------------------------------------------------
def test_sft_sweep_on_the_tiny_model_is_a_stored_group_with_a_summary_table(store,
                                                                             tiny_model_dir):
    toy_sft_dataset(store)
    base = {"model": str(tiny_model_dir), "dataset": "toy", "max_steps": 1, "batch_size": 2,
            "eval_every": 0, "save_every": 0, "eval_samples": 0, "max_length": 64}
    group_id = runner.create_sweep(store, "sft", base,
                                   parse_vary(["learning_rate=1e-3,5e-3"], "sft"))
    run = runner.run_group_sync(store, group_id)
    assert run["status"] == "succeeded", run["error"]
    group = store.get_group(group_id)
    assert group["status"] == "succeeded" and group["run_id"] == run["id"]
    assert group["stage"] == "sft" and group["recipe"] is None
    children = store.group_runs(group_id)
    assert [(r["stage"], r["group_key"], r["status"]) for r in children] == [
        ("sft", "sft_learning_rate_0.001", "succeeded"),
        ("sft", "sft_learning_rate_0.005", "succeeded")]
    assert [r["config"]["learning_rate"] for r in children] == [1e-3, 5e-3]
    table = group["summary"]["table"]
    assert [row["learning_rate"] for row in table] == [1e-3, 5e-3]
    assert all(row["status"] == "succeeded" and row["train_loss"] > 0 for row in table)
    assert [row["run_id"] for row in table] == [r["id"] for r in children]
    assert table[0]["summary"]["steps"] == 1           # the run's own summary
    view = runner.group_view(store, group_id)
    assert view["group"]["done"] == view["group"]["total"] == 2
    assert {(m["key"], m["name"]) for m in view["metrics"]} >= {
        ("sft_learning_rate_0.001", "train_loss"), ("sft_learning_rate_0.005", "train_loss")}
    assert [c["metrics"] for c in view["charts"]] == [["train_loss"], ["eval_loss"]]
    listed = runner.list_groups(store)
    assert [(g["id"], g["status"], g["done"], g["total"]) for g in listed] == [
        (group_id, "succeeded", 2, 2)]


def test_a_ref_is_replaced_by_the_id_of_the_run_it_names(store):
    group_id = _group(store, [PlannedRun("first", "tick", {"value": 5}),
                              PlannedRun("second", "tick", {"source": ref("first"), "value": 2})])
    run = runner.run_group_sync(store, group_id)
    assert run["status"] == "succeeded", run["error"]
    first, second = store.group_runs(group_id)
    assert second["config"]["source"] == first["id"] and second["parents"] == [first["id"]]
    assert second["summary"]["value"] == 7


def test_cancel_mid_group_then_resume_finishes_without_redoing_a_finished_run(store):
    jobs = JobManager(store)
    try:
        planned = [PlannedRun(f"r{i}", "tick", {"steps": 40, "delay": 0.05}) for i in range(3)]
        planned[0].config = {"steps": 2}
        group_id = store.create_group("g", {"plan": [p.to_dict() for p in planned]})
        exp_id = runner._start(jobs, store, group_id)
        assert _wait(lambda: any(r["group_key"] == "r1" and r["step"] >= 2
                                 for r in store.group_runs(group_id)))
        assert runner.cancel_group(jobs, store, group_id)
        assert jobs.wait(exp_id, 30) == "cancelled"
        assert store.get_group(group_id)["status"] == "cancelled"
        r0, r1 = store.group_runs(group_id)
        assert (r0["status"], r1["status"]) == ("succeeded", "cancelled")
        done_at = r0["finished"]
        view = runner.group_view(store, group_id)
        assert [r["status"] for r in view["runs"]] == ["succeeded", "cancelled", "pending"]

        assert runner.resume_group(jobs, store, group_id) == exp_id
        assert jobs.wait(exp_id, 60) == "succeeded"
        runs = store.group_runs(group_id)
        assert [r["status"] for r in runs] == ["succeeded"] * 3
        assert runs[0]["finished"] == done_at                       # not run again
        assert runs[1]["id"] == r1["id"] and runs[1]["summary"]["started_at"] >= 2  # resumed
        assert store.get_group(group_id)["status"] == "succeeded"
    finally:
        jobs.shutdown()


def test_cancelling_a_child_from_the_runs_page_cancels_its_group(store):
    jobs = JobManager(store)
    try:
        group_id, exp_id = started_tick_group(jobs, store, "slow", steps=200, delay=0.05)
        child = store.group_runs(group_id)[0]
        assert jobs.cancel(child["id"])
        assert jobs.wait(exp_id, 30) == "cancelled"
        assert store.get_run(child["id"])["status"] == "cancelled"
        assert store.get_group(group_id)["status"] == "cancelled"
    finally:
        jobs.shutdown()


def test_a_failed_run_skips_the_runs_that_need_it_and_the_others_still_run(store):
    group_id = _group(store, [PlannedRun("bad", "tick", {"fail": True}),
                              PlannedRun("needs_bad", "tick", {"source": ref("bad")}),
                              PlannedRun("free", "tick", {"value": 3})])
    run = runner.run_group_sync(store, group_id)
    assert run["status"] == "failed"
    assert "needs_bad: skipped: needs bad (failed: RuntimeError: tick failed on purpose)" \
        in run["error"]
    group = store.get_group(group_id)
    assert group["status"] == "failed"
    assert set(group["summary"]["problems"]) == {"bad", "needs_bad"}
    assert [(r["group_key"], r["status"]) for r in store.group_runs(group_id)] == [
        ("bad", "failed"), ("free", "succeeded")]
    view = runner.group_view(store, group_id)
    assert [r["status"] for r in view["runs"]] == ["failed", "pending", "succeeded"]


def test_a_deleted_run_does_not_break_the_group_view(store):
    group_id = _group(store, [PlannedRun("a", "tick", {}), PlannedRun("b", "tick", {})])
    run = runner.run_group_sync(store, group_id)
    assert run["status"] == "succeeded"
    store.delete_run(store.group_runs(group_id)[0]["id"])
    store.delete_run(run["id"])
    view = runner.group_view(store, group_id)
    assert [r["status"] for r in view["runs"]] == ["pending", "succeeded"]
    assert view["group"]["done"] == 1 and view["experiment_run"] is None
    assert runner.list_groups(store)[0]["status"] == "succeeded"


def test_a_recipe_group_stores_what_its_summarize_computes(store):
    @dataclass
    class Size:
        runs: int = 2

    def summarize(st, group, runs):
        values = {k: r["summary"]["value"] for k, r in runs.items()}
        return {"table": [{"key": k, "value": v} for k, v in values.items()],
                "sentence": {"key": "experiments.test_sentence", "params": {"total": sum(values.values())}}}

    register(Recipe("tick_test", Size,
                    lambda s: [PlannedRun(f"t{i}", "tick", {"value": i + 1}) for i in range(s.runs)],
                    [Chart("metrics.loss", ["loss"])], summarize, minutes=0.1))
    try:
        jobs = JobManager(store)
        try:
            group_id = runner.submit_recipe(jobs, store, "tick_test", {"runs": 3})
            exp_id = store.get_group(group_id)["run_id"]
            assert jobs.wait(exp_id, 30) == "succeeded"
        finally:
            jobs.shutdown()
        group = store.get_group(group_id)
        assert group["recipe"] == "tick_test" and group["config"]["settings"] == {"runs": 3}
        assert group["summary"]["sentence"]["params"] == {"total": 6}
        assert [row["value"] for row in group["summary"]["table"]] == [1, 2, 3]
        view = runner.group_view(store, group_id)
        assert view["charts"][0]["metrics"] == ["loss"] and len(view["metrics"]) == 9
        with pytest.raises(ConfigError, match="runs"):
            runner.create_recipe_group(store, "tick_test", {"runz": 1})
    finally:
        plan_mod.RECIPES.pop("tick_test", None)


# -- the CLI ---------------------------------------------------------------------------------
def test_cli_sweep_prints_the_group_and_a_bad_vary_exits_2(store, tiny_model_dir, capsys):
    from engine.__main__ import main

    store.create_dataset("toy", "sft", eval_fraction=0)
    store.add_rows("toy", [{"prompt": f"Say {i}.", "response": f"{i}."} for i in range(6)])
    common = ["--db", str(store.path), "sweep", "sft", "--set", f"model={tiny_model_dir}",
              "--set", "dataset=toy", "--set", "max_steps=1", "--set", "batch_size=2",
              "--set", "eval_every=0", "--set", "save_every=0", "--set", "eval_samples=0"]
    assert main(common + ["--vary", "lora.r=2,4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["group"]["status"] == "succeeded" and out["group"]["stage"] == "sft"
    assert [(r["key"], r["status"], r["varied"]) for r in out["runs"]] == [
        ("sft_lora.r_2", "succeeded", {"lora.r": 2}), ("sft_lora.r_4", "succeeded", {"lora.r": 4})]
    assert all(isinstance(r["id"], int) and r["summary"]["steps"] == 1 for r in out["runs"])
    assert out["seconds"] > 0 and len(out["group"]["summary"]["table"]) == 2
    groups = len(store.list_groups())
    runs = len(store.list_runs())

    assert main(common + ["--vary", "lora.rank=2,4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "lora.rank" in err and "did you mean lora.r" in err
    assert main(common + ["--vary", "learning_rate=1e-3,-1"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate: -1 is below the minimum" in err
    assert len(store.list_groups()) == groups and len(store.list_runs()) == runs


def test_cli_experiment_runs_a_recipe_and_says_its_sentence_in_english(store, capsys):
    from engine.__main__ import main

    @dataclass
    class Size:
        runs: int = 2

    def summarize(st, group, runs):
        done = sum(r["status"] == "succeeded" for r in runs.values())
        return {"table": [{"key": k, "value": r["summary"]["value"]} for k, r in runs.items()],
                "sentence": {"key": "experiments.progress",
                             "params": {"done": done, "total": len(runs)}}}

    register(Recipe("tick_cli", Size,
                    lambda s: [PlannedRun(f"t{i}", "tick", {"value": i}) for i in range(s.runs)],
                    [Chart("metrics.loss", ["loss"])], summarize))
    try:
        assert main(["--db", str(store.path), "experiment", "tick_cli", "--set", "runs=3"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["sentence"] == "3 of 3 runs done"
        assert out["group"]["recipe"] == "tick_cli" and out["group"]["status"] == "succeeded"
        assert [(r["key"], r["status"], r["summary"]["value"]) for r in out["runs"]] == [
            ("t0", "succeeded", 0), ("t1", "succeeded", 1), ("t2", "succeeded", 2)]
        assert main(["--db", str(store.path), "experiment", "tick_cli", "--set", "runz=3"]) == 2
        assert "runz" in capsys.readouterr().err and len(store.list_groups()) == 1
    finally:
        plan_mod.RECIPES.pop("tick_cli", None)


def test_cli_experiment_list_and_an_unknown_recipe(store, capsys):
    from engine.__main__ import main

    assert main(["--db", str(store.path), "experiment", "list"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert isinstance(listed, list)
    assert all({"name", "title", "minutes", "runs", "settings"} <= set(r) for r in listed)
    assert main(["--db", str(store.path), "experiment", "no_such_recipe"]) == 2
    assert "unknown recipe 'no_such_recipe'" in capsys.readouterr().err


def test_cancelling_a_cli_sweeps_run_from_another_process_cancels_the_group(store,
                                                                            tiny_model_dir):
    """The Runs page of the app (another process) cancels the child the CLI is running: the
    CLI gets SIGTERM, the child and the group end cancelled, the next run never starts."""
    import subprocess
    import sys

    from tests.conftest import ROOT
    from tests.test_faults import subprocess_env, wait_until

    toy_sft_dataset(store)
    cli = subprocess.Popen(
        [sys.executable, "-m", "engine", "--db", str(store.path), "sweep", "sft",
         "--vary", "learning_rate=1e-3,2e-3", "--set", f"model={tiny_model_dir}",
         "--set", "dataset=toy", "--set", "max_steps=100000", "--set", "batch_size=2",
         "--set", "eval_every=0", "--set", "eval_samples=0"],
        cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        child = wait_until(lambda: next((r for r in store.group_runs(1) if r["status"] ==
                                         "running" and (r["step"] or 0) >= 1), None),
                           180, "the sweep's first run to train", cli)
        assert child["pid"] == cli.pid and child["group_key"] == "sft_learning_rate_0.001"
        assert JobManager(store).cancel(child["id"]) is True
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    assert cli.returncode == 1, err.decode()[-2000:]
    report = json.loads(out)
    assert report["group"]["status"] == "cancelled"
    assert [r["status"] for r in report["runs"]] == ["cancelled", "pending"]
    assert store.get_run(child["id"])["status"] == "cancelled"
    assert [r["id"] for r in store.list_runs(stage="sft")] == [child["id"]]


def test_a_sweep_whose_runs_all_end_alike_says_so_instead_of_naming_a_best():
    from engine.experiments.runner import sweep_sentence

    group = {"stage": "ppo", "config": {"vary": {"cliprange": [0.2, 1e6]}}}
    same = [{"key": "a", "cliprange": 0.2, "status": "succeeded", "score_mean": 0.375},
            {"key": "b", "cliprange": 1e6, "status": "succeeded", "score_mean": 0.375}]
    out = sweep_sentence(group, same)
    assert out["key"] == "experiments.sweep_same" and out["params"]["value"] == "0.375"
    differ = [dict(same[0]), dict(same[1], score_mean=0.5)]
    out = sweep_sentence(group, differ)
    assert out["key"] == "experiments.sweep_best_high" and out["params"]["best"] == "0.5"
