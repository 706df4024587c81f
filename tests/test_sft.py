"""SFT: the completion-only loss, the training helpers, and real runs on a tiny model
(overfit and answer, cancel and resume, the CLI, the page)."""
from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest
import torch

from engine.training import train_utils as tu
from engine.inference.chat import IGNORE_INDEX
from engine.training.sft import sft_loss
from tests.conftest import ROOT, app_with_model

PAIRS = [{"prompt": "What is the capital of France?", "response": "Paris."},
         {"prompt": "Say hello.", "response": "Hello there!"},
         {"prompt": "What is two plus two?", "response": "Four."}]


def _dataset(store, name="toy", rows=None, eval_fraction=0.25, kind="sft"):
    store.create_dataset(name, kind, eval_fraction=eval_fraction)
    store.add_rows(name, rows if rows is not None else
                   [{"prompt": f"What is {a} plus {b}?", "response": f"{a + b}."}
                    for a in range(4) for b in range(3)])
    return name


def _quick(model_dir, **over) -> dict:
    """A config that runs in a second or two on the tiny model."""
    cfg = {"model": str(model_dir), "dataset": "toy", "max_steps": 4, "batch_size": 2,
           "learning_rate": 1e-3, "eval_every": 0, "save_every": 0, "eval_samples": 0,
           "max_length": 96}
    cfg.update(over)
    return cfg


# -- the encoding (the loss itself: tests/test_objectives.py) --------------------------------
def test_real_encoding_masks_the_prompt(tiny_model_dir):
    from engine.inference.chat import encode_completion
    from engine.inference.models import load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    enc = encode_completion(tok, "What is the capital of France?", "Paris.", 256)
    n_prompt = sum(1 for x in enc.labels if x == IGNORE_INDEX)
    assert n_prompt > 5
    assert tok.decode([x for x in enc.labels if x != IGNORE_INDEX]).startswith("Paris.")
    # a model whose logits differ only where prompt tokens are predicted gives the same loss
    v = len(tok)
    ids = torch.tensor([enc.input_ids])
    labels = torch.tensor([enc.labels])
    logits = torch.randn(1, ids.shape[1], v)
    other = logits.clone()
    other[0, : n_prompt - 1] = torch.randn(n_prompt - 1, v) * 5
    assert sft_loss(other, labels).item() == pytest.approx(sft_loss(logits, labels).item())


def test_response_window_forward_gives_the_full_loss(tiny_model_dir):
    from engine.inference.chat import collate_completions, encode_completion
    from engine.inference.models import load_base
    from engine.training.sft import forward_logits

    loaded = load_base(str(tiny_model_dir), "cpu")
    tok = loaded.tokenizer
    batch = collate_completions([encode_completion(tok, p["prompt"], p["response"], 256)
                                 for p in PAIRS], tok.pad_token_id)
    with torch.no_grad():
        full = loaded.model(input_ids=batch["input_ids"],
                            attention_mask=batch["attention_mask"]).logits
        window, labels = forward_logits(loaded.model, batch)
    assert window.shape[1] < full.shape[1]  # prompt logits are not computed
    assert sft_loss(window, labels).item() == pytest.approx(
        sft_loss(full, batch["labels"]).item(), rel=1e-5)


# -- the helpers -------------------------------------------------------------------------------
def test_learning_rate_schedules():
    assert tu.lr_factor(0, 2, 10, "cosine") == 0.5 and tu.lr_factor(1, 2, 10, "cosine") == 1.0
    assert tu.lr_factor(2, 2, 10, "cosine") == 1.0
    assert tu.lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5)
    assert tu.lr_factor(6, 2, 10, "linear") == pytest.approx(0.5)
    assert tu.lr_factor(10, 2, 10, "linear") == 0.0 and tu.lr_factor(9, 0, 10, "constant") == 1
    with pytest.raises(ValueError, match="schedule"):
        tu.lr_factor(0, 0, 10, "exponential")


def test_data_order_is_deterministic_by_seed_and_covers_each_epoch():
    first = tu.stream_indices(10, seed=3, start=0, count=30)
    assert first == tu.stream_indices(10, seed=3, start=0, count=30)
    assert first[12:17] == tu.stream_indices(10, seed=3, start=12, count=5)  # resume mid-way
    for epoch in range(3):
        assert sorted(first[epoch * 10:(epoch + 1) * 10]) == list(range(10))
    assert first[:10] != first[10:20] and first != tu.stream_indices(10, 4, 0, 30)


