"""Do real model shapes fit a 24 GB card? Peak memory, seconds a step and the estimate.

    python bench/gpu_fit.py --tokenizer DIR [--cap-gb 24] [--steps 3] [--json OUT]
    python bench/gpu_fit.py --tokenizer DIR --smoke        # 2-layer shapes, on the CPU

Builds models from hand-written configs with random weights (no download: speed and memory
do not depend on the values; a random model rarely samples EOS, so answers run to
max_new_tokens), caps this process at `--cap-gb` of GPU memory with
torch.cuda.set_per_process_memory_fraction (a 24 GB card), and runs through the lab's own
stages (engine.runtime.jobs.run_sync, a fresh data folder with the shipped samples):

    grpo-7b-4bit   GRPO on a Qwen2.5-7B-shaped model, 4-bit NF4 base (QLoRA)
    dpo-7b-4bit    DPO on the same shape, 4-bit
    ppo-1.7b-bf16  PPO on a SmolLM2-1.7B-shaped model, bf16, gradient checkpointing on

Each prints one JSON line: peak memory allocated and reserved by torch (GB), seconds a step
(from the steps' metric timestamps, the first step left out), the run's estimate
(engine.memory) and the ratio estimate / peak. DIR is a tokenizer folder (the embedded
model's: tokenizer.json, tokenizer_config.json, chat_template.jinja); its ids are all
below either vocabulary.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# hand-written configs (values from the models' published config.json files)
QWEN25_7B = dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 vocab_size=152064, max_position_embeddings=32768, rope_theta=1_000_000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu")
SMOLLM2_17B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192,
                   num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
                   vocab_size=49152, max_position_embeddings=8192, rope_theta=130000.0,
                   rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu")

# (name, shape, stage, settings)
RUNS = [
    ("grpo-7b-4bit", "qwen7b", "grpo", {"quantization": "4bit", "batch_size": 2,
                                        "group_size": 4, "max_new_tokens": 128,
                                        "gradient_checkpointing": "auto"}),
    ("dpo-7b-4bit", "qwen7b", "dpo", {"quantization": "4bit", "batch_size": 4,
                                      "max_length": 256, "gradient_checkpointing": "auto",
                                      "eval_every": 0, "samples_per_eval": 0}),
    ("ppo-1.7b-bf16", "smol17b", "ppo", {"batch_size": 8, "max_new_tokens": 64,
                                         "gradient_checkpointing": "on"}),
]


def build(shape: dict, tokenizer_dir: str, out: Path, device: str, smoke: bool) -> Path:
    """A random model of `shape` saved to `out` (bf16 on a GPU, fp32 on the CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    shape = dict(shape)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if smoke:  # the same architecture, 2 thin layers: checks the script, not the numbers
        shape.update(num_hidden_layers=2, hidden_size=128, intermediate_size=256,
                     num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok))
    config = AutoConfig.for_model(**shape, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id or 0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):  # random init on the GPU: seconds, not minutes
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def step_seconds(store, run_id: int) -> float | None:
    """Mean time between consecutive steps' first metrics (the first step left out: it
    includes compilation and warm-up)."""
    times = {}
    for m in store.get_metrics(run_id):
        if m["step"] and m.get("time") is not None:
            times.setdefault(m["step"], m["time"])
    steps = sorted(times)
    gaps = [times[b] - times[a] for a, b in zip(steps, steps[1:])]
    return round(sum(gaps) / len(gaps), 3) if gaps else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="a tokenizer folder")
    p.add_argument("--cap-gb", type=float, default=24.0)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="2-layer shapes on the CPU")
    p.add_argument("--only", help="comma-separated run names")
    p.add_argument("--work", help="folder for the random models (default: a temp folder)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)

    import torch

    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    os.environ["RLHF_LAB_DEVICE"] = device
    os.environ.setdefault("RLHF_LAB_HOME", tempfile.mkdtemp(prefix="gpufit-home-"))
    work = Path(args.work or tempfile.mkdtemp(prefix="gpufit-models-"))
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = min(1.0, args.cap_gb * 2**30 / total)
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
        os.environ["RLHF_LAB_MEMORY_GB"] = str(args.cap_gb)  # what the estimate compares to

    from engine import memory
    from engine.data import ensure_samples_on_first_open
    from engine.runtime import stages
    from engine.runtime.jobs import run_sync
    from storage import Store

    store = Store(Path(os.environ["RLHF_LAB_HOME"]) / "lab.db")
    ensure_samples_on_first_open(store)
    shapes = {"qwen7b": QWEN25_7B, "smol17b": SMOLLM2_17B}
    wanted = set(args.only.split(",")) if args.only else None
    results = []
    for name, shape_key, stage, settings in RUNS:
        if wanted and name not in wanted:
            continue
        if args.smoke:  # bitsandbytes needs CUDA; short answers on a CPU
            settings = {**settings, "quantization": "none",
                        "max_new_tokens": min(16, settings.get("max_new_tokens", 16))}
        t0 = time.perf_counter()
        folder = build(shapes[shape_key], args.tokenizer, work / shape_key, device, args.smoke)
        build_s = time.perf_counter() - t0
        data = {"model": str(folder), "max_steps": args.steps, "save_every": 0, **settings}
        cfg = stages.get(stage).make_config(data)
        est = memory.estimate(stage, cfg, store)
        if device == "cuda":
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run = run_sync(store, stage, data, name=name)
        seconds = time.perf_counter() - t0
        row = {"run": name, "stage": stage, "device": device,
               "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
               "cap_gb": args.cap_gb if device == "cuda" else None,
               "status": run["status"], "error": (run["error"] or "").split("\n\n")[0] or None,
               "steps": args.steps, "run_seconds": round(seconds, 1),
               "build_seconds": round(build_s, 1),
               "seconds_per_step": step_seconds(store, run["id"]),
               "estimate_gb": round(est.total / 2**30, 2),
               "estimate_parts_gb": {k: round(v / 2**30, 3) for k, v in est.parts.items()},
               "checkpointing": est.checkpointing, "quantization": est.quantization,
               "parameters": est.model["parameters"]}
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated()
            row["peak_allocated_gb"] = round(peak / 2**30, 2)
            row["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
            # torch's allocator does not see the CUDA context: compare without it
            inside = est.total - est.parts.get("runtime", 0)
            row["estimate_vs_peak"] = round(inside / peak, 3) if peak else None
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["status"] == "succeeded" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
