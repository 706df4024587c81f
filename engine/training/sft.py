"""Supervised fine-tuning (SFT) of a LoRA adapter on {prompt, response} rows.

    L_SFT(θ) = − Σ_t log p_θ(y_t | x, y_<t)        over the response tokens y only

Each row goes through the model's chat template (engine.inference.chat.encode_completion): the
prompt tokens get label −100 and never enter the loss. Training runs on an
accelerate.Accelerator, so the same loop runs in a job thread or under
`accelerate launch` (each process takes its slice of every global batch; only the main
process writes metrics, checkpoints and the adapter).

The data order is an endless stream of seeded epoch permutations
(train_utils.stream_indices): optimizer step s uses stream positions
[s·G, (s+1)·G) with G = batch_size · grad_accum · processes, so a resumed run continues
with exactly the examples it would have seen. With `group_by_length` (the default) each
micro-batch holds examples of similar length, so the batch pads little: the same examples
per epoch (each batch's loss still the mean over its own response tokens), 15–30% less
compute on data of mixed lengths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.training import train_utils as tu
from engine.inference.chat import IGNORE_INDEX, Encoded, collate_completions, encode_completion
from engine.errors import JobCancelled
from engine.inference.generate import SamplingConfig, generate
from engine.inference.models import add_lora
from engine.objectives import response_nll, sft_loss
from engine.schema import ADVANCED, SupervisedConfig, like, setting

METRICS = ("train_loss", "learning_rate", "grad_norm", "tokens_per_s", "epoch", "eval_loss")


@dataclass
class SFTConfig(SupervisedConfig):
    """Settings of an SFT run (see engine.schema for the shared ones)."""
    dataset: str = like("dataset", "sample-sft")
    epochs: float = like("epochs", 2.0)           # used when max_steps is 0
    eval_max_rows: int = setting(64, min=0, max=1_000_000, group=ADVANCED)
    eval_samples: int = setting(2, min=0, max=64, group=ADVANCED)
    sample_tokens: int = setting(48, min=1, max=4096, group=ADVANCED)


def response_window(labels: torch.Tensor) -> tuple[int, int]:
    """Token positions [lo, hi) whose logits the loss can use: from one before the batch's
    first response label to its last one. Prompt logits never enter the loss, so the LM head
    (V × hidden, the largest matmul of a small model) is skipped for them."""
    cols = (labels != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    if cols.numel() == 0:
        return 0, labels.shape[1]
    return max(0, int(cols[0]) - 1), int(cols[-1]) + 1


def forward_logits(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) over the response window only; `sft_loss` of them equals `sft_loss`
    of the full logits and labels."""
    lo, hi = response_window(batch["labels"])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    keep = torch.arange(lo, hi, device=batch["input_ids"].device)
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:  # an architecture without logits_to_keep
        logits = model(**inputs).logits[:, lo:hi]
    if logits.shape[1] != hi - lo:  # ignored the argument: cut here
        logits = logits[:, lo:hi]
    return logits, batch["labels"][:, lo:hi]


# -- data ---------------------------------------------------------------------------------
def encode_rows(tokenizer, rows: list[dict], max_length: int) -> tuple[list[Encoded], int, int]:
    """Encode rows; returns (examples with at least one response token, #truncated, #dropped)."""
    out, truncated, dropped = [], 0, 0
    for row in rows:
        enc = encode_completion(tokenizer, row["prompt"], row["response"], max_length)
        truncated += enc.truncated
        if all(label == IGNORE_INDEX for label in enc.labels):
            dropped += 1
            continue
        out.append(enc)
    return out, truncated, dropped


def load_split(store, dataset: str, split: str) -> list[dict]:
    ds = store.get_dataset(dataset)
    if ds["kind"] != "sft":
        raise ValueError(f"dataset {dataset!r} is a {ds['kind']} dataset; SFT needs an sft "
                         f"dataset with {{prompt, response}} rows")
    return store.list_rows(dataset, split=split)


def total_steps_for(cfg: SFTConfig, n_train: int, processes: int = 1) -> int:
    """max_steps if set, else ceil(epochs · n_train / global batch)."""
    if cfg.max_steps and cfg.max_steps > 0:
        return int(cfg.max_steps)
    global_batch = cfg.batch_size * cfg.grad_accum * processes
    return max(1, math.ceil(cfg.epochs * n_train / global_batch))


