"""Runs of two processes started by the job engine, as the pages start them: the engine
launches `accelerate launch … -m engine train STAGE --run-id N` (two CPU processes on gloo),
the run is recorded once, both processes end with the same weights, the page shows its
metrics; Cancel mid-run ends it `cancelled` and Resume finishes it on two processes again.

Each launched process gets a `sitecustomize` (through PYTHONPATH, test-only: production
code has no such hook) that keeps the model the stage passed to accelerator.prepare() and,
when the process exits, writes its trainable weights to $PROBE_DIR/rank<N>.safetensors.
"""
from __future__ import annotations

import time

import pytest
import torch

from engine.runtime.jobs import get_manager
from tests.conftest import ROOT, app_with_model

SITECUSTOMIZE = r'''
import atexit, os

if os.environ.get("RANK") is not None and os.environ.get("PROBE_DIR"):
    import accelerate, torch

    prepared = []
    _prepare = accelerate.Accelerator.prepare

    def prepare(self, *args, **kwargs):
        out = _prepare(self, *args, **kwargs)
        prepared.extend(o for o in (out if isinstance(out, tuple) else (out,))
                        if isinstance(o, torch.nn.Module))
        return out

    accelerate.Accelerator.prepare = prepare

    @atexit.register
    def dump():
        if not prepared:
            return
        from safetensors.torch import save_file
        model = prepared[-1]
        model = model if hasattr(model, "peft_config") else getattr(model, "module", model)
        weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
                   if p.requires_grad}
        save_file(weights, os.path.join(os.environ["PROBE_DIR"],
                                        f"rank{os.environ['RANK']}.safetensors"))
'''


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """The folder where each launched process leaves its final weights."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    monkeypatch.setenv("PYTHONPATH", f"{site}:{ROOT}")
    monkeypatch.setenv("PROBE_DIR", str(dumps))
    monkeypatch.setenv("RLHF_LAB_DEVICE", "cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return dumps


def same_weights_on_both_processes(dumps) -> dict:
    from safetensors.torch import load_file

    rank0, rank1 = load_file(dumps / "rank0.safetensors"), load_file(dumps / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert any(t.abs().sum() > 0 for n, t in rank1.items() if "lora_B" in n)  # it trained
    return rank0


def wait_for_step(store, run_id: int, step: int, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = store.get_run(run_id)
        if (run["step"] or 0) >= step or run["status"] not in ("queued", "running"):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not reach step {step} in {timeout} s")


def test_sft_on_two_processes_from_the_page_cancel_and_resume(store, tiny_model_dir, probe,
                                                                lab_home):
    import streamlit as st
    from safetensors.torch import load_file

    from ui.common import widget_key
    from ui.forms import field_key

    store.create_dataset("toy", "sft", eval_fraction=0.25)
    store.add_rows("toy", [{"prompt": f"Say the number {i}.", "response": f"The number is {i}."}
                           for i in range(16)])
    st.cache_resource.clear()  # this test's database
    at = app_with_model(tiny_model_dir, "views/sft.py")
    at.selectbox(key=widget_key("sft_dataset")).set_value("toy").run()
    steps = 30
    for name, value in {"processes": 2, "max_steps": steps, "batch_size": 2,
                        "eval_every": 0, "save_every": 10, "max_length": 64}.items():
        at.number_input(key=field_key("sft", name)).set_value(value)
    at.button(key="start.sft").click().run()
    assert not at.exception, at.exception
    [run] = store.list_runs(stage="sft")
    assert run["config"]["processes"] == 2

    jobs = get_manager(store)
    seen = wait_for_step(store, run["id"], 2)
    assert seen["status"] == "running", seen["error"]
    assert jobs.cancel(run["id"])
    assert jobs.wait(run["id"], 240) == "cancelled"
    cancelled = store.get_run(run["id"])
    assert 2 <= cancelled["step"] < steps  # it stopped mid-run, keeping the finished steps
    assert list((lab_home / "runs" / str(run["id"]) / "checkpoints").glob("step-*"))

    jobs.resume(run["id"])
    assert jobs.wait(run["id"], 300) == "succeeded", store.get_run(run["id"])["error"]
    assert len(store.list_runs()) == 1  # still one run
    losses = store.get_metrics(run["id"], ["train_loss"])
    assert [m["step"] for m in losses] == list(range(1, steps + 1))  # each step once
    log = [line["message"] for line in store.get_log(run["id"])]
    assert "resumed" in log and any(m.startswith("resumed from checkpoint") for m in log)
    assert store.get_run(run["id"])["config"]["processes"] == 2

    weights = same_weights_on_both_processes(probe)
    saved = load_file(lab_home / "runs" / str(run["id"]) / "adapter" / "adapter_model.safetensors")
    for name, tensor in weights.items():
        assert torch.equal(saved[name.replace(".default.", ".")], tensor), name

    at.run()  # the page shows the finished run's metrics from the database
    assert not at.exception, at.exception
    assert at.metric[0].value == f"{losses[-1]['value']:.3f}"
    assert at.metric[3].value == f"{steps} / {steps}"
    st.cache_resource.clear()


def test_dpo_on_two_processes_a_crashed_process_interrupts_and_resume_finishes(
        store, tiny_model_dir, probe):
    """DPO submitted to the job engine as its page does; one process killed mid-run makes the
    run `interrupted` (not failed); Resume finishes it, one run, the same weights on both."""
    import psutil

    store.create_dataset("pairs", "preference", eval_fraction=0.25)
    store.add_rows("pairs", [{"prompt": f"Count to {i}.", "chosen": f"{i}.", "rejected": f"{i}"}
                             for i in range(12)])
    jobs = get_manager(store)
    steps = 30
    run_id = jobs.submit("dpo", {"model": str(tiny_model_dir), "dataset": "pairs",
                                 "max_steps": steps, "batch_size": 2, "learning_rate": 1e-2,
                                 "save_every": 2, "eval_every": 0, "sample_every": 0,
                                 "max_length": 48, "processes": 2})
    seen = wait_for_step(store, run_id, 3)
    assert seen["status"] == "running", seen["error"]
    rank0 = psutil.Process(seen["pid"])  # the process that claimed the run
    [rank1] = [p for p in rank0.parent().children()
               if p.pid != rank0.pid and p.environ().get("RANK") == "1"]
    rank1.kill()
    assert jobs.wait(run_id, 240) == "interrupted", store.get_run(run_id)["error"]

    jobs.resume(run_id)
    assert jobs.wait(run_id, 300) == "succeeded", store.get_run(run_id)["error"]
    assert len(store.list_runs()) == 1
    assert [m["step"] for m in store.get_metrics(run_id, ["loss"])] == list(range(1, steps + 1))
    same_weights_on_both_processes(probe)
