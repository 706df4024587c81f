"""DPO, Direct Preference Optimization (Rafailov et al., 2023): the RLHF objective solved
in closed form, so the policy learns from preference pairs directly, without a reward model
and without sampling.

One base model in memory (peft multi-adapter, as PPO):
- π_θ   = base + the trainable LoRA adapter "policy" (a copy of the SFT run's adapter when
          one is given, so the result is a standalone adapter on the base);
- π_ref = the same SFT adapter loaded a second time, frozen ("ref"), or the base with
          adapters disabled when there is no SFT run.

Each step takes B pairs (x, y⁺, y⁻), scores the 2B answers with π_θ (lean rows: each
pair's prompt computed once for both answers, the LM head chunked on the answer tokens,
rows of whole pairs backpropagated one at a time, engine.inference.logprobs; a padded pass
where the model lacks that path), takes log π_ref of the same answers (a no-grad pass,
or the numbers computed once before training with `precompute_ref`), and minimises
    sigmoid: L = −(1−ε)·log σ(β·h_θ) − ε·log σ(−β·h_θ)       (ε: label smoothing)
    ipo:     L = (h_θ − 1/(2β))²
with h_θ the margin of the log-ratios (engine.objectives.dpo_margin). Sequence log-probs
are sums over the response tokens through the chat template (engine.inference.chat).

What the run logs shows the method's known behaviour: the implicit rewards
r̂ = β·(log π_θ − log π_ref) of chosen and rejected, their margin and accuracy, and the raw
log-probs of both answers, which often *both* fall while the margin grows. At each
evaluation: held-out loss, accuracy and margin, and the KL to the reference measured on the
policy's own greedy answers to held-out prompts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine import data
from engine.compare import response_logprobs
from engine.errors import JobCancelled, NonFiniteError
from engine.inference.chat import IGNORE_INDEX, Encoded, collate_completions, prompt_text
from engine.inference.generate import SamplingConfig, generate
from engine.inference.logprobs import Scored, backward_by_rows, sequence_rows
from engine.objectives import (dpo_implicit_reward, dpo_loss, ipo_loss, kl_k1, kl_k3,
                               pairwise_accuracy, sequence_logprobs)
from engine.data.sources import mix_sources
from engine.schema import (ADVANCED, ConfigError, LoraSettings, SourceMixSettings,
                           SupervisedConfig, like, setting)
from engine.training import train_utils as tu
from engine.training.reward import encode_pair
from engine.training.sft import forward_logits, total_steps_for

LOSS_TYPES = ("sigmoid", "ipo")
KL_ESTIMATORS = ("k3", "k1")
METRICS = ("loss", "reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy",
           "logp_chosen", "logp_rejected", "grad_norm", "learning_rate", "eval_loss",
           "eval_reward_accuracy", "eval_reward_margin", "kl_to_ref")


@dataclass
class DPOConfig(SourceMixSettings, SupervisedConfig):
    """Settings of a DPO run (see engine.schema for the shared ones)."""
    dataset: str = like("dataset", "sample-preferences")
    max_steps: int = like("max_steps", 20)
    batch_size: int = like("batch_size", 4)
    learning_rate: float = like("learning_rate", 5e-4)
    eval_every: int = like("eval_every", 5)
    save_every: int = like("save_every", 10)
    # the model trains in eval mode (no dropout): at step 1 π_θ is exactly π_ref
    lora: LoraSettings = like("lora", factory=lambda: LoraSettings(dropout=0.0))
    sft_run: int | None = setting(None, widget="page")  # None: from the base (ref = base)
    beta: float = setting(0.1, min=0.001, max=100.0, step=0.05, format="%.3f")
    loss_type: str = setting("sigmoid", choices=LOSS_TYPES)
    label_smoothing: float = setting(0.0, min=0.0, max=0.5, step=0.05, group=ADVANCED)
    precompute_ref: bool = setting(False, group=ADVANCED)
    max_eval_pairs: int = setting(32, min=0, max=1_000_000, group=ADVANCED)
    sample_every: int = setting(10, min=0, max=10_000_000, group=ADVANCED)
    samples_per_eval: int = setting(3, min=0, max=64, group=ADVANCED)
    max_new_tokens: int = like("max_new_tokens", 32, group=ADVANCED)
    kl_estimator: str = setting("k3", choices=KL_ESTIMATORS, group=ADVANCED)

    def check(self) -> None:
        super().check()
        if self.loss_type == "ipo" and self.label_smoothing > 0:
            raise ConfigError("label_smoothing", "label smoothing applies to the sigmoid "
                              "loss only; set it to 0 with loss_type 'ipo'")


# -- data ---------------------------------------------------------------------------------
def check_dataset(store, name: str) -> None:
    """A preference dataset, or a ValueError naming the dataset and its kind (before any
    model loads). The shipped samples are imported on first use."""
    if name in data.SAMPLES:
        data.ensure_sample_datasets(store)
    kind = store.get_dataset(name)["kind"]
    if kind != "preference":
        raise ValueError(f"dataset {name!r} is a {kind} dataset; DPO needs a preference "
                         f"dataset with {{prompt, chosen, rejected}} rows")


def load_pairs(store, cfg: DPOConfig, log) -> tuple[list[dict], list[dict]]:
    """Train and eval rows; without eval rows the last tenth of the train rows is held out."""
    check_dataset(store, cfg.dataset)
    train = store.list_rows(cfg.dataset, split="train")
    evals = store.list_rows(cfg.dataset, split="eval")
    if not evals and len(train) >= 4:
        cut = max(1, len(train) // 10)
        evals, train = train[-cut:], train[:-cut]
        log(f"dataset {cfg.dataset!r} has no eval rows: holding out the last {cut} train pairs")
    train = mix_sources(train, cfg.ai_share, cfg.seed, cfg.dataset, log)
    if not train:
        raise ValueError(f"dataset {cfg.dataset!r} has no train pairs")
    return train, evals[: cfg.max_eval_pairs]


Pair = tuple[Encoded, Encoded]


def encode_pairs(tokenizer, rows: list[dict], max_length: int) -> tuple[list[Pair], int]:
    pairs = [encode_pair(tokenizer, r, max_length) for r in rows]
    return pairs, sum(c.truncated or r.truncated for c, r in pairs)


# -- log-probs ----------------------------------------------------------------------------
ROW_TOKENS = 256   # lean rows: a pair shares its prompt; one row's activations at a time


def pair_rows(model, pairs: list[Pair], device):
    """Per row of whole pairs, (pair indices, [n, 2] log π of chosen and rejected): each
    pair's prompt computed once for both answers, the LM head chunked on the answer tokens
    (engine.inference.logprobs.sequence_rows); None where the model lacks that path."""
    seqs = []
    for enc in [c for c, _ in pairs] + [r for _, r in pairs]:
        labels = torch.tensor(enc.labels)
        pos = (labels[1:] != IGNORE_INDEX).nonzero().squeeze(1) + 1
        seqs.append(Scored(torch.tensor(enc.input_ids, device=device), pos.to(device),
                           labels[pos].to(device)))
    B = len(pairs)
    rows = sequence_rows(model, seqs, list(range(B)) * 2, ROW_TOKENS)
    if rows is None:
        return None

    def by_pair():
        for members, sums in rows:
            at = {m: k for k, m in enumerate(members)}
            mine = [m for m in members if m < B]
            yield mine, torch.stack([sums[[at[i] for i in mine]],
                                     sums[[at[i + B] for i in mine]]], 1)

    return by_pair()


def pair_logprobs(model, pairs: list[Pair], pad_id: int, device) -> tuple[torch.Tensor,
                                                                        torch.Tensor]:
    """(log π(y⁺|x), log π(y⁻|x)) of B pairs: the lean rows (`pair_rows`) or one forward
    pass over the 2B answers."""
    rows = pair_rows(model, pairs, device) if not torch.is_grad_enabled() else None
    if rows is not None:
        out = torch.zeros(len(pairs), 2, device=device)
        for mine, values in rows:
            out[mine] = values
        return out[:, 0], out[:, 1]
    batch = collate_completions([c for c, _ in pairs] + [r for _, r in pairs], pad_id)
    batch = {k: v.to(device) for k, v in batch.items()}
    logits, labels = forward_logits(model, batch)
    logp = sequence_logprobs(logits, labels)
    return logp[: len(pairs)], logp[len(pairs):]


@torch.no_grad()
def reference_logprobs(model, has_ref: bool, pairs: list[Pair], pad_id: int, device,
                       batch_size: int) -> torch.Tensor:
    """log π_ref of every pair's chosen and rejected answer: [N, 2]."""
    out = []
    with tu.reference_mode(model, has_ref):
        for i in range(0, len(pairs), batch_size):
            c, r = pair_logprobs(model, pairs[i:i + batch_size], pad_id, device)
            out.append(torch.stack([c, r], 1))
    return torch.cat(out) if out else torch.zeros(0, 2, device=device)


