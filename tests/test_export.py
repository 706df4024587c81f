"""Export: the adapter and the merged model load with plain peft/transformers in a fresh
process and reproduce the app's greedy output token for token; the model card; the
CLI; path safety; the page through AppTest."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import io
import zipfile

import pytest
import torch
from streamlit.testing.v1 import AppTest

from engine.__main__ import main as cli_main
from engine.inference.chat import encode_prompt
from engine.export import (EMBEDDED_HUB_ID, UnsafePathError, export_run, exports_root,
                           resolve_export_dir, zip_folder)
from engine.inference.generate import SamplingConfig, generate
from engine.inference.models import inference_cache
from tests.conftest import ROOT
from tests.conftest import make_adapter_run as shared_adapter_run
from ui.common import widget_key

PROMPT = "Name three colours."
NEW_TOKENS = 12

PLAIN_LOADER = r"""
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base_path, adapter_path, merged_path, prompt, n = sys.argv[1:6]
torch.manual_seed(0)

def greedy(model, tok):
    enc = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    out = model.generate(**enc, max_new_tokens=int(n), do_sample=False)
    return out[0, enc["input_ids"].shape[1]:].tolist()

tok = AutoTokenizer.from_pretrained(base_path)
base = AutoModelForCausalLM.from_pretrained(base_path)
adapter = PeftModel.from_pretrained(base, adapter_path).eval()
merged = AutoModelForCausalLM.from_pretrained(merged_path).eval()
merged_tok = AutoTokenizer.from_pretrained(merged_path)
print(json.dumps({"adapter": greedy(adapter, tok), "merged": greedy(merged, merged_tok),
                  "text": tok.decode(greedy(adapter, tok), skip_special_tokens=True)}))
