"""Shared fixtures: a fresh data folder per test, the embedded model converted once per
session, and a tiny Llama built in the test session (real weights, random init) that
uses the embedded model's tokenizer and chat template."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def models_home(tmp_path_factory) -> Path:
    path = Path(os.environ.get("RLHF_LAB_TEST_MODELS") or tmp_path_factory.mktemp("models"))
    os.environ["RLHF_LAB_MODELS"] = str(path)
    return path


@pytest.fixture(autouse=True)
def lab_home(tmp_path, monkeypatch, models_home) -> Path:
    """Every test gets its own data folder (database, runs); model copies are shared."""
    home = tmp_path / "lab"
    home.mkdir()
    monkeypatch.setenv("RLHF_LAB_HOME", str(home))
    monkeypatch.setenv("RLHF_LAB_MODELS", str(models_home))
    return home


@pytest.fixture
def store(lab_home):
    from storage import Store

    s = Store(lab_home / "lab.db")
    yield s
    s.close()


@pytest.fixture(scope="session")
def embedded_dir(models_home) -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (converted once)."""
    from engine.models import ensure_embedded_cache

    return ensure_embedded_cache()


def build_tiny_model(folder: Path, tokenizer_dir: Path, seed: int = 0, layers: int = 2,
                     hidden: int = 64) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir) -> Path:
    """A 2-layer, 64-wide Llama with the embedded tokenizer: a real model that trains in seconds."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", embedded_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_streamlit(home: Path, port: int, env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, RLHF_LAB_HOME=str(home), **(env_extra or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
         "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(proc.stdout.read().decode())
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("streamlit did not start within 60 s")
