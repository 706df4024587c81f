"""PPO step benchmark on the embedded model: seconds per PPO step by phase and peak RSS.

Workload (DESIGN.md): SmolLM2-135M-Instruct, 8 prompts a step, up to 32 new tokens,
1 PPO epoch of 2 minibatches, LoRA r=16 on q,k,v,o, the built-in reward
"ends_with_period", one base model in memory (policy adapter, reference = base with
adapters disabled, value head). Prints one JSON document.

    .venv/bin/python bench/ppo_step.py [--steps 3] [--warmup 1] [--threads 0]

Phases: generate (sampling with KV cache), score (reward + log-probs of policy and
reference + values), train (the PPO epoch). Peak RSS is the process's maximum resident
set size (resource.getrusage), model loading included. Runs in a temporary data folder;
the converted model copy is reused from RLHF_LAB_MODELS (or the default data folder).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _dataset(store) -> str:
    try:
        from engine.data import ensure_sample_datasets

        ensure_sample_datasets(store)
        if store.get_dataset("sample-preferences")["rows"]:
            return "sample-preferences"
    except Exception as exc:  # noqa: BLE001 - fall back to our own prompts
        print(f"sample-preferences unavailable ({exc}); using 64 synthetic prompts",
              file=sys.stderr)
    store.create_dataset("bench-prompts", "sft")
    store.add_rows("bench-prompts", [{"prompt": f"Tell me one fact about the number {i}.",
                                      "response": "-"} for i in range(64)])
    return "bench-prompts"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="timed PPO steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default="embedded")
    args = ap.parse_args()

    import accelerate
    import peft
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.inference.models import models_home

    os.environ.setdefault("RLHF_LAB_MODELS", str(models_home()))
    home = tempfile.mkdtemp(prefix="rlhf-bench-ppo-")
    os.environ["RLHF_LAB_HOME"] = home
    from engine.training.ppo import PPOConfig, PPOTrainer
    from storage import Store

    store = Store(Path(home) / "lab.db")
    dataset = _dataset(store)
    cfg = PPOConfig(model=args.model, dataset=dataset, batch_size=8, max_new_tokens=32,
                    minibatches=2, ppo_epochs=1, max_steps=args.warmup + args.steps)
    rss_start = _rss_mb()
    t0 = time.perf_counter()
    trainer = PPOTrainer(cfg, store)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mb()
    phases = {"generate": [], "score": [], "train": [], "step": []}
    lengths, scores, kls = [], [], []
    for step in range(1, args.warmup + args.steps + 1):
        m, _ = trainer.step(step)
        if step > args.warmup:
            for k in phases:
                phases[k].append(m[f"time_{k}"])
            lengths.append(m["response_length"])
        scores.append(m["score_mean"])
        kls.append(m["kl"])
    mean = {k: round(sum(v) / len(v), 3) for k, v in phases.items()}
    out = {
        "benchmark": "ppo_step", "dataset": dataset, "prompts": len(trainer.prompts),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "device": str(trainer.device), "threads": torch.get_num_threads(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "accelerate": accelerate.__version__},
        "workload": {"batch_size": cfg.batch_size, "max_new_tokens": cfg.max_new_tokens,
                     "minibatches": cfg.minibatches, "ppo_epochs": cfg.ppo_epochs,
                     "lora_r": cfg.lora.r, "reward": cfg.builtin_reward,
                     "models_in_memory": 1},
        "load_seconds": round(load_s, 2),
        "steps_timed": args.steps, "warmup_steps": args.warmup,
        "seconds_per_step": mean["step"],
        "seconds_by_phase": {k: mean[k] for k in ("generate", "score", "train")},
        "step_seconds": [round(x, 3) for x in phases["step"]],
        "mean_response_tokens": round(sum(lengths) / len(lengths), 1),
        "score_by_step": [round(s, 3) for s in scores],
        "kl_by_step": [round(k, 4) for k in kls],
        "rss_mb": {"start": round(rss_start), "after_load": round(rss_loaded),
                   "peak": round(_rss_mb())},
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