"""


def make_adapter_run(store, tiny_model_dir, stage="sft", spec=None, seed=1) -> int:
    return shared_adapter_run(store, tiny_model_dir, stage, spec=spec, seed=seed, dataset="demo")


def app_greedy(store, rid) -> tuple[list[int], str]:
    """The app's greedy answer: token ids, and the text engine.inference.generate returns."""
    cfg = SamplingConfig(greedy=True, max_new_tokens=NEW_TOKENS)
    with inference_cache.use(store, rid) as (model, tok):
        text = generate(model, tok, [PROMPT], cfg)[0]
        ids = torch.tensor([encode_prompt(tok, PROMPT)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return out[0, ids.shape[1]:].tolist(), text


def test_exported_adapter_and_merged_model_reproduce_the_app(store, tiny_model_dir, capsys,
                                                             monkeypatch):
    # the plain loader runs on CPU in float32: pin the app there too (a GPU would use bf16)
    monkeypatch.setenv("RLHF_LAB_DEVICE", "cpu")
    rid = make_adapter_run(store, tiny_model_dir)
    store.create_dataset("demo", "sft")
    store.add_rows("demo", [{"prompt": "p", "response": "r"}] * 4)
    for step in (1, 2, 3):
        store.log_metrics(rid, step, {"loss": 3.0 / step, "grad_norm": 1.0 + step})
    inference_cache.clear()
    app_ids, app_text = app_greedy(store, rid)
    inference_cache.clear()
    assert len(app_ids) >= 2 and app_text  # a real answer to reproduce

    # the CLI (in this process: same parser and code) writes the export and prints it
    out_dir = exports_root() / "cli-export"
    assert cli_main(["export", str(rid), "--out", str(out_dir), "--merged"]) == 0
    summary = json.loads(capsys.readouterr().out)
    adapter = out_dir / "adapter"
    assert summary["adapter_dir"] == str(adapter) and summary["merged_dir"]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= \
        {p.name for p in adapter.iterdir()}
    assert json.loads((adapter / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert sorted(summary["charts"]) == ["grad_norm.png", "loss.png"]
    assert (adapter / "charts" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    card = (adapter / "README.md").read_text()
    assert "| loss | 1 |" in card and "Dataset `demo`, 4 rows" in card
    assert "| learning_rate | 0.0003 |" in card and "| lora.r | 16 |" in card
    assert (out_dir / "merged" / "model.safetensors").exists()

    # a fresh Python process with plain peft / transformers, no lab code
    plain = subprocess.run([sys.executable, "-c", PLAIN_LOADER, str(tiny_model_dir),
                            str(adapter), str(out_dir / "merged"), PROMPT, str(NEW_TOKENS)],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": ""}, cwd="/")
    assert plain.returncode == 0, plain.stderr
    got = json.loads(plain.stdout.strip().splitlines()[-1])
    assert got["adapter"] == app_ids  # token for token
    assert got["merged"] == app_ids
    assert got["text"].strip() == app_text

    # the CLI's generate gives the app's answer too
    assert cli_main(["generate", "--run", str(rid), "--prompt", PROMPT, "--greedy",
                     "--max-new-tokens", str(NEW_TOKENS)]) == 0
    assert capsys.readouterr().out.strip() == app_text
    inference_cache.clear()
    # an unknown run is a clear one-line error (exit 2), not a traceback
    assert cli_main(["export", "999", "--out", str(out_dir)]) == 2
    assert "run 999 does not exist" in capsys.readouterr().err


def test_embedded_base_is_named_by_its_hub_id(store, tiny_model_dir):
    rid = make_adapter_run(store, tiny_model_dir, stage="ppo", spec="embedded")
    summary = export_run(store, rid)  # default folder: exports/<run name>
    assert summary["out_dir"] == str((exports_root() / f"ppo-{rid}").resolve())
    cfg = json.loads(open(os.path.join(summary["adapter_dir"], "adapter_config.json")).read())
    assert cfg["base_model_name_or_path"] == EMBEDDED_HUB_ID
    card = open(os.path.join(summary["adapter_dir"], "README.md")).read()
    assert f"base_model: {EMBEDDED_HUB_ID}" in card and "de-quantised" in card
    assert summary["merged_dir"] is None
    # exporting again to the same folder replaces the earlier export
    again = export_run(store, rid)
    assert again["out_dir"] == summary["out_dir"]
    names = zipfile.ZipFile(io.BytesIO(zip_folder(summary["adapter_dir"]))).namelist()
    assert "adapter/adapter_model.safetensors" in names and "adapter/README.md" in names


def test_export_refuses_paths_outside_allowed_folders(store, tiny_model_dir, tmp_path,
                                                      monkeypatch):
    rid = make_adapter_run(store, tiny_model_dir)
    monkeypatch.delenv("RLHF_LAB_EXPORT_DIR", raising=False)
    for bad in ("../../escape", "../runs/1", str(tmp_path / "elsewhere"), "/etc/rlhf"):
        with pytest.raises(UnsafePathError, match="refusing"):
            export_run(store, rid, bad)
    assert not (tmp_path / "elsewhere").exists()
    # a symlink inside the exports folder that points outside is refused too
    exports_root().mkdir(parents=True, exist_ok=True)
    (exports_root() / "link").symlink_to(tmp_path)
    with pytest.raises(UnsafePathError):
        resolve_export_dir("link/x")
    # a folder with someone else's files is never overwritten
    (exports_root() / "busy").mkdir()
    (exports_root() / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UnsafePathError, match="not an RLHF Lab export"):
        export_run(store, rid, "busy")
    assert (exports_root() / "busy" / "notes.txt").read_text() == "mine"
    # the folder the user names (RLHF_LAB_EXPORT_DIR) is allowed
    monkeypatch.setenv("RLHF_LAB_EXPORT_DIR", str(tmp_path / "mine"))
    ok = export_run(store, rid, str(tmp_path / "mine" / "a"))
    assert ok["out_dir"] == str((tmp_path / "mine" / "a").resolve())
    with pytest.raises(ValueError, match="only finished"):
        export_run(store, store.create_run("sft", {}, status="failed"), "x")


# -- the page ------------------------------------------------------------------------------
def _app(lang="en") -> AppTest:
    import streamlit as st

    st.cache_resource.clear()  # the page's store must be this test's database
    at = AppTest.from_file(str(ROOT / "views" / "export.py"), default_timeout=60)
    at.session_state["lang"] = lang
    return at


def test_export_page_exports_and_offers_downloads(store, tiny_model_dir):
    from engine.runtime.jobs import get_manager

    rid = make_adapter_run(store, tiny_model_dir)
    at = _app().run()
    assert not at.exception, at.exception
    assert at.selectbox(key=widget_key("export_run")).value == rid
    at.text_input(key="export_out").set_value("../../outside").run()
    assert any("refused" in e.value for e in at.error)
    assert at.button(key="export_start").disabled
    at.text_input(key="export_out").set_value("from-page").run()
    gguf = at.multiselect(key=widget_key("export_gguf"))
    assert gguf.options[1].startswith("Q8_0 · file ≈ ") and "memory ≈" in gguf.options[1]
    gguf.select("q8_0").run()
    at.button(key="export_start").click().run()
    job = at.session_state["export_job"]
    assert get_manager(store).wait(job, 120) == "succeeded", store.get_run(job)["error"]
    at.run()
    assert not at.exception, at.exception
    assert (exports_root() / "from-page" / "adapter" / "adapter_config.json").exists()
    downloads = at.get("download_button")
    assert len(downloads) == 2  # the adapter zip and the Q8_0 file (no merged model)
    assert (exports_root() / "from-page" / "gguf" / "Modelfile").exists()


def test_export_page_in_french_without_runs(store):
    at = _app("fr").run()
    assert not at.exception, at.exception
    assert at.title[0].value.endswith("Exporter")
    assert "Aucune exécution" in at.info[0].value


def test_reward_run_export_keeps_its_head(store, tiny_model_dir):
    from tests.conftest import make_reward_run

    rid = make_reward_run(store, tiny_model_dir)
    summary = export_run(store, rid, "reward-model", merged=True)
    assert "reward_head.safetensors" in summary["adapter_files"]
    assert "reward_head.safetensors" in summary["merged_files"]
    card = open(os.path.join(summary["adapter_dir"], "README.md")).read()
    assert "reward_head.safetensors" in card and "Dataset `prefs`, 12 rows" in card


def test_model_card_lists_only_the_settings_that_applied(tiny_model_dir):
    from engine.export import model_card

    config = {"model": "embedded", "dataset": "prompts", "reward_run": 3, "sft_run": None,
              "builtin_reward": "ends_with_period", "reward_params": {"x": 1},
              "adaptive_kl": False, "target_kl": 6.0, "beta": 0.1, "max_steps": 4}
    run = {"id": 7, "name": "ppo-7", "stage": "ppo", "status": "succeeded",
           "config": config, "parents": [3]}
    metrics = {"kl": 0.25, **{f"ratio_hist_{k:02d}": float(k % 3) for k in range(20)}}
    card = model_card(run, EMBEDDED_HUB_ID, "embedded", metrics, [], None, None)
    settings = card.split("## Configuration")[1].split("## Final metrics")[0]
    assert "| reward_run | 3 |" in settings and "| beta | 0.1 |" in settings
    assert "| max_steps | 4 |" in settings and "| lora.dropout | 0 |" in settings
    # a trained reward model was used: the rule and its parameters did not apply
    assert "builtin_reward" not in settings and "reward_params" not in settings
    assert "ends_with_period" not in card
    # fixed β: the adaptive controller's settings did not apply; unset sft_run not listed
    assert "target_kl" not in settings and "horizon" not in settings
    assert "sft_run" not in settings
    assert "| model |" not in settings and "| dataset |" not in settings  # own sections
    # the ratio histogram is one row, not twenty
    assert "ratio_hist_" not in card
    assert "| ratio histogram (20 bins, 0.5–1.5) | 0 1 2 0 1 2" in card
    assert "| kl | 0.25 |" in card
    # with the rule reward, the rule is listed (and the settings of a reward run that
    # did not normalise leave out the normalisation ones)
    rule = dict(config, reward_run=None)
    card = model_card(dict(run, config=rule), EMBEDDED_HUB_ID, "embedded", {}, [], None, None)
    assert "| builtin_reward | ends_with_period |" in card
    reward = {"model": "embedded", "dataset": "prefs", "normalize": False,
              "normalize_samples": 99, "eval_split": "eval"}
    card = model_card(dict(run, stage="reward", config=reward), EMBEDDED_HUB_ID, "embedded",
                      {}, [], None, None)
    assert "| normalize | false |" in card and "normalize_samples" not in card
    assert "eval_split" not in card  # hidden