def policy_pass(model, accelerator, cfg: DPOConfig, pairs: list[Pair], ref: torch.Tensor,
                pad_id: int, device) -> torch.Tensor:
    """The policy's forward and backward of one micro-batch: backpropagates its loss
    (divided by grad_accum) and returns log π_θ of chosen and rejected, [B, 2] detached.
    The loss is a mean over pairs, so the lean rows are backpropagated one at a time
    (engine.inference.logprobs.backward_by_rows: the same gradient, one row's activations)."""
    def loss_of(values):
        return pair_stats(cfg, values[:, 0], values[:, 1], ref[:, 0], ref[:, 1])["loss"] \
            / cfg.grad_accum

    rows = pair_rows(model, pairs, device) if accelerator.num_processes == 1 else None
    if rows is not None:
        return backward_by_rows(rows, ref, loss_of, accelerator.backward)
    logp_c, logp_r = pair_logprobs(model, pairs, pad_id, device)
    values = torch.stack([logp_c, logp_r], 1)
    accelerator.backward(loss_of(values))
    return values.detach()


def pair_stats(cfg: DPOConfig, logp_c, logp_r, ref_c, ref_r) -> dict[str, torch.Tensor]:
    """The loss and what the page shows of one batch of pairs."""
    if cfg.loss_type == "ipo":
        loss = ipo_loss(logp_c, logp_r, ref_c, ref_r, cfg.beta)
    else:
        loss = dpo_loss(logp_c, logp_r, ref_c, ref_r, cfg.beta, cfg.label_smoothing)
    rc = dpo_implicit_reward(logp_c.detach(), ref_c, cfg.beta)
    rr = dpo_implicit_reward(logp_r.detach(), ref_r, cfg.beta)
    return {"loss": loss, "reward_chosen": rc.mean(), "reward_rejected": rr.mean(),
            "reward_margin": (rc - rr).mean(), "reward_accuracy": pairwise_accuracy(rc, rr),
            "logp_chosen": logp_c.detach().mean(), "logp_rejected": logp_r.detach().mean()}


