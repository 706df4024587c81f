"""The TRL side of the benchmark: one workload, one process, one JSON result.

Runs in its own virtual environment (bench/requirements-trl.txt, `trl==0.29.1`, the
last release with a PPO trainer) and imports nothing from the project, so the app's
pins never depend on TRL. `bench/run.py` writes a workload file and starts

    .venv-trl/bin/python bench/trl_side.py WORKLOAD.json RESULT.json

once per stage; the parent measures this process's peak RSS (os.wait4), this script
measures the step times and the tokens each step processed.

Stages, all with the same settings as the engine's side (see bench/README.md):
- sft:    trl.SFTTrainer, LoRA (r, alpha, dropout, q/k/v/o), prompt-completion chat rows,
          loss on the completion only.
- reward: trl.RewardTrainer, AutoModelForSequenceClassification (1 label) + LoRA.
- ppo:    trl.experimental.ppo.PPOTrainer as its docs set it up: policy, reference,
          value model and reward model as four separate full models (full fine-tuning
          of policy and value); `ppo_lora: true` in the workload gives the policy a LoRA
          adapter instead (reference = adapter disabled).
- dpo:    trl.DPOTrainer (sigmoid loss, beta), prompt/chosen/rejected chat rows; with LoRA
          (`peft_config`: the reference is the same model with the adapter disabled, as
          TRL's docs recommend for LoRA), or with `full: true` full fine-tuning and the
          reference as a separate model copy (TRL's default without peft).
- grpo:   trl.GRPOTrainer (transformers generate, no vLLM), B prompts × G completions per
          step (per_device_train_batch_size = B·G, num_generations = G, one optimizer step
          per generation batch), the same rule reward as a Python function; LoRA (reference
          = adapter disabled) or, with `full: true`, full fine-tuning + a reference copy.

Timing: a TrainerCallback stamps `on_train_begin` and every `on_step_end`; step k's time
is the gap between the ends of steps k-1 and k (the first step is the warm-up).
Both sides train in the dtype the engine picks (fp32 on CPU, bf16 on GPUs that have it),
without gradient checkpointing or mixed-precision autocast, with 0 data-loader workers.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("WANDB_DISABLED", "true")


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def pick_dtype(torch, device: str):
    if device == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def common_args(w: dict, out_dir: str, device: str) -> dict:
    """TrainingArguments shared by the three stages (same semantics as the engine's loop)."""
    return dict(
        output_dir=out_dir,
        per_device_train_batch_size=w["batch_size"],
        gradient_accumulation_steps=1,
        learning_rate=w.get("learning_rate", 1e-4),
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        seed=w.get("seed", 0),
        dataloader_num_workers=0,
        gradient_checkpointing=False,
        bf16=False,
        fp16=False,
        use_cpu=device == "cpu",
        disable_tqdm=True,
        remove_unused_columns=True,
    )


def step_timer(torch, device: str):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin = None
            self.ends: list[float] = []
            self.cpu_ends: list[float] = []  # process CPU time (all threads)

        def _sync(self):
            if device == "cuda":
                torch.cuda.synchronize()

        def on_train_begin(self, args, state, control, **kw):
            self._sync()
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self._sync()
            self.ends.append(time.perf_counter())
            self.cpu_ends.append(time.process_time())

    return StepTimer()


def counting_collator(collator, counts: list[int]):
    """Wrap a data collator to record the real (non-pad) tokens of every batch it builds."""

    def collate(features):
        batch = collator(features)
        total = 0
        for key, value in batch.items():
            if key.endswith("attention_mask") and hasattr(value, "sum"):
                total += int(value.sum())
        counts.append(total)
        return batch

    return collate


def lora_config(w: dict, task_type: str):
    from peft import LoraConfig

    lora = w["lora"]
    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora["target_modules"], task_type=task_type)


