"""Beyond one machine: `python -m engine train sft` under `accelerate launch` with two
processes (CPU, gloo) records ONE run, written by the main process only, and both
processes end with the same adapter weights (data-parallel gradients are synchronised).

`accelerate launch --cpu` always starts a single process (accelerate 1.15's simple
launcher); two local processes come from its torchrun-based launcher (`--multi_gpu`),
which on a machine without a GPU runs on CPU: engine.runtime.jobs.run_distributed then sets
accelerate up with cpu=True (gloo), as train_utils.make_accelerator does.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, free_port

# Run engine's CLI and, on EVERY process, keep the model the stage passed to
# accelerator.prepare(); when the stage returns, write its trainable weights to
# $PROBE_DIR/rank<N>.safetensors. Test-only: production code has no such hook.
PROBE = r'''
import os, sys
sys.path.insert(0, os.environ["LAB_ROOT"])
import accelerate, torch
from safetensors.torch import save_file

prepared = []
_prepare = accelerate.Accelerator.prepare

def prepare(self, *args, **kwargs):
    out = _prepare(self, *args, **kwargs)
    prepared.extend(o for o in (out if isinstance(out, tuple) else (out,))
                    if isinstance(o, torch.nn.Module))
    return out

accelerate.Accelerator.prepare = prepare

from engine.__main__ import main

code = main(sys.argv[1:])
model = prepared[0]
model = model if hasattr(model, "peft_config") else getattr(model, "module", model)
weights = {n: p.detach().cpu().contiguous() for n, p in model.named_parameters()
           if p.requires_grad}
save_file(weights, os.path.join(os.environ["PROBE_DIR"], f"rank{os.environ['RANK']}.safetensors"))
sys.exit(code)
'''


@pytest.fixture
def tiny_sft(store, tiny_model_dir, tmp_path) -> Path:
    store.create_dataset("tiny-sft", "sft", eval_fraction=0.25)
    store.add_rows("tiny-sft", [{"prompt": f"Say the number {i}.",
                                 "response": f"The number is {i}."} for i in range(16)])
    config = {"model": str(tiny_model_dir), "dataset": "tiny-sft", "max_steps": 4,
              "batch_size": 2, "learning_rate": 1e-2, "eval_every": 2, "eval_samples": 1,
              "sample_tokens": 8, "save_every": 2, "max_length": 64}
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(config))
    return path


def _launch(probe_args: list[str], store, tmp_path, lab_home) -> tuple[Path, str]:
    """`accelerate launch` 2 CPU processes (gloo) of the CLI under the probe."""
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    env = dict(os.environ, LAB_ROOT=str(ROOT), PROBE_DIR=str(dumps), RLHF_LAB_HOME=str(lab_home),
               RLHF_LAB_DEVICE="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "--num_cpu_threads_per_process", "1",
           str(probe), "--db", str(store.path), *probe_args]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dumps, proc.stdout


def test_reward_on_two_processes_splits_each_batch(store, tiny_model_dir, tmp_path, lab_home):
    """Each process scores its own slice of the global batch: one epoch over 16 pairs with
    2 pairs per process takes 4 steps on 2 processes (8 on one), same weights on both."""
    from safetensors.torch import load_file

    store.create_dataset("tiny-pairs", "preference", eval_fraction=0.0)
    store.add_rows("tiny-pairs", [{"prompt": f"Count to {i}.", "chosen": f"{i}.",
                                   "rejected": f"{i}"} for i in range(16)])
    config = {"model": str(tiny_model_dir), "dataset": "tiny-pairs", "max_steps": 0,
              "epochs": 1, "batch_size": 2, "save_every": 0, "normalize": False,
              "max_eval_pairs": 4, "max_length": 64}
    path = tmp_path / "reward.json"
    path.write_text(json.dumps(config))
    dumps, _ = _launch(["train", "reward", "--config", str(path)], store, tmp_path, lab_home)
    run = store.list_runs()[0]
    assert run["status"] == "succeeded", run["error"]
    assert [m["step"] for m in store.get_metrics(run["id"], ["loss"])] == [1, 2, 3, 4]
    rank0, rank1 = load_file(dumps / "rank0.safetensors"), load_file(dumps / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name


def test_ppo_on_two_processes_trains_identical_policies(store, tiny_model_dir, tmp_path,
                                                        lab_home):
    """PPO under DDP: each process samples its own prompts, the no-grad scoring passes
    run padding-free, the training passes padded (one forward per backward), and both
    ranks end with the same policy."""
    from safetensors.torch import load_file

    store.create_dataset("tiny-prompts", "preference")
    store.add_rows("tiny-prompts", [{"prompt": f"Say {w}.", "chosen": "Yes.", "rejected": "No"}
                                    for w in ("a", "b c", "d e f", "g", "h i", "j k l m")])
    config = {"model": str(tiny_model_dir), "dataset": "tiny-prompts", "max_steps": 2,
              "batch_size": 2, "minibatches": 2, "max_new_tokens": 4, "learning_rate": 1e-2,
              "save_every": 0, "builtin_reward": "ends_with_period"}
    path = tmp_path / "ppo.json"
    path.write_text(json.dumps(config))
    dumps, _ = _launch(["train", "ppo", "--config", str(path)], store, tmp_path, lab_home)
    runs = store.list_runs()
    assert len(runs) == 1 and runs[0]["status"] == "succeeded", runs[0]["error"]
    assert [m["step"] for m in store.get_metrics(runs[0]["id"], ["kl"])] == [1, 2]
    rank0, rank1 = load_file(dumps / "rank0.safetensors"), load_file(dumps / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert any(t.abs().sum() > 0 for n, t in rank1.items() if "lora_B" in n)  # it trained


def test_sft_on_two_processes_records_one_run_with_identical_weights(store, tiny_sft, tmp_path,
                                                                     lab_home):
    from safetensors.torch import load_file

    dumps, stdout = _launch(["train", "sft", "--config", str(tiny_sft)], store, tmp_path,
                            lab_home)

    # the run is recorded once, by the main process only
    runs = store.list_runs()
    assert len(runs) == 1
    run = runs[0]
    assert run["status"] == "succeeded" and run["stage"] == "sft", run["error"]
    # only main prints its report
    report, _ = json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])
    assert report["run_id"] == run["id"] and report["status"] == "succeeded"
    assert [m["step"] for m in store.get_metrics(run["id"], ["train_loss"])] == [1, 2, 3, 4]
    assert sum(1 for line in store.get_log(run["id"]) if line["message"] == "started") == 1
    assert len(store.list_artifacts(run["id"], "adapter")) == 1

    # both processes end with identical adapter weights, equal to the adapter main saved
    rank0, rank1 = load_file(dumps / "rank0.safetensors"), load_file(dumps / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    assert any(t.abs().sum() > 0 for n, t in rank1.items() if "lora_B" in n)  # it trained
    saved = load_file(lab_home / "runs" / str(run["id"]) / "adapter" / "adapter_model.safetensors")
    assert len(saved) == len(rank1)
    for name, tensor in rank1.items():
        assert torch.equal(saved[name.replace(".default.", ".")], tensor), name
