"""The ETA of a running job (issue 25, item 5): it counts down while a step runs (it
counted up: the time since the last report was taken as part of the pace), and a run paced
from the start of its step loop has one from its first step on (a 2-step run had none)."""
import time

from engine.runtime.jobs import JobContext, run_sync
from ui.common import eta_text


def running(**fields) -> dict:
    return {"status": "running", "total_steps": 10, **fields}


def test_the_estimate_never_counts_up_between_two_step_reports():
    # the loop began at t=100; step 2 reported at t=120: 10 s a step, 8 steps left
    run = running(step=2, attempt_step=0, attempt_time=100.0, step_time=120.0)
    shown = [eta_text(run, now=120.0 + dt) for dt in (0, 3, 6, 9, 12, 30)]
    seconds = [int(s.split()[1]) for s in shown]
    assert seconds[0] == 80
    assert seconds == sorted(seconds, reverse=True), shown  # 80, 77, 74, 71, 70, 70
    assert seconds[-1] == 70  # an overdue step: still the 7 whole steps after it, no less
    # the next report brings a new pace (step 3 at t=135: 11.67 s a step, 7 left)
    assert eta_text({**run, "step": 3, "step_time": 135.0}, now=135.0) == "about 82 s left"


def test_a_loop_that_says_where_it_begins_has_an_estimate_after_its_first_step(store):
    run_id = store.create_run("sft", {}, name="two-steps")
    store.claim_run(run_id)
    ctx = JobContext(store, run_id, None)
    ctx.progress(0, 2, "loading data and model")
    ctx.progress(0, 2, "evaluating before training")
    ctx.steps_begin(0)  # loading and the evaluation before training are not a step
    time.sleep(0.05)
    ctx.progress(1, 2, "loss 1.0")
    assert eta_text(store.get_run(run_id)).startswith("about ")
    ctx.progress(2, 2, "saving the adapter")
    assert eta_text(store.get_run(run_id)) == ""


def test_sft_paces_from_the_start_of_its_step_loop(store, tiny_model_dir):
    store.create_dataset("toy", "sft")
    store.add_rows("toy", [{"prompt": f"Say {i}.", "response": f"{i}."} for i in range(8)])
    run = run_sync(store, "sft", {"model": str(tiny_model_dir), "dataset": "toy",
                                  "max_steps": 2, "batch_size": 2, "eval_every": 0,
                                  "save_every": 0, "eval_samples": 0, "max_length": 64})
    assert run["status"] == "succeeded", run["error"]
    stored = store.get_run(run["id"])
    assert stored["attempt_step"] == 0  # the pace's start: step 0, not the first report
    assert stored["step_time"] >= stored["attempt_time"]