def sampling_args(w: dict) -> dict:
    """The data order: TRL's default (random), or transformers' length-grouped sampler."""
    if w.get("group_by_length"):
        return {"train_sampling_strategy": "group_by_length", "length_column_name": "length"}
    return {}


def load_tokenizer(w: dict, padding_side: str = "right"):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(w["model_path"])
    # the same pad token as the engine (never EOS): identical padding on both sides
    tok.pad_token = w["pad_token"]
    tok.padding_side = padding_side
    return tok


def timing(timer) -> dict:
    stamps = [timer.begin] + timer.ends
    return {"train_begin": timer.begin, "step_ends": timer.ends, "step_cpu_ends": timer.cpu_ends,
            "step_seconds": [b - a for a, b in zip(stamps, stamps[1:])]}


# -- stages ----------------------------------------------------------------------------------
def run_sft(w: dict, device: str, torch) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows = read_jsonl(w["data"])
    data = Dataset.from_list([
        {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["response"]}]}
        for r in rows])
    tok = load_tokenizer(w)
    model = AutoModelForCausalLM.from_pretrained(w["model_path"], dtype=pick_dtype(torch, device))
    model.config.pad_token_id = tok.pad_token_id
    timer = step_timer(torch, device)
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(**common_args(w, out, device), max_steps=w["steps"],
                         max_length=w["max_length"], packing=False, padding_free=False,
                         completion_only_loss=True, dataset_num_proc=None,
                         **sampling_args(w))
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=lora_config(w, "CAUSAL_LM"), callbacks=[timer])
        counts: list[int] = []
        trainer.data_collator = counting_collator(trainer.data_collator, counts)
        lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
        trainer.train()
    return {**timing(timer), "step_tokens": counts[: len(timer.ends)],
            "dataset_tokens": sum(lengths), "dataset_rows": len(lengths)}