def padded_positions(batches: list[list[int]], lengths: list[int]) -> int:
    """Positions a right-padded forward pass computes: Σ_batches |batch| · max length."""
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


def test_length_grouped_order_pads_less_and_stays_resumable():
    rng = random.Random(0)
    n, batch = 101, 8                       # n not a multiple of the batch
    lengths = [rng.randint(20, 250) for _ in range(n)]
    size = 104                              # an epoch: n filled up to a multiple of 8
    grouped = tu.stream_indices(n, 5, 0, 3 * size, lengths=lengths, batch=batch)
    assert grouped == tu.stream_indices(n, 5, 0, 3 * size, lengths=lengths, batch=batch)
    assert grouped[40:72] == tu.stream_indices(n, 5, 40, 32, lengths=lengths, batch=batch)
    for epoch in range(3):  # every example once per epoch, 3 repeats to fill the last batch
        part = grouped[epoch * size:(epoch + 1) * size]
        assert set(part) == set(range(n)) and len(part) - len(set(part)) == 3
    assert grouped[:size] != grouped[size:2 * size]  # a fresh order every epoch
    batches = [grouped[k:k + batch] for k in range(0, 3 * size, batch)]
    plain = tu.stream_indices(n, 5, 0, 3 * size)
    plain_batches = [plain[k:k + batch] for k in range(0, 3 * size, batch)]
    real = sum(lengths[i] for i in grouped)
    assert padded_positions(batches, lengths) < 1.15 * real  # ≤ 15% padding once grouped
    assert padded_positions(plain_batches, lengths) > 1.4 * real  # vs > 40% at random
    # the batches' order is shuffled, not longest first
    maxima = [max(lengths[i] for i in b) for b in batches[:12]]
    assert maxima != sorted(maxima, reverse=True) and maxima != sorted(maxima)
    # without lengths (or batch 1) the plain stream is unchanged
    assert tu.stream_indices(n, 5, 0, 50, lengths=lengths, batch=1) == plain[:50]
    with pytest.raises(ValueError, match="lengths"):
        tu.stream_indices(n, 5, 0, 8, lengths=lengths[:-1], batch=batch)


def test_adapter_save_is_flat_and_checkpoint_round_trips(tiny_model_dir, tmp_path):
    from engine.inference.models import LoraSettings, add_lora, load_adapter, load_base

    model = add_lora(load_base(str(tiny_model_dir), "cpu").model, LoraSettings(r=4),
                     adapter_name="policy")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    out = tu.save_adapter(model, tmp_path / "adapter")
    assert sorted(f.name for f in out.iterdir() if f.suffix in (".json", ".safetensors")) \
        == ["adapter_config.json", "adapter_model.safetensors"]
    assert not [p for p in out.iterdir() if p.is_dir()]
    reloaded = load_adapter(load_base(str(tiny_model_dir), "cpu").model, out)
    ids = torch.tensor([[1, 2, 3, 4]])
    model.eval()  # LoRA dropout off
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits,
                              atol=1e-5)

    model.train()
    opt = tu.make_optimizer(model, 1e-2)
    sched = tu.make_scheduler(opt, "linear", 1, 10)
    model(input_ids=ids).logits.sum().backward()
    opt.step(), sched.step()
    folder = tu.save_checkpoint(tmp_path / "run", 7, model, opt, sched, {"eval_loss_before": 2.5})
    assert tu.latest_checkpoint(tmp_path / "run") == folder
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for p in tu.trainable_parameters(model):
            p.zero_()
    opt2 = tu.make_optimizer(model, 1e-2)
    sched2 = tu.make_scheduler(opt2, "linear", 1, 10)
    state = tu.load_checkpoint(folder, model, opt2, sched2)
    assert state == {"step": 7, "eval_loss_before": 2.5}
    assert sched2.last_epoch == 1 and opt2.state_dict()["state"]
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, snapshot[n]), n


