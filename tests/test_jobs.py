import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import pytest

from engine.runtime.jobs import JobManager, run_sync
from engine.inference.models import run_dir
from tests.conftest import ROOT
from tests.job_helpers import registered_stages


@dataclass
class CountConfig:
    steps: int = 5
    fail_at: int = -1
    nan_at: int = -1
    hold_at: int = -1   # after this step: say so (HELD) and wait for the cancel (≤ 60 s)


HELD: dict[int, threading.Event] = {}   # run id -> set once the run holds at `hold_at`


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
        if step == cfg.hold_at:
            HELD.setdefault(ctx.run_id, threading.Event()).set()
            ctx.cancel_event.wait(60)
    return {"final_loss": 1.0 / cfg.steps, "started_at": start}


@pytest.fixture(autouse=True)
def no_held_runs():
    HELD.clear()   # run ids start again at 1 in each test's database


def held(run_id: int) -> None:
    """Wait (at most 60 s) until run `run_id` holds at its `hold_at` step."""
    assert HELD.setdefault(run_id, threading.Event()).wait(60), f"run {run_id} never held"




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
    rid = jobs.submit("count", {"steps": 200, "hold_at": 3})
    held(rid)              # step 3 is done; the run waits inside it
    jobs.cancel(rid)
    assert jobs.wait(rid, 60) == "cancelled"
    stopped = store.get_run(rid)["step"]
    assert stopped == 3    # it stopped at the next step's start: no step after the cancel
    store.update_run(rid, config={"steps": stopped + 3, "fail_at": -1, "nan_at": -1})
    jobs.resume(rid)
    assert jobs.wait(rid, 30) == "succeeded"
    assert store.get_run(rid)["summary"]["started_at"] == stopped


def test_training_jobs_queue_while_light_jobs_run_at_once(store):
    jobs = JobManager(store)
    long = jobs.submit("count", {"steps": 100, "hold_at": 1})
    queued = jobs.submit("count", {"steps": 1})
    held(long)            # the long run is running, and stays so until cancelled
    light = jobs.submit("count_light", {"steps": 2})
    assert jobs.wait(light, 60) == "succeeded"
    assert store.get_run(queued)["status"] == "queued"  # waits behind the long one
    assert store.get_run(long)["status"] == "running"
    jobs.cancel(long)
    assert jobs.wait(queued, 30) == "succeeded"


def test_a_run_cancelled_while_queued_then_resumed_runs_once(store):
    jobs = JobManager(store)
    long = jobs.submit("count", {"steps": 100, "hold_at": 1})
    queued = jobs.submit("count", {"steps": 2})
    jobs.cancel(queued)
    assert store.get_run(queued)["status"] == "cancelled"
    jobs.resume(queued)  # its first queue item is still there, behind the long run
    jobs.cancel(long)
    assert jobs.wait(queued, 30) == "succeeded"
    # the training lane runs its queue in order: once a run submitted after everything
    # has finished, the stale queue item of `queued` has been taken (and skipped)
    after = jobs.submit("count", {"steps": 1})
    assert jobs.wait(after, 60) == "succeeded"
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


# -- light jobs: one at a time per model -------------------------------------------------------
@dataclass
class TimedConfig:
    model: str = "embedded"
    seconds: float = 0.3


def timed_stage(cfg: TimedConfig, ctx):
    start = time.monotonic()
    time.sleep(cfg.seconds)
    return {"start": start, "end": time.monotonic()}




stand_in_stages = registered_stages(count=(CountConfig, count_stage, False),
                                    count_light=(CountConfig, count_stage, True),
                                    timed_light=(TimedConfig, timed_stage, True))


def test_light_jobs_of_one_model_run_one_after_another(store):
    jobs = JobManager(store)
    ids = [jobs.submit("timed_light", {"seconds": 0.3}) for _ in range(3)]
    assert [jobs.wait(i, 30) for i in ids] == ["succeeded"] * 3
    spans = sorted((store.get_run(i)["summary"]["start"], store.get_run(i)["summary"]["end"])
                   for i in ids)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end, f"light jobs overlapped: {spans}"
    assert [store.get_run(i)["started"] for i in ids] == sorted(
        store.get_run(i)["started"] for i in ids)  # in the order they were submitted


# -- cancel of a run another process holds ------------------------------------------------------
def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_cancel_never_signals_a_reused_pid_or_a_process_that_is_not_the_cli(store):
    proc = _sleeper()
    try:
        time.sleep(0.2)
        host = socket.gethostname()
        jobs = JobManager(store)
        # the pid was reused: the process started after the run was claimed
        reused = store.create_run("count", {})
        store.update_run(reused, status="running", pid=proc.pid, host=host,
                         started=time.time() - 3600)
        assert jobs.cancel(reused) is True
        assert store.get_run(reused)["status"] == "cancelled"  # nobody held it any more
        # ... and a restart sees such a run as orphaned, not as held by the live pid
        orphan = store.create_run("count", {})
        store.update_run(orphan, status="running", pid=proc.pid, host=host,
                         started=time.time() - 3600)
        assert JobManager(store).recovered == [orphan]
        # the owner is alive but is not `python -m engine` (e.g. another app process)
        other = store.create_run("count", {})
        store.update_run(other, status="running", pid=proc.pid, host=host,
                         started=time.time())
        assert JobManager(store).recovered == []
        assert jobs.cancel(other) is False
        assert store.get_run(other)["status"] == "running"
        assert any("another app process" in r["message"] for r in store.get_log(other))
        assert proc.poll() is None, "a process that does not own the run was signalled"
    finally:
        proc.kill()
        proc.wait(10)


def test_cancel_from_another_process_stops_a_cli_run_as_cancelled(store, tiny_model_dir,
                                                                   tmp_path):
    from engine.training.train_utils import latest_checkpoint
    from tests.test_faults import make_sft_dataset, subprocess_env, wait_until

    dataset = make_sft_dataset(store)
    log = open(tmp_path / "cli.log", "w+b")  # a file, not a pipe nobody reads while it runs
    # only fields whose names are stable: model, dataset, max_steps, batch_size
    cli = subprocess.Popen(
        [sys.executable, "-m", "engine", "--db", str(store.path), "train", "sft",
         "--set", f"model={tiny_model_dir}", "--set", f"dataset={dataset}",
         "--set", "max_steps=100000", "--set", "batch_size=2"],
        cwd=ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        def running_at_step():
            runs = store.list_runs(stage="sft")
            return runs and runs[0]["status"] == "running" and (runs[0]["step"] or 0) >= 1 \
                and runs[0]
        run = wait_until(running_at_step, 180, "the CLI run to start training", cli)
        assert run["pid"] == cli.pid
        assert JobManager(store).cancel(run["id"]) is True  # not in this process's queue
        cli.wait(timeout=60)
        log.seek(0)
        out = log.read()
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    run = store.get_run(run["id"])
    assert run["status"] == "cancelled", out.decode()[-2000:]
    assert cli.returncode == 1 and json.loads(out[out.index(b"{"):])["status"] == "cancelled"
    assert run["step"] < 100000
    assert latest_checkpoint(run_dir(run["id"])) is not None  # the last checkpoint is kept
    assert any("cancelled" in r["message"] for r in store.get_log(run["id"]))