@torch.no_grad()
def evaluate(model, has_ref: bool, cfg: DPOConfig, pairs: list[Pair], ref: torch.Tensor | None,
             pad_id: int, device) -> dict[str, float] | None:
    """Loss, accuracy and margin over held-out pairs (pair-weighted means)."""
    if not pairs:
        return None
    if ref is None:
        ref = reference_logprobs(model, has_ref, pairs, pad_id, device, cfg.batch_size)
    sums = {"loss": 0.0, "reward_accuracy": 0.0, "reward_margin": 0.0}
    for i in range(0, len(pairs), cfg.batch_size):
        chunk = pairs[i:i + cfg.batch_size]
        c, r = pair_logprobs(model, chunk, pad_id, device)
        stats = pair_stats(cfg, c, r, ref[i:i + len(chunk), 0], ref[i:i + len(chunk), 1])
        for k in sums:
            sums[k] += float(stats[k]) * len(chunk)
    return {f"eval_{k}": v / len(pairs) for k, v in sums.items()}


@torch.no_grad()
def greedy_answers(model, has_ref: bool, tokenizer, prompts: list, cfg: DPOConfig
                   ) -> tuple[list[str], list[float]]:
    """The policy's greedy answers to held-out prompts and, for each, its KL to the reference
    on that answer: Σ_t k (k₁ or k₃ of log π_θ and log π_ref per token)."""
    if not prompts:
        return [], []
    unwrapped = tu._unwrap(model)
    answers = generate(unwrapped, tokenizer, prompts, SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, greedy=True, seed=None))
    policy = response_logprobs(unwrapped, tokenizer, prompts, answers, cfg.batch_size,
                               cfg.max_length)
    with tu.reference_mode(model, has_ref):
        ref = response_logprobs(unwrapped, tokenizer, prompts, answers, cfg.batch_size,
                                cfg.max_length)
    estimator = kl_k3 if cfg.kl_estimator == "k3" else kl_k1
    return answers, [float(estimator(p, q).sum()) for p, q in zip(policy, ref)]


