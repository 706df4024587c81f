"""The sidebar's model list (engine.inference.catalog): causal LMs of the Hugging Face cache
and of the user's folders, with parameters, architecture, size on disk and chat template."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def _without_template(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg_path = dst / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("chat_template", None)
    cfg_path.write_text(json.dumps(cfg))
    return dst


def _as_hf_cache(src: Path, cache: Path, repo: str) -> Path:
    """The layout huggingface_hub writes: blobs, and a snapshot of links to them."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / "0123abc"
    (root / "blobs").mkdir(parents=True)
    snap.mkdir(parents=True)
    for f in src.iterdir():
        blob = root / "blobs" / f.name
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(blob)
    return snap


@pytest.fixture
def layout(tmp_path, tiny_model_dir, monkeypatch):
    cache = tmp_path / "hub"
    snap = _as_hf_cache(tiny_model_dir, cache, "someone/tiny-chat")
    mine = tmp_path / "mine"
    mine.mkdir()
    _without_template(tiny_model_dir, mine / "no-template")
    (mine / "encoder").mkdir()
    (mine / "encoder" / "config.json").write_text(json.dumps(
        {"architectures": ["BertModel"], "model_type": "bert"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return snap, mine


def test_finds_cache_and_folder_models_with_their_facts(layout, tiny_model_dir):
    import torch

    from engine.inference import catalog
    from engine.inference.models import load_base

    snap, mine = layout
    catalog.add_user_folder(str(mine))
    found = {m["name"]: m for m in catalog.find_models()}
    assert set(found) == {"someone/tiny-chat", "no-template"}   # the encoder is no causal LM
    real = sum(p.numel() for p in load_base(str(tiny_model_dir), device="cpu").model.parameters())
    weights = sum(p.stat().st_size for p in Path(tiny_model_dir).glob("*.safetensors"))
    chat = found["someone/tiny-chat"]
    assert chat["source"] == "hf-cache" and chat["spec"] == str(snap)
    assert chat["parameters"] == real and chat["size_bytes"] == weights
    assert chat["architecture"] == "LlamaForCausalLM" and chat["chat_template"] is True
    assert found["no-template"]["chat_template"] is False


def test_a_missing_folder_is_refused_by_name(tmp_path):
    from engine.inference import catalog

    with pytest.raises(ValueError, match="nowhere"):
        catalog.add_user_folder(str(tmp_path / "nowhere"))
    assert catalog.user_folders() == []


def test_sidebar_lists_them_and_shows_the_default_template(layout):
    from streamlit.testing.v1 import AppTest

    from engine.inference import catalog
    from tests.conftest import ROOT

    _, mine = layout
    catalog.add_user_folder(str(mine))
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.session_state["model_kind"] = "found"
    # (AppTest draws the sidebar of st.navigation on the first run only: choose beforehand)
    at.session_state["model_found"] = str(mine / "no-template")
    at.run()
    assert not at.exception, at.exception
    box = at.sidebar.selectbox(key="model_found")
    assert len(box.options) == 2 and box.value == str(mine / "no-template")
    assert at.session_state["model_spec"] == str(mine / "no-template")
    text = " ".join(c.value for c in at.sidebar.caption)
    assert "LlamaForCausalLM" in text and "chat template: none" in text
    assert at.sidebar.warning and "no chat template" in at.sidebar.warning[0].value
    assert "{% for m in messages %}" in at.sidebar.code[0].value
