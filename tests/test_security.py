"""Checkpoints load without running code: no pickle, old pickle checkpoints refused."""
from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch

from engine.training import train_utils as tu
from engine.errors import CheckpointError


class Payload:
    """What an attacker plants: unpickling it would create `path`."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def checkpoint(tiny_model_dir, tmp_path):
    """A real checkpoint of a LoRA model, optimizer, scheduler and a module."""
    from engine.inference.models import LoraSettings, add_lora, load_base

    model = add_lora(load_base(str(tiny_model_dir), "cpu").model, LoraSettings(r=4))
    head = torch.nn.Linear(4, 1)
    opt = tu.make_optimizer(model, 1e-2)
    sched = tu.make_scheduler(opt, "linear", 1, 10)
    model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step(), sched.step()
    folder = tu.save_checkpoint(tmp_path / "run", 3, model, opt, sched, modules={"head": head})
    return folder, model, opt, sched, head


def test_checkpoint_holds_no_pickle_and_round_trips(checkpoint):
    folder, model, opt, sched, head = checkpoint
    draws = (random.random(), np.random.rand(), torch.rand(3))  # after the save: must repeat
    suffixes = {p.suffix for p in folder.rglob("*") if p.is_file()}
    assert suffixes <= {".json", ".safetensors", ".md"}, suffixes  # .md: peft's README
    rng = json.loads((folder / "rng.json").read_text())  # Python's and numpy's state: JSON
    assert {"python", "numpy", "torch"} <= set(rng)

    expected = opt.state_dict()
    opt2 = tu.make_optimizer(model, 1e-2)
    sched2 = tu.make_scheduler(opt2, "linear", 1, 10)
    head2 = torch.nn.Linear(4, 1)
    assert tu.load_checkpoint(folder, model, opt2, sched2, modules={"head": head2}) == {"step": 3}
    assert (random.random(), np.random.rand()) == draws[:2]
    assert torch.equal(torch.rand(3), draws[2])
    got = opt2.state_dict()
    assert got["param_groups"] == expected["param_groups"]
    for k, state in expected["state"].items():
        for name, value in state.items():
            assert torch.equal(got["state"][k][name], value), (k, name)
    assert sched2.state_dict() == sched.state_dict()
    assert torch.equal(head2.weight, head.weight)


@pytest.mark.parametrize("planted", ["optimizer.pt", "rng.pt"])
def test_an_old_pickle_checkpoint_is_refused_and_never_unpickled(checkpoint, tmp_path, planted):
    folder, model, opt, sched, _ = checkpoint
    marker = tmp_path / "pwned"
    (folder / planted).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="predates the safe checkpoint format"):
        tu.load_checkpoint(folder, model, opt, sched)
    assert not marker.exists()


@pytest.mark.parametrize("planted", ["optimizer.safetensors", "optimizer.json",
                                     "rng.safetensors", "rng.json", "head.safetensors"])
def test_a_pickle_under_a_safe_name_is_refused_and_never_run(checkpoint, tmp_path, planted):
    folder, model, opt, sched, head = checkpoint
    marker = tmp_path / "pwned"
    (folder / planted).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="not a valid checkpoint file"):
        tu.load_checkpoint(folder, model, opt, sched, modules={"head": head})
    assert not marker.exists()


def test_resume_from_an_old_checkpoint_fails_clearly(store, tiny_model_dir, tmp_path):
    from engine.runtime.jobs import JobManager, run_sync
    from engine.inference.models import run_dir
    from tests.test_faults import make_sft_dataset

    dataset = make_sft_dataset(store, n=12)
    run = run_sync(store, "sft", {"model": str(tiny_model_dir), "dataset": dataset,
                                  "max_steps": 1, "batch_size": 2})
    assert run["status"] == "succeeded", run["error"]
    # what an old version left behind: a pickled optimizer in a complete checkpoint
    marker = tmp_path / "pwned"
    old = tu.checkpoints_dir(run_dir(run["id"])) / "step-1"
    (old / "adapter").mkdir(parents=True)
    (old / "state.json").write_text(json.dumps({"step": 1}))
    (old / "optimizer.pt").write_bytes(pickle.dumps(Payload(marker)))
    store.update_run(run["id"], status="interrupted")
    jobs = JobManager(store)
    jobs.resume(run["id"])
    assert jobs.wait(run["id"], 120) == "failed"
    error = store.get_run(run["id"])["error"]
    assert "predates the safe checkpoint format" in error and "Traceback" not in error
    assert not marker.exists() and not os.path.exists(marker)
