"""DPO (engine/training/dpo.py) on the tiny model: it learns a preference, the reference
stays frozen, precomputed reference log-probs change nothing, cancel + resume replays the
same losses, bad input is refused before the model loads; the CLI verb and the page."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from engine.training import train_utils as tu
from engine.training.dpo import DPOConfig
from engine.schema import ConfigError
from tests.conftest import ROOT, app_with_model, make_adapter_run

WORDS = ["apples", "rivers", "music", "trains", "clouds", "cats", "bread", "stars",
         "paper", "snow", "gold", "roads"]


def _prefs(store, name="prefs"):
    """Chosen ends with '.', rejected with '!': one token tells them apart."""
    rows = [{"prompt": f"Say something about {w}.", "chosen": f"I like {w}.",
             "rejected": f"I like {w}!", "split": "eval" if i % 3 == 2 else "train"}
            for i, w in enumerate(WORDS)]
    store.create_dataset(name, "preference")
    store.add_rows(name, rows)
    return name


def _quick(model_dir, **over) -> dict:
    cfg = {"model": str(model_dir), "dataset": "prefs", "max_steps": 4, "batch_size": 4,
           "learning_rate": 5e-3, "eval_every": 0, "save_every": 0, "sample_every": 0,
           "samples_per_eval": 0, "max_length": 64, "warmup_ratio": 0.0,
           "beta": 0.5}
    cfg.update(over)
    return cfg


def _losses(store, rid):
    return [m["value"] for m in store.get_metrics(rid, ["loss"])]


def test_a_short_run_learns_the_preference(store, tiny_model_dir):
    from engine.inference.models import adapter_dir
    from engine.runtime.jobs import run_sync

    _prefs(store)
    run = run_sync(store, "dpo", _quick(tiny_model_dir, max_steps=12, eval_every=6, learning_rate=1e-2,
                                        sample_every=6, samples_per_eval=2, max_new_tokens=6))
    assert run["status"] == "succeeded", run["error"]
    s = run["summary"]
    assert s["first_loss"] == pytest.approx(0.6931, abs=1e-3)  # π_θ = π_ref at step 1: log 2
    assert s["last_loss"] < 0.5 * s["first_loss"]
    assert s["eval_accuracy_before"] == 0.0 and s["eval_accuracy_after"] == 1.0
    assert s["eval_margin_after"] > 0
    # the KL to π_ref is the mean of the greedy samples' own KL: 0 before training (π_θ =
    # π_ref), positive once the policy moved
    samples = store.get_samples(run["id"])
    assert all(x["kl"] == pytest.approx(0.0, abs=1e-5) for x in samples if x["step"] == 0)
    last = [x["kl"] for x in samples if x["step"] == 12]
    assert len(last) == 2 and s["kl_to_ref"] == pytest.approx(sum(last) / 2, rel=1e-6)
    assert s["kl_to_ref"] > 1e-4
    names = set(store.metric_names(run["id"]))
    assert {"loss", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy",
            "logp_chosen", "logp_rejected", "grad_norm", "learning_rate", "eval_loss",
            "eval_reward_accuracy", "eval_reward_margin", "kl_to_ref"} <= names
    assert [m["step"] for m in store.get_metrics(run["id"], ["eval_loss"])] == [0, 6, 12]
    assert {x["step"] for x in store.get_samples(run["id"])} == {0, 6, 12}
    # the adapter: standard PEFT, loadable by plain peft, recorded for Compare and Export
    assert s["adapter"] == str(adapter_dir(run["id"]))
    assert [a["kind"] for a in store.list_artifacts(run["id"])] == ["adapter"]
    from engine.data.collect import model_sources
    from engine.inference.models import load_base
    from peft import PeftModel

    assert str(run["id"]) in model_sources(store)
    PeftModel.from_pretrained(load_base(str(tiny_model_dir), "cpu").model, s["adapter"])


def test_the_reference_is_the_sft_adapter_frozen_on_the_same_base(store, tiny_model_dir):
    from engine.inference.models import load_adapter, load_base
    from engine.training.dpo import pair_logprobs, pair_stats, reference_logprobs
    from engine.training.reward import encode_pair

    sft = make_adapter_run(store, tiny_model_dir)
    loaded = load_base(str(tiny_model_dir), "cpu")
    tok, pad = loaded.tokenizer, loaded.tokenizer.pad_token_id
    base_weights = {n: p.clone() for n, p in loaded.model.named_parameters()}
    pairs = [encode_pair(tok, {"prompt": f"About {w}?", "chosen": f"{w}.",
                               "rejected": f"{w}!"}, 64) for w in WORDS[:4]]
    cfg = DPOConfig(model=str(tiny_model_dir), sft_run=sft)
    model, has_ref = tu.policy_and_reference(loaded.model, cfg.lora,
                                             tu.sft_adapter_path(store, sft, cfg.model))
    model.eval()  # as the stage: the SFT adapter's LoRA dropout is off
    ref_before = reference_logprobs(model, has_ref, pairs, pad, "cpu", 4)
    c, r = pair_logprobs(model, pairs, pad, "cpu")
    assert torch.allclose(torch.stack([c, r], 1), ref_before)  # the policy starts as the SFT run
    params = tu.policy_parameters(model)
    opt = torch.optim.AdamW(params, lr=1e-2)
    for _ in range(3):
        c, r = pair_logprobs(model, pairs, pad, "cpu")
        pair_stats(cfg, c, r, ref_before[:, 0], ref_before[:, 1])["loss"].backward()
        opt.step()
        opt.zero_grad()
    ref_after = reference_logprobs(model, has_ref, pairs, pad, "cpu", 4)
    assert torch.equal(ref_before, ref_after)
    c, r = pair_logprobs(model, pairs, pad, "cpu")
    assert not torch.allclose(torch.stack([c, r], 1), ref_before)  # the policy moved
    # one base in memory, untouched; π_ref equals the SFT adapter loaded on its own
    assert all(torch.equal(p, base_weights[n.replace(".base_layer", "")])
               for n, p in model.get_base_model().named_parameters() if "lora_" not in n)
    fresh = load_adapter(load_base(str(tiny_model_dir), "cpu").model,
                         tu.sft_adapter_path(store, sft, cfg.model)).eval()
    c, r = pair_logprobs(fresh, pairs, pad, "cpu")
    assert torch.allclose(torch.stack([c, r], 1), ref_before, atol=1e-5)


def test_precomputed_reference_gives_the_same_losses(store, tiny_model_dir):
    from engine.runtime.jobs import run_sync

    _prefs(store)
    sft = make_adapter_run(store, tiny_model_dir)
    runs = [run_sync(store, "dpo", _quick(tiny_model_dir, max_steps=2, sft_run=sft,
                                          precompute_ref=pre, eval_every=2))
            for pre in (False, True)]
    assert all(r["status"] == "succeeded" for r in runs), [r["error"] for r in runs]
    on_the_fly, pre = (_losses(store, r["id"]) for r in runs)
    assert on_the_fly[0] == pytest.approx(0.6931, abs=1e-3)
    assert pre == pytest.approx(on_the_fly, rel=1e-5)
    assert runs[0]["summary"]["eval_loss_after"] == pytest.approx(
        runs[1]["summary"]["eval_loss_after"], rel=1e-5)


def test_cancel_then_resume_replays_the_same_losses(store, tiny_model_dir):
    from engine.inference.models import run_dir
    from engine.runtime.jobs import JobManager, run_sync
    from tests.job_helpers import run_cancelled_after

    _prefs(store)
    cfg = _quick(tiny_model_dir, max_steps=6, save_every=3, eval_every=3, batch_size=2)
    straight = run_sync(store, "dpo", cfg)
    assert straight["status"] == "succeeded", straight["error"]

    rid = run_cancelled_after(store, "dpo", cfg, 2)   # at the next step's start
    stopped = store.get_run(rid)["step"]
    assert stopped == 2
    assert tu.latest_checkpoint(run_dir(rid)).name == "step-2"
    jobs = JobManager(store)
    jobs.resume(rid)
    assert jobs.wait(rid, 120) == "succeeded", store.get_run(rid)["error"]
    run = store.get_run(rid)
    assert run["summary"]["resumed_from"] == stopped
    assert [m["step"] for m in store.get_metrics(rid, ["loss"])] == list(range(1, 7))
    assert _losses(store, rid) == pytest.approx(_losses(store, straight["id"]), rel=1e-4)
    assert run["summary"]["eval_accuracy_after"] == straight["summary"]["eval_accuracy_after"]


def test_bad_input_is_refused_before_the_model_loads(store):
    from engine.runtime.jobs import run_sync

    store.create_dataset("notes", "sft")
    store.add_rows("notes", [{"prompt": "Hi?", "response": "Hello."}])
    run = run_sync(store, "dpo", {"model": "/no/such/model", "dataset": "notes"})
    assert run["status"] == "failed"
    assert "'notes' is a sft dataset" in run["error"] and "preference" in run["error"]
    assert "no/such/model" not in run["error"]
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOConfig(loss_type="ipo", label_smoothing=0.1).validate()
    with pytest.raises(ConfigError, match="loss_type"):
        DPOConfig(loss_type="hinge").validate()
    with pytest.raises(ConfigError, match="beta"):
        DPOConfig(beta=0.0).validate()


def test_cli_trains_dpo_on_an_empty_data_folder(tmp_path, tiny_model_dir):
    """`python -m engine train dpo --set ...` on a fresh RLHF_LAB_HOME: the shipped
    preference samples are loaded on first open and the run succeeds."""
    env = dict(os.environ, RLHF_LAB_HOME=str(tmp_path / "fresh"), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-m", "engine", "train", "dpo", "--set", f"model={tiny_model_dir}",
         "--set", "max_steps=1", "--set", "batch_size=2", "--set", "max_eval_pairs=1",
         "--set", "samples_per_eval=0", "--set", "max_length=96"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout[out.stdout.index("{"):])
    assert summary["status"] == "succeeded" and summary["steps"] == 1
    assert os.path.exists(os.path.join(summary["adapter"], "adapter_config.json"))


def test_page_renders_and_starts_a_run(store, tiny_model_dir):
    import streamlit as st

    from engine.runtime.jobs import get_manager
    from ui.common import widget_key
    from ui.forms import field_key
    from ui.i18n import t

    st.cache_resource.clear()
    try:
        at = app_with_model(tiny_model_dir, "views/dpo.py")
        assert not at.exception, at.exception
        # a fresh data folder: the shipped preference samples are the default dataset
        assert at.selectbox(key=widget_key("dpo_dataset")).value == "sample-preferences"
        _prefs(store)
        at.run()
        at.selectbox(key=widget_key("dpo_dataset")).set_value("prefs").run()
        at.number_input(key=field_key("dpo", "max_steps")).set_value(2)
        at.number_input(key=field_key("dpo", "batch_size")).set_value(2)
        at.button(key="start.dpo").click().run()
        assert not at.exception, at.exception
        runs = store.list_runs(stage="dpo")
        assert len(runs) == 1 and runs[0]["config"]["dataset"] == "prefs"
        assert runs[0]["config"]["max_steps"] == 2 and runs[0]["config"]["sft_run"] is None
        assert get_manager(store).wait(runs[0]["id"], 120) == "succeeded", \
            store.get_run(runs[0]["id"])["error"]
        at.run()  # the finished run: tiles, charts and their formulas, samples
        assert not at.exception, at.exception
        formulas = " ".join(x.value for x in at.latex)
        for piece in (r"\mathcal{L}_{\mathrm{DPO}}", r"\hat r_\theta", r"h_\theta",
                      r"\log\pi_\theta(y|x)", "k_3"):
            assert piece in formulas
        assert len(at.metric) >= 4 and len(at.get("vega_lite_chart")) >= 5
        # the greedy samples, newest first, with their step and KL
        table = next(d.value for d in at.dataframe if t("dpo.col_response") in d.value.columns)
        stored = store.get_samples(runs[0]["id"])[::-1]
        assert stored and list(table[t("dpo.col_response")]) == [x["response"] for x in stored]
        assert list(table[t("dpo.col_step")]) == [x["step"] for x in stored]
    finally:
        st.cache_resource.clear()


def test_lean_pass_gives_the_plain_log_probs_and_gradient(store, tiny_model_dir, monkeypatch):
    """pair_rows (a pair's prompt computed once, the LM head chunked, rows backpropagated one
    at a time) gives the padded pass's sequence log-probs and the same gradient."""
    from accelerate import Accelerator

    from engine.inference.models import load_base
    from engine.objectives import sequence_logprobs
    from engine.training import dpo
    from engine.training.reward import encode_pair
    from engine.training.sft import forward_logits
    from engine.inference.chat import collate_completions

    loaded = load_base(str(tiny_model_dir), "cpu")
    tok = loaded.tokenizer
    model, _ = tu.policy_and_reference(loaded.model, dpo.DPOConfig().lora, None)
    model.eval()
    with torch.no_grad():   # a policy that differs from the reference
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    rows = [{"prompt": f"Say something about {w}.", "chosen": f"I like {w} a lot.",
             "rejected": f"No {w}!"} for w in WORDS[:5]]
    pairs = [encode_pair(tok, r, 64) for r in rows]
    cfg = dpo.DPOConfig(beta=0.5, grad_accum=1)
    ref = torch.randn(5, 2) - 20
    params = tu.policy_parameters(model)

    batch = collate_completions([c for c, _ in pairs] + [r for _, r in pairs], tok.pad_token_id)
    logits, labels = forward_logits(model, batch)
    plain = sequence_logprobs(logits, labels)
    loss = dpo.pair_stats(cfg, plain[:5], plain[5:], ref[:, 0], ref[:, 1])["loss"]
    want = torch.autograd.grad(loss, params)

    def no_padded_pass(*args, **kwargs):
        raise AssertionError("pair_logprobs took the padded pass, not the lean rows")

    with monkeypatch.context() as m, torch.no_grad():   # the lean path only
        m.setattr(dpo, "forward_logits", no_padded_pass)
        c, r = dpo.pair_logprobs(model, pairs, tok.pad_token_id, "cpu")
    assert torch.allclose(torch.stack([c, r], 1), torch.stack([plain[:5], plain[5:]], 1).detach(),
                          atol=1e-4)
    monkeypatch.setattr(dpo, "ROW_TOKENS", 40)   # several rows: the gradient adds up over them
    monkeypatch.setattr(dpo, "forward_logits", no_padded_pass)
    for p in params:
        p.grad = None
    values = dpo.policy_pass(model, Accelerator(cpu=True), cfg, pairs, ref,
                             tok.pad_token_id, "cpu")
    assert torch.allclose(values, torch.stack([plain[:5], plain[5:]], 1).detach(), atol=1e-4)
    for p, g in zip(params, want):
        assert torch.allclose(p.grad, g, atol=1e-5, rtol=1e-3)
