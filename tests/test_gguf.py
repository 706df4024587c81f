"""GGUF export, checked by an independent reader: transformers' own GGUF loader (which
un-permutes llama.cpp's q/k layout and rebuilds the tokenizer from the file's metadata),
in a fresh process without lab code, must give the app's greedy answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from engine.__main__ import main as cli_main
from engine.export import export_run, exports_root
from engine.gguf_export import (CHATML_TEMPLATE, GGUFExportError, chat_format, estimate,
                                gguf_arch, parse_quants, permute_qk)
from engine.inference.chat import encode_prompt
from engine.inference.models import inference_cache
from tests.conftest import make_adapter_run

PROMPT = "Name three colours."
NEW_TOKENS = 12
# Measured (greedy, 12 new tokens; largest |Δ| of the next-token logits against the app's
# float32 ones), with lora_B ~ N(0, 0.5), a strong perturbation:
#   tiny 2-layer Llama   F16 12/12 tokens, Δ 0.0005 · Q8_0 9/12, Δ 0.012 · Q4_0 0/12, Δ 0.20
#   SmolLM2-135M         F16 12/12 tokens, Δ 0.076  · Q8_0 5/12, Δ 1.63  · Q4_0 0/12, Δ 19.9
# Tolerances: F16 token for token; Q8_0 its first 4 tokens and Δ below (margin ~2-8×).
# Q8_0 answers must start like the app's on the embedded model; the tiny model's random
# weights give near-tied logits, where 8-bit rounding flips a greedy choice (seen: 2 to 9
# of 12 tokens the same), so there only the logits bound below is checked
Q8_SAME_FIRST = {"tiny": 0, "embedded": 4}
TOLERANCE = {"tiny": {"f16": 0.01, "q8_0": 0.1}, "embedded": {"f16": 0.2, "q8_0": 3.0}}

GGUF_READER = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
out = {}
tok = AutoTokenizer.from_pretrained(folder, gguf_file=sys.argv[4])  # the same keys in each
for name in sys.argv[4:]:
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name,
                                                 dtype=torch.float32).eval()
    enc = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=n, do_sample=False)
        logits = model(**enc).logits[0, -1]
    out[name] = {"prompt": enc["input_ids"][0].tolist(),
                 "answer": gen[0, enc["input_ids"].shape[1]:].tolist(),
                 "logits": logits.tolist()}
print(json.dumps(out))
"""