# -- evaluation -----------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, examples: list[Encoded], pad_id: int, batch_size: int, accelerator) -> float | None:
    """Token-weighted mean response NLL over `examples` (each process a slice, summed)."""
    if not examples:
        return None
    was_training = model.training
    model.eval()
    mine = examples[accelerator.process_index::accelerator.num_processes]
    total = torch.zeros((), device=accelerator.device)
    count = torch.zeros((), device=accelerator.device)
    for i in range(0, len(mine), batch_size):
        batch = collate_completions(mine[i:i + batch_size], pad_id)
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        logits, labels = forward_logits(model, batch)
        s, n = response_nll(logits, labels)
        total, count = total + s, count + n
    if accelerator.num_processes > 1:
        total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    if was_training:
        model.train()
    return float(total / count) if count > 0 else None


def _samples(model, tokenizer, rows: list[dict], n: int, max_new_tokens: int) -> list[dict]:
    rows = rows[:n]
    if not rows:
        return []
    answers = generate(tu._unwrap(model), tokenizer, [r["prompt"] for r in rows],
                       SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, seed=None))
    return [{"prompt": r["prompt"], "response": a, "reference": r["response"]}
            for r, a in zip(rows, answers)]


# -- the stage ------------------------------------------------------------------------------
def train_sft(cfg: SFTConfig, ctx) -> dict:
    """Fine-tune a LoRA adapter on an SFT dataset; see the module docstring."""
    cfg.validate()
    accelerator = tu.make_accelerator()
    ctx.is_main_process = accelerator.is_main_process
    main = ctx.is_main_process  # False on other processes and on contexts that never write
    tu.seed_everything(cfg.seed)

    if not ctx.resume:  # a resumed run keeps showing its step until the checkpoint is loaded
        ctx.progress(0, None, "loading data and model")
    train_rows = load_split(ctx.store, cfg.dataset, "train")
    eval_rows = load_split(ctx.store, cfg.dataset, "eval")[: max(0, cfg.eval_max_rows)]
    if not train_rows:
        raise ValueError(f"dataset {cfg.dataset!r} has no train rows")

    loaded, _ = tu.load_training_base("sft", cfg, ctx.store, accelerator.device, ctx.log)
    ctx.check_cancel()
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id
    train, truncated, dropped = encode_rows(tokenizer, train_rows, cfg.max_length)
    evals, eval_truncated, _ = encode_rows(tokenizer, eval_rows, cfg.max_length)
    if truncated or eval_truncated:
        ctx.log(f"warning: {truncated} train and {eval_truncated} eval examples are longer than "
                f"max_length={cfg.max_length} tokens and were truncated", "warning")
    if dropped:
        ctx.log(f"warning: {dropped} train examples have no response token left after "
                f"truncation and are skipped", "warning")
    if not train:
        raise ValueError("no train example has a response token within max_length")
    if not evals:
        ctx.log("warning: the dataset has no eval rows; eval loss is not measured", "warning")

    model = add_lora(loaded.model, cfg.lora)
    model.train()
    n_trainable = sum(p.numel() for p in tu.trainable_parameters(model))
    optimizer = tu.make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    total = total_steps_for(cfg, len(train), accelerator.num_processes)
    warmup = tu.warmup_steps_for(total, cfg.warmup_ratio)
    scheduler = tu.make_scheduler(optimizer, cfg.schedule, warmup, total)
    model, optimizer = accelerator.prepare(model, optimizer)

    start, state = tu.resume_state(ctx, model, optimizer, scheduler, total)
    timer = tu.TokenTimer(state.get("tokens", 0), state.get("train_seconds", 0.0))
    eval_before = state.get("eval_loss_before")
    first_loss = state.get("first_train_loss")
    last_loss = state.get("last_train_loss")
    last_eval = state.get("last_eval_loss", eval_before)
    saved_step = start if state else -1

    if start == 0:
        ctx.log(f"{len(train)} train / {len(evals)} eval examples, {total} steps "
                f"(batch {cfg.batch_size} × accumulation {cfg.grad_accum} × "
                f"{accelerator.num_processes} process(es)), {n_trainable:,} trainable "
                f"parameters, device {accelerator.device}")
        ctx.progress(0, total, "evaluating before training")
        eval_before = evaluate(model, evals, pad_id, cfg.batch_size, accelerator)
        last_eval = eval_before
        if eval_before is not None:
            ctx.metrics(0, {"eval_loss": eval_before})
            ctx.log(f"eval loss before training: {eval_before:.4f}")
        _log_samples(ctx, model, tokenizer, eval_rows, cfg, 0, main)

    def state_extra() -> dict:
        return {"eval_loss_before": eval_before, "first_train_loss": first_loss,
                "last_train_loss": last_loss, "last_eval_loss": last_eval,
                "tokens": timer.tokens, "train_seconds": timer.seconds}

    done_rng = None  # RNG state at the end of the last finished step

    def checkpoint(step: int) -> None:
        nonlocal saved_step
        if step != saved_step:
            tu.save_checkpoint(ctx.run_dir, step, model, optimizer, scheduler, state_extra(),
                               keep=cfg.keep_checkpoints, accelerator=accelerator, rng=done_rng)
            saved_step = step

    per_process = cfg.batch_size
    global_batch = per_process * cfg.grad_accum * accelerator.num_processes
    lengths = [len(e.input_ids) for e in train] if cfg.group_by_length else None
    done = start  # the last finished optimizer step
    ctx.steps_begin(start)
    try:
        for step in range(start + 1, total + 1):
            ctx.check_cancel()
            timer.start()
            indices = tu.stream_indices(len(train), cfg.seed, (step - 1) * global_batch,
                                        global_batch, lengths=lengths, batch=per_process)
            step_loss, tokens = 0.0, 0
            for micro in range(cfg.grad_accum):
                chunk = indices[micro * per_process * accelerator.num_processes:
                                (micro + 1) * per_process * accelerator.num_processes]
                mine = chunk[accelerator.process_index * per_process:
                             (accelerator.process_index + 1) * per_process]
                batch = collate_completions([train[i] for i in mine], pad_id)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                logits, labels = forward_logits(model, batch)
                loss = sft_loss(logits, labels)
                accelerator.backward(loss / cfg.grad_accum)
                step_loss += loss.detach().float() / cfg.grad_accum
                tokens += int(batch["attention_mask"].sum())
                ctx.check_cancel()
            norm, lr = tu.optimizer_step(accelerator, model.parameters(), optimizer, scheduler,
                                         cfg.max_grad_norm)
            if accelerator.num_processes > 1:
                step_loss = accelerator.reduce(step_loss.reshape(1), "mean")
                tokens = int(accelerator.reduce(torch.tensor([tokens], device=accelerator.device),
                                                "sum"))
            last_loss = float(step_loss)
            if first_loss is None:
                first_loss = last_loss
            rate = timer.stop(tokens)
            ctx.metrics(step, {"train_loss": last_loss, "learning_rate": lr, "grad_norm": norm,
                               "tokens_per_s": rate,
                               "epoch": step * global_batch / len(train)})
            done = step
            done_rng = tu.rng_state()  # a cancel mid-next-step must not save its dropout draws
            ctx.progress(step, total, f"loss {last_loss:.3f}")

            if step == total or (cfg.eval_every > 0 and step % cfg.eval_every == 0):
                ctx.check_cancel()
                if step == total:
                    ctx.progress(step, total, "evaluating")
                last_eval = evaluate(model, evals, pad_id, cfg.batch_size, accelerator)
                if last_eval is not None:
                    ctx.metrics(step, {"eval_loss": last_eval})
                    ctx.log(f"step {step}: train loss {last_loss:.4f}, eval loss {last_eval:.4f}")
                _log_samples(ctx, model, tokenizer, eval_rows, cfg, step, main)
            if cfg.save_every > 0 and step % cfg.save_every == 0 and step < total:
                checkpoint(step)
    except (JobCancelled, KeyboardInterrupt):
        # cancelled between steps: keep the last finished step, so resume loses nothing
        # (not on failures: after a non-finite loss the weights are no longer worth keeping)
        if done > 0 and done != saved_step:
            checkpoint(done)
            ctx.log(f"checkpoint saved at step {done}")
        raise

    # -- final adapter -----------------------------------------------------------------
    out = tu.save_final_adapter(ctx, accelerator, model, total)
    if hasattr(ctx, "debug_dump"):  # test aid for multi-process runs; a no-op by default
        ctx.debug_dump("final", model)
    return {"final_train_loss": last_loss, "first_train_loss": first_loss,
            "eval_loss_before": eval_before, "eval_loss_after": last_eval,
            "adapter": str(out), "steps": total, "resumed_from": start or None,
            "tokens_per_s": round(timer.average, 1), "train_seconds": round(timer.seconds, 2),
            "train_examples": len(train), "eval_examples": len(evals),
            "truncated": truncated + eval_truncated, "trainable_parameters": n_trainable}


def _log_samples(ctx, model, tokenizer, eval_rows, cfg: SFTConfig, step: int, main: bool) -> None:
    if cfg.eval_samples <= 0 or not eval_rows or not main:
        return
    ctx.samples(step, _samples(model, tokenizer, eval_rows, cfg.eval_samples, cfg.sample_tokens))
