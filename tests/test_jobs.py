import math
import os
import threading
import time
from dataclasses import dataclass

import pytest

from engine import stages
from engine.jobs import JobManager, run_sync


@dataclass
class CountConfig:
    steps: int = 5
    fail_at: int = -1
    nan_at: int = -1
    delay: float = 0.0


def count_stage(cfg: CountConfig, ctx):
    start = 0
    ckpt = ctx.run_dir / "ckpt.txt"
    if ctx.resume and ckpt.exists():
        start = int(ckpt.read_text())
    for step in range(start + 1, cfg.steps + 1):
        ctx.check_cancel()
        if step == cfg.fail_at:
            raise RuntimeError(f"boom at {step}")
        loss = math.nan if step == cfg.nan_at else 1.0 / step
        ctx.metrics(step, {"loss": loss})
        ctx.progress(step, cfg.steps)
        ckpt.write_text(str(step))
        time.sleep(cfg.delay)
    return {"final_loss": 1.0 / cfg.steps, "started_at": start}


stages.register("count", CountConfig, count_stage)
stages.register("count_light", CountConfig, count_stage, light=True)


def test_job_succeeds_and_writes_metrics_each_step(store):
    jobs = JobManager(store)
    rid = jobs.submit("count", {"steps": 4})
    assert jobs.wait(rid, 30) == "succeeded"
    run = store.get_run(rid)
    assert run["summary"]["final_loss"] == 0.25 and run["progress"] == 1.0
    assert [m["step"] for m in store.get_metrics(rid, ["loss"])] == [1, 2, 3, 4]


def test_job_failure_keeps_the_traceback(store):
    jobs = JobManager(store)
    rid = jobs.submit("count", {"steps": 5, "fail_at": 3})
    assert jobs.wait(rid, 30) == "failed"
    err = store.get_run(rid)["error"]
    assert "boom at 3" in err and "Traceback" in err


def test_non_finite_loss_fails_naming_the_step(store):
    jobs = JobManager(store)
    rid = jobs.submit("count", {"steps": 5, "nan_at": 2})
    assert jobs.wait(rid, 30) == "failed"
    assert store.get_run(rid)["error"].startswith("step 2: loss is nan")


def test_cancel_takes_effect_within_one_step_and_resume_continues(store):
    jobs = JobManager(store)
    rid = jobs.submit("count", {"steps": 200, "delay": 0.05})
    while (store.get_run(rid)["step"] or 0) < 3:
        time.sleep(0.02)
    jobs.cancel(rid)
    step_at_cancel = store.get_run(rid)["step"]
    assert jobs.wait(rid, 10) == "cancelled"
    assert store.get_run(rid)["step"] <= step_at_cancel + 1
    stopped = int((store.get_run(rid)["step"]))
    store.update_run(rid, config={"steps": stopped + 3, "fail_at": -1, "nan_at": -1, "delay": 0})
    jobs.resume(rid)
    assert jobs.wait(rid, 30) == "succeeded"
    assert store.get_run(rid)["summary"]["started_at"] == stopped


def test_training_jobs_queue_while_light_jobs_run_at_once(store):
    jobs = JobManager(store)
    long = jobs.submit("count", {"steps": 100, "delay": 0.02})
    queued = jobs.submit("count", {"steps": 1})
    light = jobs.submit("count_light", {"steps": 2})
    assert jobs.wait(light, 10) == "succeeded"
    assert store.get_run(queued)["status"] == "queued"  # waits behind the long one
    assert store.get_run(long)["status"] == "running"
    jobs.cancel(long)
    assert jobs.wait(queued, 30) == "succeeded"


def test_a_run_cancelled_while_queued_then_resumed_runs_once(store):
    jobs = JobManager(store)
    long = jobs.submit("count", {"steps": 100, "delay": 0.02})
    queued = jobs.submit("count", {"steps": 2})
    jobs.cancel(queued)
    assert store.get_run(queued)["status"] == "cancelled"
    jobs.resume(queued)  # its first queue item is still there, behind the long run
    jobs.cancel(long)
    assert jobs.wait(queued, 30) == "succeeded"
    time.sleep(0.3)  # give a second, stale execution the time to show up
    messages = [r["message"] for r in store.get_log(queued)]
    assert messages.count("resumed") == 1 and "started" not in messages
    assert [m["step"] for m in store.get_metrics(queued, ["loss"])] == [1, 2]
    assert store.get_run(queued)["status"] == "succeeded"


def test_crash_leaves_run_interrupted_and_it_resumes(store):
    rid = store.create_run("count", {"steps": 4})
    store.update_run(rid, status="running", pid=2**22 + 999, host=os.uname().nodename, step=2)
    jobs = JobManager(store)  # a restart
    assert rid in jobs.recovered
    assert store.get_run(rid)["status"] == "interrupted"
    jobs.resume(rid)
    assert jobs.wait(rid, 30) == "succeeded"


def test_run_sync_is_the_same_code_path(store):
    run = run_sync(store, "count", {"steps": 2})
    assert run["status"] == "succeeded" and len(store.get_metrics(run["id"])) == 2


def test_unknown_config_field_is_named(store):
    with pytest.raises(ValueError, match="bogus"):
        JobManager(store).submit("count", {"bogus": 1})