# -- real runs ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sharp_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with its (tied) embeddings scaled ×10: a random 64-wide model's logits
    span only ±1, which frozen embeddings keep LoRA from overcoming; real models' logits span
    tens. Same weights otherwise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("sharp") / "tiny-sharp"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(10)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_overfits_a_handful_of_pairs_then_answers_them(store, sharp_model_dir):
    from engine.inference.generate import SamplingConfig, generate
    from engine.runtime.jobs import run_sync
    from engine.inference.models import adapter_dir, inference_cache

    _dataset(store, rows=PAIRS, eval_fraction=0)
    run = run_sync(store, "sft", _quick(
        sharp_model_dir, max_steps=40, batch_size=3, learning_rate=1e-2, warmup_ratio=0.0,
        lora={"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": ["all-linear"]}))
    assert run["status"] == "succeeded", run["error"]
    s = run["summary"]
    assert s["steps"] == 40 and s["final_train_loss"] < 0.25 * s["first_train_loss"]
    assert s["adapter"] == str(adapter_dir(run["id"]))
    assert (adapter_dir(run["id"]) / "adapter_model.safetensors").exists()
    assert [a["kind"] for a in store.list_artifacts(run["id"])] == ["adapter"]
    steps = [m["step"] for m in store.get_metrics(run["id"], ["train_loss"])]
    assert steps == list(range(1, 41))
    assert {"learning_rate", "grad_norm", "tokens_per_s"} <= set(store.metric_names(run["id"]))
    inference_cache.clear()
    try:
        with inference_cache.use(store, run["id"]) as (model, tok):
            answers = generate(model, tok, [p["prompt"] for p in PAIRS],
                               SamplingConfig(greedy=True, max_new_tokens=8))
    finally:
        inference_cache.clear()
    assert answers == [p["response"] for p in PAIRS]


def test_cancel_within_a_step_then_resume_matches_an_uninterrupted_run(store, tiny_model_dir):
    from engine.inference.models import run_dir
    from engine.runtime.jobs import JobManager, run_sync
    from tests.job_helpers import run_cancelled_after

    _dataset(store)
    cfg = _quick(tiny_model_dir, max_steps=14, eval_every=5, save_every=4, eval_samples=1)
    straight = run_sync(store, "sft", cfg)
    assert straight["status"] == "succeeded", straight["error"]

    # cancelled (as the Stop button does) once step 2 is logged: it stops at the next
    # step's start, keeping a checkpoint of step 2
    rid = run_cancelled_after(store, "sft", cfg, 2)
    stopped = store.get_run(rid)["step"]
    assert stopped == 2
    assert tu.latest_checkpoint(run_dir(rid)).name == "step-2"

    jobs = JobManager(store)
    jobs.resume(rid)
    assert jobs.wait(rid, 120) == "succeeded", store.get_run(rid)["error"]
    run = store.get_run(rid)
    assert run["summary"]["resumed_from"] == stopped and run["summary"]["steps"] == 14
    assert run["step"] == run["total_steps"] == 14
    steps = [m["step"] for m in store.get_metrics(rid, ["train_loss"])]
    assert steps == list(range(1, 15))  # each step once: continued, not restarted
    assert [m["step"] for m in store.get_metrics(rid, ["eval_loss"])] == [0, 5, 10, 14]
    assert any("resumed from checkpoint" in r["message"] for r in store.get_log(rid))
    # same data order, optimizer, schedule and RNG: the same result as without the cancel
    assert run["summary"]["final_train_loss"] == pytest.approx(
        straight["summary"]["final_train_loss"], rel=1e-4)
    assert run["summary"]["eval_loss_after"] == pytest.approx(
        straight["summary"]["eval_loss_after"], rel=1e-4)
    assert run["summary"]["eval_loss_before"] == straight["summary"]["eval_loss_before"]