# -- the stage ------------------------------------------------------------------------------
def train_dpo(cfg: DPOConfig, ctx) -> dict:
    """Fit the policy adapter on preference pairs with the DPO (or IPO) loss."""
    cfg.validate()
    accelerator = tu.make_accelerator()
    ctx.is_main_process = accelerator.is_main_process
    main = ctx.is_main_process
    device = accelerator.device
    tu.seed_everything(cfg.seed)
    if not ctx.resume:
        ctx.progress(0, None, "loading data and model")
    # everything that can be refused is checked before the model loads
    train_rows, eval_rows = load_pairs(ctx.store, cfg, ctx.log)
    sft_path = tu.sft_adapter_path(ctx.store, cfg.sft_run, cfg.model) \
        if cfg.sft_run is not None else None

    loaded, _ = tu.load_training_base("dpo", cfg, ctx.store, device, ctx.log)
    ctx.check_cancel()
    tokenizer = loaded.tokenizer
    pad_id = tokenizer.pad_token_id
    train, truncated = encode_pairs(tokenizer, train_rows, cfg.max_length)
    evals, eval_truncated = encode_pairs(tokenizer, eval_rows, cfg.max_length)
    if truncated or eval_truncated:
        ctx.log(f"warning: {truncated} train and {eval_truncated} eval pairs are longer than "
                f"max_length={cfg.max_length} tokens and were truncated", "warning")
    same = sum(c.input_ids == r.input_ids for c, r in train)
    if same:
        ctx.log(f"warning: {same} train pairs have identical chosen and rejected tokens "
                f"(they teach nothing)", "warning")
    prompts = list(dict.fromkeys(prompt_text(r["prompt"]) for r in eval_rows or train_rows))
    prompts = prompts[: cfg.samples_per_eval]

    model, has_ref = tu.policy_and_reference(loaded.model, cfg.lora, sft_path)
    # no dropout anywhere (an SFT adapter brings its own): log π_θ and log π_ref must be the
    # same function of the weights, so that h_θ = 0 and the loss is log 2 at the start
    model.eval()
    params = tu.policy_parameters(model)
    n_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    total = total_steps_for(cfg, len(train), accelerator.num_processes)
    scheduler = tu.make_scheduler(optimizer, cfg.schedule,
                                  tu.warmup_steps_for(total, cfg.warmup_ratio), total)
    model, optimizer = accelerator.prepare(model, optimizer)

    start, state = tu.resume_state(ctx, model, optimizer, scheduler, total)

    ref_train = ref_eval = None
    if cfg.precompute_ref:
        ctx.progress(start, total, "reference log-probs")
        ref_train = reference_logprobs(model, has_ref, train, pad_id, device, cfg.batch_size)
        ref_eval = reference_logprobs(model, has_ref, evals, pad_id, device, cfg.batch_size)
        ctx.check_cancel()

    first_loss = state.get("first_loss")
    last_loss = state.get("last_loss")
    eval_before = state.get("eval_before")
    last_eval = state.get("last_eval", eval_before)
    saved_step = start if state else -1

    def observe(step: int) -> None:
        """Held-out loss/accuracy/margin, the KL to π_ref and greedy samples at `step`."""
        nonlocal last_eval
        ev = evaluate(model, has_ref, cfg, evals, ref_eval, pad_id, device) or {}
        answers, kls = greedy_answers(model, has_ref, tokenizer, prompts, cfg)
        if kls:
            ev["kl_to_ref"] = sum(kls) / len(kls)
        if ev:
            ctx.metrics(step, ev)
            last_eval = ev
        sample_now = cfg.sample_every > 0 and (step % cfg.sample_every == 0 or step == total)
        if main and answers and (step == 0 or sample_now):
            ctx.samples(step, [{"prompt": p, "response": a, "kl": k}
                               for p, a, k in zip(prompts, answers, kls)])

    if start == 0:
        ctx.log(f"DPO ({cfg.loss_type}, β={cfg.beta}) on {cfg.model} · reference: "
                f"{'SFT run #' + str(cfg.sft_run) if has_ref else 'base'} · {len(train)} "
                f"train / {len(evals)} eval pairs, {total} steps, {n_trainable:,} trainable "
                f"parameters, device {device}")
        ctx.progress(0, total, "evaluating before training")
        observe(0)
        eval_before = last_eval

    done_rng = None

    def checkpoint(step: int) -> None:
        nonlocal saved_step
        if step != saved_step:
            extra = {"first_loss": first_loss, "last_loss": last_loss,
                     "eval_before": eval_before, "last_eval": last_eval}
            tu.save_checkpoint(ctx.run_dir, step, model, optimizer, scheduler, extra,
                               keep=cfg.keep_checkpoints, accelerator=accelerator, rng=done_rng)
            saved_step = step

    per_process = cfg.batch_size
    global_batch = per_process * cfg.grad_accum * accelerator.num_processes
    lengths = [max(len(c.input_ids), len(r.input_ids)) for c, r in train] \
        if cfg.group_by_length else None
    done = start
    ctx.steps_begin(start)
    try:
        for step in range(start + 1, total + 1):
            ctx.check_cancel()
            indices = tu.stream_indices(len(train), cfg.seed, (step - 1) * global_batch,
                                        global_batch, lengths=lengths, batch=per_process)
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                chunk = indices[micro * per_process * accelerator.num_processes:
                                (micro + 1) * per_process * accelerator.num_processes]
                mine = chunk[accelerator.process_index * per_process:
                             (accelerator.process_index + 1) * per_process]
                pairs = [train[i] for i in mine]
                if ref_train is not None:
                    ref = ref_train[mine]
                else:
                    ref = reference_logprobs(model, has_ref, pairs, pad_id, device, len(pairs))
                logp = policy_pass(model, accelerator, cfg, pairs, ref, pad_id, device)
                stats = pair_stats(cfg, logp[:, 0], logp[:, 1], ref[:, 0], ref[:, 1])
                if not torch.isfinite(stats["loss"]):
                    raise NonFiniteError(f"step {step}: the {cfg.loss_type} DPO loss is "
                                         f"{float(stats['loss'])} (not finite); lower the "
                                         f"learning rate or check the data")
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
                ctx.check_cancel()
            norm, lr = tu.optimizer_step(accelerator, params, optimizer, scheduler,
                                         cfg.max_grad_norm)
            if accelerator.num_processes > 1:
                names = list(sums)
                mean = accelerator.reduce(torch.tensor([sums[k] for k in names], device=device),
                                          "mean").tolist()
                sums = dict(zip(names, mean))
            last_loss = sums["loss"]
            if first_loss is None:
                first_loss = last_loss
            ctx.metrics(step, {**sums, "grad_norm": norm, "learning_rate": lr})
            done = step
            done_rng = tu.rng_state()
            ctx.progress(step, total, f"loss {last_loss:.3f} · accuracy "
                                      f"{sums['reward_accuracy']:.2f}")
            if step == total or (cfg.eval_every > 0 and step % cfg.eval_every == 0) or \
                    (cfg.sample_every > 0 and step % cfg.sample_every == 0):
                ctx.check_cancel()
                observe(step)
            if cfg.save_every > 0 and step % cfg.save_every == 0 and step < total:
                checkpoint(step)
    except (JobCancelled, KeyboardInterrupt):
        # cancelled between steps: keep the last finished step, so resume loses nothing
        if done > 0 and done != saved_step:
            checkpoint(done)
            ctx.log(f"checkpoint saved at step {done}")
        raise

    # -- final adapter -----------------------------------------------------------------
    out = tu.save_final_adapter(ctx, accelerator, model, total, adapter_name=tu.POLICY)
    before, after = eval_before or {}, last_eval or {}
    return {"first_loss": first_loss, "last_loss": last_loss,
            "eval_accuracy_before": before.get("eval_reward_accuracy"),
            "eval_accuracy_after": after.get("eval_reward_accuracy"),
            "eval_margin_after": after.get("eval_reward_margin"),
            "eval_loss_before": before.get("eval_loss"), "eval_loss_after": after.get("eval_loss"),
            "kl_to_ref": after.get("kl_to_ref"), "adapter": str(out), "steps": total,
            "resumed_from": start or None, "train_pairs": len(train), "eval_pairs": len(evals),
            "truncated": truncated + eval_truncated, "trainable_parameters": n_trainable,
            "reference": f"sft#{cfg.sft_run}" if has_ref else "base",
            "loss_type": cfg.loss_type, "beta": cfg.beta}
