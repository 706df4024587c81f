"""The engine's side of the benchmark: one workload, one process, one JSON result.

    .venv/bin/python bench/ours_side.py WORKLOAD.json RESULT.json

Stages: sft, reward, ppo (+ its unmeasured set-up), dpo (train_dpo: policy and frozen
reference as two LoRA adapters on one base) and grpo (train_grpo, i.e. GRPOTrainer.step).

`bench/run.py` starts it once per stage (and once, unmeasured, to make the SFT and
reward runs that PPO starts from). The stage runs exactly as a job does:
`engine.<stage>.train_<stage>(config, ctx)` on a real Store in the benchmark's own
data folder (RLHF_LAB_HOME, set by the parent), with a JobContext that also stamps the
time of each step's first `ctx.metrics(step, ...)` call. Step k's time is the gap
between the stamps of steps k-1 and k, so it includes everything the loop does per step
(data, forward, backward, optimizer, metrics and progress written to SQLite).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def make_context(store, run_id: int, config, device: str):
    import torch

    from engine.runtime.jobs import JobContext

    class BenchContext(JobContext):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []  # process CPU time (all threads)
            self.step_values: list[dict] = []
            self._last_step = None

        def metrics(self, step, values):
            if step != self._last_step and step > 0:
                if device == "cuda":
                    torch.cuda.synchronize()
                self.ends.append(time.perf_counter())
                self.cpu_ends.append(time.process_time())
                self.step_values.append(dict(values))
                self._last_step = step
            super().metrics(step, values)

    return BenchContext(store, run_id, config)


def count_tokens(module, counts: list[int]) -> None:
    """Wrap `module.collate_completions` to record the real tokens of every batch it builds
    (the engine's SFT and reward loops look that name up at call time)."""
    original = module.collate_completions

    def collate(batch, pad_token_id):
        out = original(batch, pad_token_id)
        counts.append(int(out["attention_mask"].sum()))
        return out

    module.collate_completions = collate


def count_policy_tokens(module, counts: list[int]) -> None:
    """DPO: the real tokens of each step's policy pass, 2B sequences of prompt + answer (the
    reference's no-grad pass over the same pairs is not counted twice). Counted on the pairs
    given to `policy_pass`, however the engine lays them out (its lean rows compute each
    pair's prompt once: the same pairs and loss with fewer positions computed)."""
    original = module.policy_pass

    def policy_pass(model, accelerator, cfg, pairs, *args, **kwargs):
        counts.append(sum(len(c.input_ids) + len(r.input_ids) for c, r in pairs))
        return original(model, accelerator, cfg, pairs, *args, **kwargs)

    module.policy_pass = policy_pass


def add_dataset(store, name: str, kind: str, rows: list[dict], split: str = "train") -> None:
    if name in {d["name"] for d in store.list_datasets()}:
        return
    store.create_dataset(name, kind, eval_fraction=0.0)
    store.add_rows(name, [dict(r, split=split) for r in rows], source="bench")


# Config fields being renamed in the engine (old <-> new): the harness gives one spelling
# and make_config passes whichever of the two the dataclass has.
ALIASES = {"steps": "max_steps", "max_steps": "steps",
           "checkpoint_every": "save_every", "save_every": "checkpoint_every",
           "lr": "learning_rate", "learning_rate": "lr"}


def make_config(cls, **values):
    """cls(**values), each name mapped to its alias when the dataclass has that one instead."""
    from dataclasses import fields

    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = key if key in names else ALIASES.get(key)
        if name not in names:
            raise TypeError(f"{cls.__name__} has no field {key!r}"
                            + (f" nor {ALIASES[key]!r}" if key in ALIASES else ""))
        kwargs[name] = value
    return cls(**kwargs)


def lora_settings(w: dict, **over):
    from engine.inference.models import LoraSettings

    lora = dict(w["lora"], **over)
    return LoraSettings(r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
                        target_modules=lora["target_modules"])


def sft_config(w: dict, steps: int):
    from engine.training.sft import SFTConfig

    return make_config(SFTConfig, model=w["model_spec"], dataset="bench-sft", max_steps=steps,
                       batch_size=w["batch_size"], grad_accum=1, max_length=w["max_length"],
                       eval_every=0, eval_samples=0, checkpoint_every=0, warmup_ratio=0.0,
                       lora=lora_settings(w))


def reward_config(w: dict, steps: int):
    from engine.training.reward import RewardConfig

    return make_config(RewardConfig, model=w["model_spec"], dataset="bench-pairs",
                       max_steps=steps, batch_size=w["batch_size"], grad_accum=1,
                       max_length=w["max_length"], eval_every=0, save_every=0,
                       normalize=False, max_eval_pairs=8, warmup_ratio=0.0,
                       lora=lora_settings(w))


def dpo_config(w: dict, steps: int):
    from engine.training.dpo import DPOConfig

    # no evaluation, samples or checkpoints: only the training steps (the reference's
    # log-probs computed each step, as by default: precompute_ref=False)
    return make_config(DPOConfig, model=w["model_spec"], dataset="bench-pairs", max_steps=steps,
                       batch_size=w["batch_size"], grad_accum=1, max_length=w["max_length"],
                       beta=w["beta"], loss_type="sigmoid", eval_every=0, save_every=0,
                       sample_every=0, samples_per_eval=0, max_eval_pairs=0,
                       precompute_ref=False, warmup_ratio=0.0, lora=lora_settings(w))


def grpo_config(w: dict, steps: int):
    from engine.training.grpo import GRPOConfig

    # one optimizer step per generation batch (minibatches=1, ppo_epochs=1), as TRL's
    # default GRPO set-up (steps_per_generation = 1, num_iterations = 1)
    return make_config(GRPOConfig, model=w["model_spec"], dataset="bench-prompts",
                       max_steps=steps, batch_size=w["batch_size"], group_size=w["group_size"],
                       max_new_tokens=w["new_tokens"], temperature=w["temperature"],
                       beta=w["beta"], advantage="grpo", minibatches=1, ppo_epochs=1,
                       builtin_rewards=[w["reward_rule"]], save_every=0, sample_every=0,
                       # TRL's side has no held-out check and trains on every prompt
                       heldout_every=0, prompt_language="any",
                       lora=lora_settings(w, dropout=0.0),
                       decode_cache=w.get("decode_cache") or "dynamic")


def prepare_store(w: dict):
    from storage import Store

    store = Store()
    add_dataset(store, "bench-sft", "sft", read_jsonl(w["data_sft"]))
    if "bench-pairs" not in {d["name"] for d in store.list_datasets()}:
        # 64 train pairs + a few eval pairs (without them the stage holds out train pairs)
        add_dataset(store, "bench-pairs", "preference", read_jsonl(w["data_pairs"]))
        store.add_rows("bench-pairs", [dict(r, split="eval") for r in
                                       read_jsonl(w["data_pairs_eval"])], source="bench")
    add_dataset(store, "bench-prompts", "sft",
                [{"prompt": r["prompt"], "response": "-"} for r in read_jsonl(w["data_prompts"])])
    return store


def run_stage(store, stage: str, config, device: str, fn) -> tuple[object, dict]:
    from dataclasses import asdict

    run_id = store.create_run(stage, asdict(config), name=f"bench-{stage}",
                              model=config.model, dataset=config.dataset)
    ctx = make_context(store, run_id, config, device)
    store.claim_run(run_id)
    summary = fn(config, ctx) or {}
    store.finish_run(run_id, "succeeded", summary=summary)
    return ctx, {"run_id": run_id, **summary}


def setup_ppo(w: dict, device: str) -> dict:
    """Unmeasured: one-step SFT and reward runs that PPO starts from (reference, reward)."""
    from engine.training.reward import train_reward
    from engine.training.sft import train_sft

    store = prepare_store(w)
    _, sft = run_stage(store, "sft", sft_config(w, 1), device, train_sft)
    _, rm = run_stage(store, "reward", reward_config(w, 1), device, train_reward)
    return {"sft_run": sft["run_id"], "reward_run": rm["run_id"]}


def main(argv: list[str]) -> int:
    w = json.loads(Path(argv[1]).read_text())
    import torch

    if w.get("threads"):
        torch.set_num_threads(int(w["threads"]))
    from engine.inference.models import pick_device

    device = pick_device().type
    t0 = time.perf_counter()
    result = {"stage": w["stage"], "side": "ours", "device": device,
              "torch_threads": torch.get_num_threads()}
    steps = w["steps"]
    if w["stage"] == "setup_ppo":
        result.update(setup_ppo(w, device))
    else:
        store = prepare_store(w)
        counts: list[int] = []
        if w["stage"] == "sft":
            import engine.training.sft as mod

            count_tokens(mod, counts)
            ctx, summary = run_stage(store, "sft", sft_config(w, steps), device, mod.train_sft)
        elif w["stage"] == "reward":
            import engine.training.reward as mod

            count_tokens(mod, counts)
            ctx, summary = run_stage(store, "reward", reward_config(w, steps), device,
                                     mod.train_reward)
        elif w["stage"] == "ppo":
            from engine.training.ppo import PPOConfig, train_ppo

            cfg = make_config(PPOConfig, model=w["model_spec"], sft_run=w["sft_run"],
                              reward_run=w["reward_run"], dataset="bench-prompts",
                              max_steps=steps, batch_size=w["batch_size"],
                              max_new_tokens=w["new_tokens"], ppo_epochs=w["ppo_epochs"],
                              minibatches=w["minibatches"], temperature=w["temperature"],
                              save_every=0, heldout_every=0,   # TRL has no held-out check
                              lora=lora_settings(w, dropout=0.0),
                              decode_cache=w.get("decode_cache") or "dynamic")
            ctx, summary = run_stage(store, "ppo", cfg, device, train_ppo)
            result["response_length"] = [v.get("response_length") for v in ctx.step_values]
            result["phase_seconds"] = [
                {k: v.get(k) for k in ("time_generate", "time_score", "time_train")}
                for v in ctx.step_values]
        elif w["stage"] == "dpo":
            import engine.training.dpo as mod

            count_policy_tokens(mod, counts)
            ctx, summary = run_stage(store, "dpo", dpo_config(w, steps), device, mod.train_dpo)
        elif w["stage"] == "grpo":
            from engine.training.grpo import train_grpo

            ctx, summary = run_stage(store, "grpo", grpo_config(w, steps), device, train_grpo)
            answers = w["batch_size"] * w["group_size"]
            result["response_length"] = [v.get("response_length") for v in ctx.step_values]
            result["generated_tokens"] = [round(v["response_length"] * answers)
                                          if v.get("response_length") is not None else None
                                          for v in ctx.step_values]
            # "tokens" of a GRPO step: the tokens generated (both sides count them alike)
            counts.extend(t or 0 for t in result["generated_tokens"])
            result["eos_fraction"] = [v.get("eos_fraction") for v in ctx.step_values]
            result["reward_mean"] = [v.get("reward_mean") for v in ctx.step_values]
            result["phase_seconds"] = [
                {k: v.get(k) for k in ("time_generate", "time_score", "time_train",
                                       "time_step")}
                for v in ctx.step_values]
        else:
            raise SystemExit(f"unknown stage {w['stage']!r}")
        ends = ctx.ends
        result["step_ends"] = ends
        result["step_cpu_ends"] = ctx.cpu_ends
        result["step_seconds"] = [b - a for a, b in zip(ends, ends[1:])]
        result["step_tokens"] = counts[: len(ends)] if counts else None
        result["summary"] = {k: v for k, v in summary.items()
                             if isinstance(v, (int, float, str, type(None)))}
    result["wall_seconds"] = time.perf_counter() - t0
    if device == "cuda":
        result["gpu_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    import resource

    import peft
    import transformers

    result["self_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["versions"] = {"transformers": transformers.__version__, "peft": peft.__version__,
                          "torch": torch.__version__}
    Path(argv[2]).write_text(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