def read_back(folder, names) -> dict:
    """Each GGUF file through transformers alone: prompt ids, greedy ids, first logits."""
    proc = subprocess.run([sys.executable, "-c", GGUF_READER, str(folder), PROMPT,
                           str(NEW_TOKENS), *names], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": ""}, cwd="/")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def app_answer(store, rid) -> tuple[list[int], list[int], torch.Tensor]:
    """The app's prompt ids, greedy answer ids and next-token logits (float32, CPU)."""
    with inference_cache.use(store, rid) as (model, tok):
        ids = torch.tensor([encode_prompt(tok, PROMPT)])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=NEW_TOKENS, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            logits = model(input_ids=ids).logits[0, -1].float()
    inference_cache.clear()
    return ids[0].tolist(), out[0, ids.shape[1]:].tolist(), logits


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_against_app(got: dict, app, f16: str, q8: str, model: str) -> None:
    prompt_ids, answer, logits = app
    tol = TOLERANCE[model]
    assert got[f16]["prompt"] == prompt_ids  # the tokenizer and chat template travelled
    assert got[f16]["answer"] == answer      # token for token
    assert np.abs(np.array(got[f16]["logits"]) - logits.numpy()).max() < tol["f16"]
    assert got[q8]["prompt"] == prompt_ids
    assert common_prefix(got[q8]["answer"], answer) >= min(Q8_SAME_FIRST[model], len(answer))
    assert np.abs(np.array(got[q8]["logits"]) - logits.numpy()).max() < tol["q8_0"]


def test_gguf_of_a_folder_base_reads_back_as_the_app(store, tiny_model_dir, capsys,
                                                     monkeypatch):
    monkeypatch.setenv("RLHF_LAB_DEVICE", "cpu")
    rid = make_adapter_run(store, tiny_model_dir)
    inference_cache.clear()
    app = app_answer(store, rid)
    assert len(app[1]) >= 4

    out_dir = exports_root() / "gguf-cli"
    assert cli_main(["export", str(rid), "--out", str(out_dir), "--gguf", "f16,q8_0,q4_0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    files = {f["quant"]: f for f in summary["gguf_files"]}
    assert list(files) == ["f16", "q8_0", "q4_0"]
    assert files["f16"]["bytes"] > files["q8_0"]["bytes"] > files["q4_0"]["bytes"]
    gguf_dir = out_dir / "gguf"
    modelfile = (gguf_dir / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{files['q8_0']['file']}")
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "<|im_start|>" in modelfile
    assert "llama-cli -m" in (gguf_dir / "README.md").read_text()
    assert "ollama create" in (gguf_dir / "README.md").read_text()

    got = read_back(gguf_dir, [files[q]["file"] for q in ("f16", "q8_0")])
    check_against_app(got, app, files["f16"]["file"], files["q8_0"]["file"], "tiny")

    # the file itself: llama.cpp's names, the tokenizer and the file type
    from gguf import GGUFReader
    reader = GGUFReader(str(gguf_dir / files["q8_0"]["file"]))
    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "blk.0.attn_q.weight", "blk.1.ffn_down.weight",
            "output_norm.weight"} <= names and "output.weight" not in names  # tied
    assert reader.fields["general.file_type"].contents() == 7  # MOSTLY_Q8_0
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    q4 = {t.name: t.tensor_type.name for t in GGUFReader(str(gguf_dir / files["q4_0"]["file"]))
          .tensors}
    assert q4["blk.0.ffn_up.weight"] == "Q4_0" and q4["token_embd.weight"] == "Q8_0"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "<|im_start|>" in reader.fields["tokenizer.chat_template"].contents()


@pytest.mark.skipif(os.environ.get("RLHF_LAB_GGUF_EMBEDDED") != "1",
                    reason="the embedded model's GGUF round trip takes minutes on 2 cores: "
                           "RLHF_LAB_GGUF_EMBEDDED=1 runs it")
def test_gguf_of_the_embedded_model_carries_its_metadata(store, embedded_dir, monkeypatch):
    monkeypatch.setenv("RLHF_LAB_DEVICE", "cpu")
    rid = make_adapter_run(store, embedded_dir, stage="ppo", spec="embedded")
    inference_cache.clear()
    app = app_answer(store, rid)
    summary = export_run(store, rid, "embedded-gguf", gguf=["f16", "q8_0"])
    files = {f["quant"]: f for f in summary["gguf_files"]}
    got = read_back(summary["gguf_dir"], [files["f16"]["file"], files["q8_0"]["file"]])
    check_against_app(got, app, files["f16"]["file"], files["q8_0"]["file"], "embedded")

    from gguf import GGUFReader
    from engine.inference.models import EMBEDDED_GGUF, embedded_gguf_folder
    src = GGUFReader(str(embedded_gguf_folder() / EMBEDDED_GGUF))
    new = GGUFReader(files["f16"]["path"])
    for key in ("tokenizer.ggml.pre", "tokenizer.chat_template", "llama.rope.freq_base",
                "general.organization", "tokenizer.ggml.bos_token_id"):
        assert new.fields[key].contents() == src.fields[key].contents()
    assert new.fields["tokenizer.ggml.merges"].contents() == \
        src.fields["tokenizer.ggml.merges"].contents()
    assert new.fields["general.file_type"].contents() == 1  # MOSTLY_F16
    assert {t.name for t in new.tensors} == {t.name for t in src.tensors}
    # the page's estimate before writing is within a few % of the real file
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(embedded_dir)
    for q in ("f16", "q8_0"):
        assert abs(estimate(cfg, q)["file_bytes"] / files[q]["bytes"] - 1) < 0.03


def test_permutation_is_what_transformers_undoes():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.random.default_rng(0).normal(size=(4 * 8, 5)).astype(np.float32)  # 4 heads of 8
    undo = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    assert np.array_equal(undo._reverse_permute_weights(permute_qk(w, 4), 4, 4), w)
    k = w[:16]
    assert np.array_equal(undo._reverse_permute_weights(permute_qk(k, 4, 2), 4, 2), k)
    # within a head of dim 8, rows [0..3 | 4..7] become pairs 0,4,1,5,2,6,3,7
    rows = np.arange(8, dtype=np.float32)[:, None]
    assert permute_qk(rows, 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_other_architectures_and_bad_types_are_refused(store, tiny_model_dir):
    from transformers import GPT2Config, Qwen2Config

    with pytest.raises(GGUFExportError, match="GPT2LMHeadModel"):
        gguf_arch(GPT2Config(architectures=["GPT2LMHeadModel"]))
    assert gguf_arch(Qwen2Config(architectures=["Qwen2ForCausalLM"])) == "qwen2"
    with pytest.raises(GGUFExportError, match="q3_k"):
        parse_quants("f16,q3_k")
    assert parse_quants("Q8_0, f16") == ["f16", "q8_0"]
    from tests.conftest import make_reward_run
    rid = make_reward_run(store, tiny_model_dir)
    with pytest.raises(GGUFExportError, match="reward model"):
        export_run(store, rid, "rm", gguf="f16")


def test_modelfile_from_chat_templates():
    smol = ("{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\n"
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n'"
            " }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']}}")
    fmt = chat_format(smol, "<|im_end|>")
    assert fmt.template == CHATML_TEMPLATE and fmt.stops == ["<|im_end|>"]
    assert fmt.system.startswith("You are a helpful AI assistant named SmolLM")
    llama3 = chat_format("<|start_header_id|>{{ role }}<|end_header_id|>", "<|eot_id|>")
    assert llama3.stops == ["<|eot_id|>"] and "<|start_header_id|>" in llama3.template
    other = chat_format("[INST] {{ content }} [/INST]", "</s>")
    assert other.template is None and other.stops == ["</s>"]