def run_reward(w: dict, device: str, torch) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    rows = read_jsonl(w["data"])
    data = Dataset.from_list([
        {"prompt": r["prompt"],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    tok = load_tokenizer(w)
    model = AutoModelForSequenceClassification.from_pretrained(
        w["model_path"], num_labels=1, dtype=pick_dtype(torch, device))
    model.config.pad_token_id = tok.pad_token_id
    timer = step_timer(torch, device)
    with tempfile.TemporaryDirectory() as out:
        # TRL's default: every dropout off (LoRA's too), as the engine's reward stage does
        args = RewardConfig(**common_args(w, out, device), max_steps=w["steps"],
                            max_length=w["max_length"], dataset_num_proc=None,
                            disable_dropout=True, **sampling_args(w))
        trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                                peft_config=lora_config(w, "SEQ_CLS"), callbacks=[timer])
        if w.get("group_by_length"):
            # the sampler groups by a "length" column: a pair pads to its longer sequence
            trainer.train_dataset = trainer.train_dataset.map(
                lambda x: {"length": max(len(x["chosen_ids"]), len(x["rejected_ids"]))})
            trainer._set_signature_columns_if_needed()
            trainer._signature_columns = [*trainer._signature_columns, "length"]
        counts: list[int] = []
        trainer.data_collator = counting_collator(trainer.data_collator, counts)
        kept = len(trainer.train_dataset)
        trainer.train()
    return {**timing(timer), "step_tokens": counts[: len(timer.ends)],
            "dataset_rows": kept}


def run_ppo(w: dict, device: str, torch) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    rows = read_jsonl(w["data"])
    tok = load_tokenizer(w, padding_side="left")
    dtype = pick_dtype(torch, device)

    def ids(prompt):
        out = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        if hasattr(out, "keys"):
            out = out["input_ids"]
        return list(out)

    data = Dataset.from_dict({"input_ids": [ids(r["prompt"]) for r in rows]})
    path = w["model_path"]
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    reward = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    for m in (policy, value, reward):
        m.config.pad_token_id = tok.pad_token_id
    policy.generation_config.pad_token_id = tok.pad_token_id
    peft_config = None
    if w.get("ppo_lora"):
        ref = None
        peft_config = lora_config(w, "CAUSAL_LM")
    else:
        ref = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        ref.config.pad_token_id = tok.pad_token_id
    timer = step_timer(torch, device)
    lengths = record_answer_lengths(reward)
    with tempfile.TemporaryDirectory() as out:
        base = common_args(w, out, device)
        base["learning_rate"] = w.get("ppo_learning_rate", 1e-5)
        args = PPOConfig(**base, total_episodes=w["batch_size"] * w["steps"],
                         num_mini_batches=w["minibatches"], num_ppo_epochs=w["ppo_epochs"],
                         response_length=w["new_tokens"], stop_token="eos",
                         local_rollout_forward_batch_size=w["batch_size"],
                         num_sample_generations=0, temperature=w.get("temperature", 1.0),
                         kl_coef=w.get("kl_coef", 0.05), missing_eos_penalty=None)
        trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref,
                             reward_model=reward, value_model=value, train_dataset=data,
                             callbacks=[timer], peft_config=peft_config)
        trainer.train()
    prompt_tokens = [len(x) for x in data["input_ids"]]
    return {**timing(timer), "dataset_tokens": sum(prompt_tokens),
            "dataset_rows": len(prompt_tokens), "response_length": lengths,
            "models_in_memory": 3 if w.get("ppo_lora") else 4}


def record_answer_lengths(reward_model) -> list[float]:
    """The mean answer length (tokens up to and including EOS, as the engine counts them) of
    each rollout batch of TRL's PPO, read where its reward model scores the answers
    (`get_reward` on the truncated responses, padded after the stop token)."""
    import trl.experimental.ppo.ppo_trainer as ppo_mod

    lengths: list[float] = []
    original = ppo_mod.get_reward

    def get_reward(model, query_response, pad_token_id, context_length):
        if model is reward_model:
            answers = query_response[:, context_length:]
            lengths.append(round(float(ppo_mod.first_true_indices(
                answers == pad_token_id).float().mean()), 3))
        return original(model, query_response, pad_token_id, context_length)

    ppo_mod.get_reward = get_reward
    return lengths


def run_dpo(w: dict, device: str, torch) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    rows = read_jsonl(w["data"])
    data = Dataset.from_list([
        {"prompt": r["prompt"],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows])
    tok = load_tokenizer(w)
    model = AutoModelForCausalLM.from_pretrained(w["model_path"], dtype=pick_dtype(torch, device))
    model.config.pad_token_id = tok.pad_token_id
    timer = step_timer(torch, device)
    full = bool(w.get("full"))
    with tempfile.TemporaryDirectory() as out:
        base = common_args(w, out, device)
        if full:
            base["learning_rate"] = w.get("full_learning_rate", 1e-6)
        args = DPOConfig(**base, max_steps=w["steps"], max_length=w["max_length"],
                         beta=w["beta"], loss_type=["sigmoid"], precompute_ref_log_probs=False,
                         padding_free=False, dataset_num_proc=None, disable_dropout=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                             peft_config=None if full else lora_config(w, "CAUSAL_LM"),
                             callbacks=[timer])
        counts: list[int] = []
        trainer.data_collator = counting_collator(trainer.data_collator, counts)
        kept = len(trainer.train_dataset)
        reference = "separate model copy" if trainer.ref_model is not None else \
            "adapter disabled"
        trainer.train()
    return {**timing(timer), "step_tokens": counts[: len(timer.ends)], "dataset_rows": kept,
            "reference": reference, "models_in_memory": 2 if full else 1,
            "training": "full fine-tuning" if full else "LoRA"}


def rule_reward(name: str):
    """The engine's built-in rule as a TRL reward function (the same formula, re-stated here:
    this process imports nothing from the project)."""
    if name != "ends_with_period":
        raise SystemExit(f"no TRL reward function for the rule {name!r}")

    def ends_with_period(prompts, completions, **kwargs):
        out = []
        for c in completions:
            text = c[-1]["content"] if isinstance(c, list) else c
            out.append(1.0 if (text or "").strip().endswith(".") else 0.0)
        return out

    return ends_with_period


def log_recorder():
    from transformers import TrainerCallback

    class Logs(TrainerCallback):
        def __init__(self):
            self.logs: list[dict] = []

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))

    return Logs()


