"""Reward-model accuracy on held-out pairs, with the engine's own stage (prints JSON).

    python bench/reward_accuracy.py --data sample            # the shipped sample pairs
    python bench/reward_accuracy.py --data hh --hh PATH.jsonl.gz --train 256 --eval 128

`hh` reads an HH-RLHF file (e.g. hh-rlhf harmless-base test.jsonl.gz) from where it lies:
its first train+eval transcripts are parsed with engine.data's HH importer into a
throwaway database in a temporary folder; nothing is copied into the repository.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def hh_pairs(path: str, n: int) -> list[dict]:
    from engine.data import normalise

    out = []
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(normalise(json.loads(line), "preference", "hh"))
            except ValueError:
                continue  # rows the importer rejects (empty answer, ...)
            if len(out) >= n:
                break
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["sample", "hh"], default="sample")
    ap.add_argument("--hh", help="HH-RLHF .jsonl(.gz) file")
    ap.add_argument("--train", type=int, default=256)
    ap.add_argument("--eval", type=int, default=128)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="RewardConfig overrides (JSON values)")
    args = ap.parse_args()

    home = tempfile.mkdtemp(prefix="rlhf-reward-bench-")
    os.environ["RLHF_LAB_HOME"] = home
    import torch

    from engine.runtime import stages
    from engine.runtime.jobs import run_sync
    from storage import Store

    store = Store()
    config = {"model": args.model, "max_length": 192, "max_steps": 30, "batch_size": 4,
              "normalize": False, "eval_batch_size": 16}
    if args.data == "sample":
        from engine.data import ensure_sample_datasets

        ensure_sample_datasets(store)
        config.update(dataset="sample-preferences", max_eval_pairs=0)
    else:
        if not args.hh:
            ap.error("--data hh needs --hh PATH")
        rows = hh_pairs(args.hh, args.train + args.eval)
        for i, r in enumerate(rows):
            r["split"] = "train" if i < args.train else "eval"
        store.create_dataset("hh", "preference")
        store.add_rows("hh", rows, source=Path(args.hh).name)
        config.update(dataset="hh", max_eval_pairs=0)
    config = stages.apply_overrides(config, args.set)
    t0 = time.perf_counter()
    run = run_sync(store, "reward", config)
    s = run["summary"]
    print(json.dumps({
        "data": args.data, "status": run["status"], "error": (run["error"] or "")[:300] or None,
        "config": {k: config[k] for k in sorted(config)}, "threads": torch.get_num_threads(),
        "train_pairs": s.get("train_pairs"), "eval_pairs": s.get("eval_pairs"),
        "steps": s.get("steps"), "seconds_per_step": s.get("seconds_per_step"),
        "eval_accuracy": s.get("eval_accuracy"), "eval_loss": s.get("eval_loss"),
        "length_correlation": s.get("length_correlation"),
        "longer_is_chosen": s.get("longer_is_chosen"),
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "load_average": os.getloadavg()}, indent=1))
    return 0 if run["status"] == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main())