def test_a_run_grouped_by_length_pads_less_over_the_same_rows(store, tiny_model_dir,
                                                             monkeypatch):
    """The stage's data order: with group_by_length (default) a run's batches compute far
    fewer padded positions than at random, over exactly the same rows per epoch."""
    import engine.training.sft as sft
    from engine.runtime.jobs import run_sync

    rows = [{"prompt": f"Question {i}?", "response": ("word " * (1 + 40 * (i % 2))).strip()}
            for i in range(16)]
    _dataset(store, rows=rows, eval_fraction=0)
    original, seen = sft.collate_completions, []

    def spy(batch, pad_id):
        out = original(batch, pad_id)
        seen.append((out["input_ids"].numel(), int(out["attention_mask"].sum()),
                     sorted(len(e.input_ids) for e in batch)))
        return out

    monkeypatch.setattr(sft, "collate_completions", spy)
    positions = {}
    for group in (True, False):
        seen.clear()
        run = run_sync(store, "sft", _quick(tiny_model_dir, max_steps=4, batch_size=4,
                                            group_by_length=group))
        assert run["status"] == "succeeded", run["error"]
        real = sum(r for _, r, _ in seen)
        positions[group] = sum(n for n, _, _ in seen) / real
        lengths = sorted(x for _, _, ls in seen for x in ls)
        if group:
            # short with short, long with long (±1 token: "Question 7?" vs "Question 12?")
            assert all(ls[-1] - ls[0] <= 1 for _, _, ls in seen), seen
            grouped_lengths = lengths
    assert grouped_lengths == lengths  # one epoch each: the same 16 rows
    assert positions[True] < 1.01 and positions[False] > 1.2


def test_a_preference_dataset_is_refused_clearly(store, tiny_model_dir):
    from engine.runtime.jobs import run_sync

    _dataset(store, name="prefs", kind="preference",
             rows=[{"prompt": "p", "chosen": "a", "rejected": "b"}])
    run = run_sync(store, "sft", _quick(tiny_model_dir, dataset="prefs"))
    assert run["status"] == "failed" and "SFT needs an sft dataset" in run["error"]


def test_cli_trains_and_reports_truncation(store, tiny_model_dir, tmp_path, lab_home):
    rows = [*PAIRS, {"prompt": "Tell me a long story.", "response": "Once upon a time " * 40}]
    _dataset(store, rows=rows, eval_fraction=0.25)
    config = tmp_path / "sft.json"
    config.write_text(json.dumps(_quick(tiny_model_dir, max_steps=100)))
    out = subprocess.run(
        [sys.executable, "-m", "engine", "train", "sft", "--config", str(config),
         "--set", "max_steps=3", "--set", "lora.r=4", "--set", "max_length=64"],
        cwd=ROOT, env=dict(os.environ, RLHF_LAB_HOME=str(lab_home)), capture_output=True,
        text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["status"] == "succeeded" and summary["steps"] == 3
    assert summary["truncated"] == 1 and math.isfinite(summary["final_train_loss"])
    assert summary["eval_loss_before"] is not None and summary["eval_loss_after"] is not None
    assert os.path.exists(os.path.join(summary["adapter"], "adapter_config.json"))
    run = store.get_run(summary["run_id"])
    assert run["config"]["lora"]["r"] == 4
    assert any("truncated" in r["message"] and r["level"] == "warning"
               for r in store.get_log(run["id"]))


# -- the page ----------------------------------------------------------------------------------
def test_page_renders_and_starts_a_run(store, tiny_model_dir):
    import streamlit as st

    from engine.runtime.jobs import get_manager
    from ui.common import widget_key
    from ui.forms import field_key

    st.cache_resource.clear()  # each test its own database
    try:
        at = app_with_model(tiny_model_dir, "views/sft.py")  # the sidebar's base model: the tiny one
        assert not at.exception, at.exception
        # a fresh data folder: the app loaded the shipped samples, the form offers them
        assert at.selectbox(key=widget_key("sft_dataset")).value == "sample-sft"

        _dataset(store)
        at.run()
        at.selectbox(key=widget_key("sft_dataset")).set_value("toy").run()
        assert not at.exception, at.exception
        at.number_input(key=field_key("sft", "epochs")).set_value(0.5)
        at.number_input(key=field_key("sft", "batch_size")).set_value(4)
        at.button(key="start.sft").click().run()  # the form's start button
        assert not at.exception, at.exception
        runs = store.list_runs(stage="sft")
        assert len(runs) == 1 and runs[0]["config"]["model"] == str(tiny_model_dir)
        assert runs[0]["config"]["epochs"] == 0.5 and runs[0]["dataset"] == "toy"
        assert get_manager(store).wait(runs[0]["id"], 120) == "succeeded"

        at.run()  # the finished run: numbers, curves and the "try it" box
        assert not at.exception, at.exception
        assert at.selectbox(key="sft_view").value == runs[0]["id"]
        assert len(at.metric) == 4 and at.text_area
    finally:
        st.cache_resource.clear()