def run_grpo(w: dict, device: str, torch) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    rows = read_jsonl(w["data"])
    data = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
    tok = load_tokenizer(w, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(w["model_path"], dtype=pick_dtype(torch, device))
    model.config.pad_token_id = tok.pad_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    timer, logs = step_timer(torch, device), log_recorder()
    full = bool(w.get("full"))
    answers = w["batch_size"] * w["group_size"]
    with tempfile.TemporaryDirectory() as out:
        base = common_args(w, out, device)
        base["per_device_train_batch_size"] = answers   # completions per optimizer step
        if full:
            base["learning_rate"] = w.get("full_learning_rate", 1e-6)
        args = GRPOConfig(**base, max_steps=w["steps"], num_generations=w["group_size"],
                          max_completion_length=w["new_tokens"],
                          temperature=w.get("temperature", 1.0), top_p=1.0, top_k=0,
                          beta=w["beta"], num_iterations=1, steps_per_generation=1,
                          epsilon=0.2, loss_type="grpo", scale_rewards="group",
                          use_vllm=False, log_completions=False, disable_dropout=True)
        trainer = GRPOTrainer(model=model, reward_funcs=rule_reward(w["reward_rule"]),
                              args=args, train_dataset=data, processing_class=tok,
                              peft_config=None if full else lora_config(w, "CAUSAL_LM"),
                              callbacks=[timer, logs])
        reference = "separate model copy" if trainer.ref_model is not None else \
            ("adapter disabled" if w["beta"] else "none (beta = 0)")
        trainer.train()
    lengths = [x.get("completions/mean_length") for x in logs.logs]
    return {**timing(timer), "dataset_rows": len(rows), "reference": reference,
            "models_in_memory": 2 if full and w["beta"] else 1,
            "training": "full fine-tuning" if full else "LoRA",
            "response_length": lengths,
            "generated_tokens": [round(x * answers) if x is not None else None for x in lengths],
            "step_tokens": [round(x * answers) if x is not None else 0 for x in lengths],
            "eos_fraction": [None if x.get("completions/clipped_ratio") is None
                             else 1 - x["completions/clipped_ratio"] for x in logs.logs],
            "reward_mean": [x.get("reward") for x in logs.logs]}


def main(argv: list[str]) -> int:
    workload_path, result_path = argv[1], argv[2]
    w = json.loads(Path(workload_path).read_text())
    import torch

    if w.get("threads"):
        torch.set_num_threads(int(w["threads"]))
    device = "cuda" if torch.cuda.is_available() and w.get("device", "auto") != "cpu" else "cpu"
    t0 = time.perf_counter()
    result = {"stage": w["stage"], "side": "trl", "device": device,
              "torch_threads": torch.get_num_threads()}
    run = {"sft": run_sft, "reward": run_reward, "ppo": run_ppo, "dpo": run_dpo,
           "grpo": run_grpo}[w["stage"]]
    result.update(run(w, device, torch))
    result["wall_seconds"] = time.perf_counter() - t0
    if device == "cuda":
        result["gpu_max_allocated_bytes"] = torch.cuda.max_memory_allocated()
    import resource

    import peft
    import transformers
    import trl

    result["self_maxrss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["versions"] = {"trl": trl.__version__, "transformers": transformers.__version__,
                          "peft": peft.__version__, "torch": torch.__version__}
    Path(result_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
