import json
import subprocess
import sys

import pytest
import torch

from engine.inference.chat import IGNORE_INDEX, collate_completions, encode_completion, encode_prompt
from engine.inference.generate import SamplingConfig, generate
from engine.inference.models import ModelLoadError, add_lora, load_base, pick_device
from tests.conftest import ROOT, make_adapter_run


def test_pick_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("RLHF_LAB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device().type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device().type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device().type == "cuda"


def test_embedded_model_loads_and_answers(embedded_dir):
    loaded = load_base("embedded", device="cpu")
    info = loaded.info()
    assert info["name"] == "SmolLM2-135M-Instruct" and 130e6 < info["parameters"] < 140e6
    tok = loaded.tokenizer
    assert tok.pad_token_id != tok.eos_token_id  # padding never looks like a stop
    answer = generate(loaded.model, tok, ["Who wrote Les Misérables?"],
                      SamplingConfig(greedy=True, max_new_tokens=16))[0]
    assert "Hugo" in answer


def test_tiny_local_folder_loads(tiny_model_dir):
    loaded = load_base(str(tiny_model_dir), device="cpu")
    assert loaded.info()["parameters"] < 5e6
    peft_model = add_lora(loaded.model)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert 0 < trainable < 100_000


@pytest.mark.parametrize("spec,message", [
    ("/no/such/folder", "does not exist"),
    (str(ROOT / "requirements.txt"), "is a file"),
    (str(ROOT / "tests"), "no config.json"),
])
def test_bad_model_paths_give_clear_errors(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        load_base(spec)


def test_completion_mask_covers_response_tokens_only(tiny_model_dir):
    tok = load_base(str(tiny_model_dir), device="cpu").tokenizer
    enc = encode_completion(tok, "Who wrote Les Misérables?", "Victor Hugo.", max_length=256)
    prompt_len = len(encode_prompt(tok, "Who wrote Les Misérables?"))
    assert enc.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len
    trained = [t for t in enc.labels if t != IGNORE_INDEX]
    assert tok.decode(trained) == "Victor Hugo.<|im_end|>"
    assert trained[-1] == tok.eos_token_id
    batch = collate_completions([enc, encode_completion(tok, "Hi", "Hello", 256)],
                                tok.pad_token_id)
    short = batch["attention_mask"][1].sum().item()
    assert (batch["labels"][1, short:] == IGNORE_INDEX).all()
    assert (batch["input_ids"][1, short:] == tok.pad_token_id).all()


def test_overlong_example_is_truncated_not_crashing(tiny_model_dir):
    tok = load_base(str(tiny_model_dir), device="cpu").tokenizer
    enc = encode_completion(tok, "q " * 500, "a " * 50_000, max_length=128)
    assert enc.truncated and len(enc.input_ids) == 128
    assert any(t != IGNORE_INDEX for t in enc.labels)


def test_cli_model_info_and_runs_list(tiny_model_dir, lab_home):
    out = subprocess.run([sys.executable, "-m", "engine", "model", "info", "--json", "--model",
                          str(tiny_model_dir)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["name"] == tiny_model_dir.name and info["device"] == "cpu" and info["load_seconds"] > 0
    out = subprocess.run([sys.executable, "-m", "engine", "runs", "list", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and json.loads(out.stdout) == []
    out = subprocess.run([sys.executable, "-m", "engine", "model", "info", "--model",
                          "/no/such/model"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_inference_cache_switches_between_base_and_run_adapters(store, tiny_model_dir):
    from engine.inference.models import inference_cache

    rid = make_adapter_run(store, tiny_model_dir)
    cfg = SamplingConfig(greedy=True, max_new_tokens=8)
    inference_cache.clear()
    with inference_cache.use(store, "base", base_spec=str(tiny_model_dir)) as (m, tok):
        plain = generate(m, tok, ["Hello"], cfg)
    with inference_cache.use(store, rid) as (m, tok):
        tuned = generate(m, tok, ["Hello"], cfg)
    with inference_cache.use(store, "base", base_spec=str(tiny_model_dir)) as (m, tok):
        again = generate(m, tok, ["Hello"], cfg)
    assert plain == again and tuned != plain
    inference_cache.clear()
