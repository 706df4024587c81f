"""SFT step benchmark on the embedded model: seconds per step and tokens/s at batch 8,
max length 128 (LoRA defaults), then the eval loss before and after an SFT run with the
default config (optionally capped at --run-steps). Prints one JSON document.

    .venv/bin/python bench/sft_step.py [--steps 3] [--warmup 1] [--run-steps 0] [--no-full]

Data: the "sample-sft" dataset (engine.data.ensure_sample_datasets) when available,
else 64 synthetic rows. Everything happens in a temporary data folder; the converted
model copy is reused from RLHF_LAB_MODELS (or the default data folder's models/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rows_64() -> list[dict]:
    rows = []
    for a in range(8):
        for b in range(8):
            rows.append({"prompt": f"What is {a} times {b}? Answer with a sentence.",
                         "response": f"{a} times {b} is {a * b}."})
    return rows


def _dataset(store) -> str:
    try:
        from engine.data import ensure_sample_datasets

        ensure_sample_datasets(store)
        if store.get_dataset("sample-sft")["rows"]:
            return "sample-sft"
    except Exception as exc:  # noqa: BLE001 - fall back to our own rows
        print(f"sample-sft unavailable ({exc}); using 64 synthetic rows", file=sys.stderr)
    store.create_dataset("bench-sft", "sft", eval_fraction=0.125)
    store.add_rows("bench-sft", _rows_64())
    return "bench-sft"


def time_steps(store, dataset: str, steps: int, warmup: int, window: bool, batch_size: int = 8,
               max_length: int = 128) -> dict:
    import torch

    from engine.training import train_utils as tu
    from engine.inference.chat import collate_completions
    from engine.inference.models import LoraSettings, add_lora, load_base
    from engine.training.sft import encode_rows, forward_logits, sft_loss

    loaded = load_base("embedded", "cpu")
    model = add_lora(loaded.model, LoraSettings())
    model.train()
    opt = tu.make_optimizer(model, 3e-4)
    rows = store.list_rows(dataset, split="train")
    examples, truncated, _ = encode_rows(loaded.tokenizer, rows, max_length)
    times, cpu, tokens, lengths = [], [], [], []
    for i in range(warmup + steps):
        chunk = [examples[(i * batch_size + j) % len(examples)] for j in range(batch_size)]
        batch = collate_completions(chunk, loaded.tokenizer.pad_token_id)
        t0, c0 = time.perf_counter(), time.process_time()
        if window:
            logits, labels = forward_logits(model, batch)
        else:
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"]
        loss = sft_loss(logits, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= warmup:
            times.append(dt)
            cpu.append(dc)
            tokens.append(int(batch["attention_mask"].sum()))
            lengths.append(batch["input_ids"].shape[1])
    del model, loaded, opt
    return {"mode": "response window" if window else "full logits",
            "seconds_per_step": round(sum(times) / len(times), 3),
            # CPU seconds (all threads) per step: less sensitive than wall time to other
            # processes sharing the cores
            "cpu_seconds_per_step": round(sum(cpu) / len(cpu), 3),
            "tokens_per_s": round(sum(tokens) / sum(times), 1),
            "steps_timed": len(times), "mean_padded_length": round(sum(lengths) / len(lengths), 1),
            "mean_tokens_per_step": round(sum(tokens) / len(tokens), 1),
            "truncated_examples": truncated, "threads": torch.get_num_threads()}


def default_run(store, dataset: str, run_steps: int) -> dict:
    from engine.runtime.jobs import run_sync
    from engine.training.sft import SFTConfig

    cfg = SFTConfig(dataset=dataset, max_steps=run_steps)
    t0 = time.perf_counter()
    run = run_sync(store, "sft", cfg, name="bench")
    s = run["summary"]
    return {"status": run["status"], "error": (run["error"] or "").split("\n\n")[0] or None,
            "config": {"max_steps": cfg.max_steps, "epochs": cfg.epochs,
                       "batch_size": cfg.batch_size, "learning_rate": cfg.learning_rate,
                       "max_length": cfg.max_length, "lora_r": cfg.lora.r},
            "steps": s.get("steps"), "wall_seconds": round(time.perf_counter() - t0, 1),
            "train_seconds": s.get("train_seconds"), "tokens_per_s": s.get("tokens_per_s"),
            "eval_loss_before": s.get("eval_loss_before"),
            "eval_loss_after": s.get("eval_loss_after"),
            "final_train_loss": s.get("final_train_loss"),
            "train_examples": s.get("train_examples"), "eval_examples": s.get("eval_examples")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--run-steps", type=int, default=0,
                    help="cap the default run at this many steps (0: the default config)")
    ap.add_argument("--no-full", action="store_true",
                    help="skip timing the full-logits variant (prompt logits computed too)")
    ap.add_argument("--no-run", action="store_true", help="skip the default run")
    ap.add_argument("--no-timing", action="store_true", help="skip the step timing")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import accelerate
    import peft
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.inference.models import models_home

    os.environ.setdefault("RLHF_LAB_MODELS", str(models_home()))
    home = tempfile.mkdtemp(prefix="rlhf-bench-sft-")
    os.environ["RLHF_LAB_HOME"] = home
    from storage import Store

    store = Store(Path(home) / "lab.db")
    dataset = _dataset(store)
    out = {"benchmark": "sft_step", "dataset": dataset,
           "dataset_rows": store.get_dataset(dataset)["rows"],
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                       "python": platform.python_version()},
           "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                        "peft": peft.__version__, "accelerate": accelerate.__version__},
           "batch_size": 8, "max_length": 128, "timing": []}
    def part(key, value):  # partial results reach stderr at once (slow, shared machines)
        print(json.dumps({key: value}), file=sys.stderr, flush=True)
        return value

    if not args.no_timing:
        out["timing"].append(part("timing", time_steps(store, dataset, args.steps, args.warmup,
                                                       window=True)))
    if not args.no_full and not args.no_timing:
        out["timing"].append(part("timing", time_steps(store, dataset, args.steps, args.warmup,
                                                       window=False)))
    if not args.no_run:
        out["default_run"] = part("default_run", default_run(store, dataset, args.run_steps))
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
