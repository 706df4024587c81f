"""Reward model: a scalar head on the transformer, trained on preference pairs.

r_φ(x, y) is a linear head on the hidden state of the last non-pad token of
"prompt + response" (through the chat template; that token is the end-of-turn/EOS),
with LoRA on the backbone and the head fully trained. Training minimises the
Bradley–Terry pairwise loss  L(φ) = −log σ(r_φ(x, y⁺) − r_φ(x, y⁻)).

Saved in the run folder (`engine.inference.models.adapter_dir(run_id)` = <run_dir>/adapter):
    adapter_config.json + adapter_model.safetensors   the LoRA adapter (standard PEFT layout)
    reward_head.safetensors                            head weight/bias, and normalisation
                                                       mean/std (metadata holds them too)

Public API (the PPO and compare pages use it):
    load_scorer(store, run_id, device=None) -> RewardScorer   (cached per run)
    RewardScorer.score(prompts, responses) -> list[float]     (batched, no grad, normalised)
    load_reward_head(run_id) -> (head, stats)                 stats = {"mean", "std"} or None
    reward_adapter_path(run_id) -> Path                       the PEFT adapter folder
    score_with_model(model, head, tokenizer, prompts, responses, ..., adapter_name=None)

Using the reward model on a shared base (e.g. in PPO, one base with several adapters):
    from engine.inference.models import load_adapter
    model = load_adapter(peft_model, reward_adapter_path(rid), adapter_name="reward")
    head, stats = load_reward_head(rid)
    scores = score_with_model(model, head.to(device), tok, prompts, responses,
                              stats=stats, adapter_name="reward")
`adapter_name` switches to that adapter for the call and restores the previously active
adapter (and which LoRA weights required grad) afterwards.
"""
from __future__ import annotations

import json
import math
import shutil
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from engine.training import train_utils as tu
from engine.inference.chat import Encoded, collate_completions, encode_completion, pad_right
from engine.inference.generate import SamplingConfig, generate
from engine.inference.models import add_lora, adapter_dir, inference_cache, load_adapter, load_base
from engine.objectives import (normalize_rewards, pairwise_accuracy, pairwise_loss,
                               reward_stats)
from engine.data.sources import mix_sources
from engine.schema import (ADVANCED, LoraSettings, SourceMixSettings, SupervisedConfig, like,
                           setting)
from engine.inference.packing import DEFAULT_ROW_TOKENS, packed_outputs, supports_packing

HEAD_FILE = "reward_head.safetensors"


@dataclass
class RewardConfig(SourceMixSettings, SupervisedConfig):
    """Settings of a reward-model run (see engine.schema for the shared ones)."""
    dataset: str = like("dataset", "sample-preferences")
    max_steps: int = like("max_steps", 30)          # 0: run `epochs` full passes
    batch_size: int = like("batch_size", 4)         # pairs per step (2× sequences a pass)
    learning_rate: float = like("learning_rate", 2e-4)   # the LoRA weights
    schedule: str = like("schedule", "linear")
    eval_every: int = like("eval_every", 0)         # 0: only at the end
    save_every: int = like("save_every", 20)
    # no LoRA dropout (TRL's RewardTrainer default too): a Bradley–Terry step compares two
    # scores of the same pass, and dropout noise on them only blurs the margin; ~10% faster
    lora: LoraSettings = like("lora", factory=lambda: LoraSettings(dropout=0.0))
    head_lr: float | None = setting(1e-3, min=1e-9, max=1.0, step=1e-4, format="%.1e",
                                    group=ADVANCED, optional=True)  # None: learning_rate
    margin: float = setting(0.0, min=0.0, max=100.0, step=0.1)   # m in −log σ(r⁺ − r⁻ − m)
    max_train_pairs: int = setting(0, min=0, max=100_000_000, group=ADVANCED)   # 0: all
    eval_split: str = setting("eval", group=ADVANCED, widget="hidden")
    max_eval_pairs: int = setting(64, min=0, max=100_000_000)    # 0: all
    eval_batch_size: int = setting(8, min=1, max=4096, group=ADVANCED)
    normalize: bool = setting(True)          # rewards mean 0 / std 1 on reference responses
    normalize_samples: int = setting(64, min=2, max=100_000, group=ADVANCED)
    normalize_sft_run: int | None = setting(None, widget="page")  # statistics on its answers
    normalize_max_new_tokens: int = setting(48, min=1, max=4096, group=ADVANCED)


# -- the equations -------------------------------------------------------------------
def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last position with mask 1 in each row: max_t t·mask_t (any padding side)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def last_token_reward(hidden: torch.Tensor, attention_mask: torch.Tensor,
                      head: nn.Module) -> torch.Tensor:
    """r_φ(x, y) = w·h_T + b, where h_T is the hidden state of the last non-pad token.

    hidden: (batch, seq, d); attention_mask: (batch, seq) → rewards (batch,) in float32.
    """
    idx = last_token_index(attention_mask)
    h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
    weight = next(head.parameters())
    return head(h_last.to(weight.dtype)).squeeze(-1).float()


def pearson(x: list[float], y: list[float]) -> float | None:
    """ρ = cov(x, y) / (σ_x σ_y); None when a side is constant or too short."""
    if len(x) < 3:
        return None
    tx, ty = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    tx, ty = tx - tx.mean(), ty - ty.mean()
    den = float(tx.norm() * ty.norm())
    return float((tx * ty).sum()) / den if den > 0 else None


# -- the model -------------------------------------------------------------------------
def new_head(hidden_size: int, seed: int | None = None) -> nn.Linear:
    """A fresh scalar head: w ~ N(0, 1/(d+1)), b = 0 (float32)."""
    head = nn.Linear(hidden_size, 1)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    with torch.no_grad():
        head.weight.copy_(torch.randn(1, hidden_size, generator=gen) / math.sqrt(hidden_size + 1))
        head.bias.zero_()
    return head


def backbone(model) -> nn.Module:
    """The transformer body (no LM head) of a causal LM, a PeftModel around one, or itself."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "base_model", inner)


def hidden_size_of(model) -> int:
    cfg = backbone(model).config
    return getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")


class RewardModel(nn.Module):
    """Backbone (with its LoRA) + scalar head, as one module (what the Accelerator prepares)."""

    def __init__(self, lm: nn.Module, head: nn.Module):
        super().__init__()
        self.lm = lm
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = backbone(self.lm)(input_ids=input_ids, attention_mask=attention_mask,
                                use_cache=False)
        return last_token_reward(out.last_hidden_state, attention_mask, self.head)


def packed_rewards(model, head: nn.Module, seqs: list[torch.Tensor],
                   max_tokens: int = DEFAULT_ROW_TOKENS) -> torch.Tensor:
    """r_φ(x, y) = w·h_last + b for each 1-D token sequence, padding-free: the sequences
    packed end to end in rows (engine.inference.packing), h_last read at each one's last token."""
    weight = next(head.parameters())
    rewards = torch.zeros(len(seqs), device=weight.device)
    last = [torch.tensor([s.numel() - 1]) for s in seqs]
    for members, _, hidden in packed_outputs(backbone(model), seqs, last, max_tokens,
                                             logits=False):
        rewards[members] = head(hidden.to(weight.dtype)).squeeze(-1).float()
    return rewards


def response_length(enc: Encoded) -> int:
    """Number of response tokens (labels that are not ignored)."""
    return sum(1 for t in enc.labels if t != -100)


def encode_pair(tokenizer, row: dict, max_length: int) -> tuple[Encoded, Encoded]:
    return (encode_completion(tokenizer, row["prompt"], row["chosen"], max_length),
            encode_completion(tokenizer, row["prompt"], row["rejected"], max_length))


def pair_rewards(reward_model, pairs: list[tuple[Encoded, Encoded]], pad_token_id: int,
                 device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected of B pairs in one right-padded forward pass of 2B sequences."""
    encs = [c for c, _ in pairs] + [r for _, r in pairs]
    batch = collate_completions(encs, pad_token_id)
    rewards = reward_model(batch["input_ids"].to(device), batch["attention_mask"].to(device))
    return rewards[: len(pairs)], rewards[len(pairs):]


@contextmanager
def active_adapter(model, adapter_name: str | None):
    """Make `adapter_name` the active PEFT adapter for a block; restore the previous one and
    every parameter's requires_grad afterwards (peft's set_adapter changes them)."""
    if adapter_name is None or not hasattr(model, "set_adapter"):
        yield model
        return
    previous = model.active_adapter
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    model.set_adapter(adapter_name)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for n, p in model.named_parameters():
            if n in grads:
                p.requires_grad_(grads[n])


@torch.no_grad()
def score_with_model(model, head: nn.Module, tokenizer, prompts: list, responses: list[str],
                     max_length: int = 512, batch_size: int = 8, stats: dict | None = None,
                     adapter_name: str | None = None) -> list[float]:
    """Rewards of (prompt, response) pairs with a model whose reward adapter is active
    (or pass `adapter_name` to switch to it for this call). Normalised when `stats` is given.

    model: a causal LM / PeftModel (the backbone is used, not the LM head);
    head: the scalar head from load_reward_head (on the model's device).
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    encs = [encode_completion(tokenizer, p, r, max_length) for p, r in zip(prompts, responses)]
    return score_token_ids(model, head, [e.input_ids for e in encs], stats, adapter_name,
                           batch_size, tokenizer.pad_token_id)


@torch.no_grad()
def score_token_ids(model, head: nn.Module, seqs: list[list[int]], stats: dict | None = None,
                    adapter_name: str | None = None, batch_size: int = 8, pad_id: int = 0
                    ) -> list[float]:
    """`score_with_model` on sequences already tokenised as `encode_completion` lays them
    out (chat.completion_ids): padding-free where the model supports it, else right-padded
    batches of `batch_size`. The RL stages score their rollouts' token ids this way (no
    decoding and re-tokenising of the answers)."""
    device = next(model.parameters()).device
    head = head.to(device)
    with active_adapter(model, adapter_name):
        was_training = model.training
        model.eval()
        try:
            if supports_packing(model):
                out = packed_rewards(model, head, [torch.tensor(s, device=device)
                                                   for s in seqs]).cpu().tolist()
            else:
                scorer, out = RewardModel(model, head), []
                for start in range(0, len(seqs), batch_size):
                    chunk = seqs[start:start + batch_size]
                    ids = pad_right(chunk, pad_id).to(device)
                    mask = pad_right([[1] * len(x) for x in chunk], 0).to(device)
                    out.extend(scorer(ids, mask).float().cpu().tolist())
        finally:
            if was_training:
                model.train()
    return normalize_rewards(out, stats["mean"], stats["std"]) if stats else out


# -- saving and loading the head ---------------------------------------------------------
def reward_adapter_path(run_id: int) -> Path:
    """The reward run's LoRA adapter (PEFT layout); the head file sits in the same folder."""
    return adapter_dir(run_id)


def save_head(path: Path, head: nn.Module, stats: dict | None, extra: dict | None = None) -> None:
    state = {"weight": head.weight.detach().float().cpu().contiguous(),
             "bias": head.bias.detach().float().cpu().contiguous()}
    meta = {"hidden_size": str(head.weight.shape[1]), "normalized": str(bool(stats))}
    if stats:
        state["norm_mean"] = torch.tensor([stats["mean"]], dtype=torch.float64)
        state["norm_std"] = torch.tensor([stats["std"]], dtype=torch.float64)
        meta.update(mean=repr(stats["mean"]), std=repr(stats["std"]))
    for k, v in (extra or {}).items():
        meta[k] = str(v)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)


def load_head_file(path: Path) -> tuple[nn.Linear, dict | None, dict]:
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no reward head (is this a finished reward run?)")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    weight = tensors["weight"]
    head = nn.Linear(weight.shape[1], 1)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(tensors["bias"])
    head.eval()
    stats = None
    if "norm_mean" in tensors:
        stats = {"mean": float(tensors["norm_mean"][0]), "std": float(tensors["norm_std"][0])}
    return head, stats, meta


def load_reward_head(run_id: int) -> tuple[nn.Linear, dict | None]:
    """(head, stats) of a finished reward run: head is an nn.Linear(d, 1) in float32 on CPU,
    stats {"mean", "std"} for normalisation or None."""
    head, stats, _ = load_head_file(reward_adapter_path(run_id) / HEAD_FILE)
    return head, stats


# -- the scorer -------------------------------------------------------------------------------
class RewardScorer:
    """Scores (prompt, response) pairs with a finished reward run.

    Shared mode (device=None): the reward adapter is attached by name to the process-wide
    inference model (engine.inference.models.inference_cache), so scoring keeps one base in memory.
    With an explicit device: a private base copy on that device.
    """

    def __init__(self, store, run_id: int, device: str | torch.device | None = None):
        run = store.get_run(int(run_id))
        if run["stage"] != "reward":
            raise ValueError(f"run {run_id} is a {run['stage']} run, not a reward run")
        path = reward_adapter_path(run["id"])
        if not (path / "adapter_config.json").exists() or not (path / HEAD_FILE).exists():
            raise FileNotFoundError(f"run {run_id} has no saved reward model yet")
        self.store = store
        self.run_id = int(run["id"])
        self.config = run.get("config") or {}
        self.spec = self.config.get("model") or run.get("model") or "embedded"
        self.max_length = int(self.config.get("max_length") or 512)
        self.head, self.stats = load_reward_head(self.run_id)
        self.device = torch.device(device) if device else None
        self._private = None
        self._lock = threading.Lock()
        if self.device is not None:
            loaded = load_base(self.spec, device=self.device)
            model = load_adapter(loaded.model, path, adapter_name="reward")
            model.eval()
            self._private = (model, loaded.tokenizer)
            self.head.to(self.device)

    @contextmanager
    def _model(self):
        if self._private is not None:
            with self._lock:
                yield self._private
            return
        with inference_cache.use(self.store, self.run_id) as (model, tok):
            yield model, tok

    def score(self, prompts: list, responses: list[str], batch_size: int = 8,
              normalized: bool = True) -> list[float]:
        """One reward per (prompt, response); prompts are strings or message lists."""
        if not responses:
            return []
        with self._model() as (model, tok):
            return score_with_model(model, self.head, tok, prompts, responses,
                                    max_length=self.max_length, batch_size=batch_size,
                                    stats=self.stats if normalized else None)

    def rank(self, prompt, responses: list[str]) -> list[tuple[str, float]]:
        """The responses to one prompt with their rewards, best first."""
        scores = self.score([prompt] * len(responses), responses)
        return sorted(zip(responses, scores), key=lambda x: -x[1])


_scorers: "OrderedDict[tuple, RewardScorer]" = OrderedDict()
_scorers_lock = threading.Lock()
MAX_CACHED_SCORERS = 4


def load_scorer(store, run_id: int, device: str | torch.device | None = None) -> RewardScorer:
    """The scorer of a finished reward run, cached per (database, run, device, head file):
    repeated calls return the same object; the least recently used of more than
    MAX_CACHED_SCORERS is dropped (a private-device scorer holds a whole model)."""
    head = reward_adapter_path(int(run_id)) / HEAD_FILE
    stamp = head.stat().st_mtime_ns if head.exists() else None
    key = (str(Path(store.path).resolve()), int(run_id), str(device) if device else None, stamp)
    with _scorers_lock:
        scorer = _scorers.get(key)
        if scorer is None:
            scorer = RewardScorer(store, int(run_id), device)
            for old in [k for k in _scorers if k[:3] == key[:3]]:
                del _scorers[old]  # the run's head was rewritten
            _scorers[key] = scorer
        _scorers.move_to_end(key)
        while len(_scorers) > MAX_CACHED_SCORERS:
            _scorers.popitem(last=False)
        return scorer


def clear_scorers() -> None:
    with _scorers_lock:
        _scorers.clear()


# -- training --------------------------------------------------------------------------------
def _split_rows(rows: list[dict], limit: int) -> list[dict]:
    return rows[:limit] if limit and limit > 0 else rows


@torch.no_grad()
def evaluate_pairs(reward_model, pairs: list[tuple[Encoded, Encoded]], pad_token_id: int,
                   device, batch_size: int, margin: float = 0.0) -> dict:
    """Rewards of every pair, with loss and accuracy over them."""
    reward_model.eval()
    chosen, rejected = [], []
    for start in range(0, len(pairs), max(1, batch_size // 2)):
        rc, rr = pair_rewards(reward_model, pairs[start:start + max(1, batch_size // 2)],
                              pad_token_id, device)
        chosen.append(rc.cpu())
        rejected.append(rr.cpu())
    rc, rr = torch.cat(chosen), torch.cat(rejected)
    return {"chosen": rc, "rejected": rr,
            "loss": float(pairwise_loss(rc, rr, margin or None)),
            "accuracy": float(pairwise_accuracy(rc, rr)),
            "margin": float((rc - rr).mean())}


@torch.no_grad()
def _normalisation_stats(cfg: RewardConfig, ctx, lm, head, tokenizer, train_rows
                         ) -> dict | None:
    """μ, σ of the raw reward on the training responses, or on an SFT run's own answers."""
    n = max(2, cfg.normalize_samples)
    if cfg.normalize_sft_run:
        sft_path = adapter_dir(int(cfg.normalize_sft_run))
        prompts = [r["prompt"] for r in train_rows[:n]]
        ctx.log(f"normalisation: sampling {len(prompts)} answers from SFT run "
                f"{cfg.normalize_sft_run}")
        load_adapter(lm, sft_path, adapter_name="sft_norm")
        try:
            with active_adapter(lm, "sft_norm"):
                responses = generate(lm, tokenizer, prompts, SamplingConfig(
                    max_new_tokens=cfg.normalize_max_new_tokens, seed=cfg.seed,
                    batch_size=cfg.eval_batch_size))
        finally:
            lm.delete_adapter("sft_norm")
            lm.set_adapter("default")
        source = f"sft#{cfg.normalize_sft_run}"
    else:
        prompts, responses = [], []
        for r in train_rows:
            for text in (r["chosen"], r["rejected"]):
                if len(responses) < n:
                    prompts.append(r["prompt"])
                    responses.append(text)
        source = "train"
    raw = score_with_model(lm, head, tokenizer, prompts, responses,
                           max_length=cfg.max_length, batch_size=cfg.eval_batch_size)
    stats = reward_stats(raw)
    stats.update(source=source, n=len(raw))
    ctx.log(f"normalisation on {len(raw)} {source} responses: mean {stats['mean']:.4f}, "
            f"std {stats['std']:.4f}")
    return stats


def train_reward(cfg: RewardConfig, ctx) -> dict:
    """Fit r_φ on preference pairs with L = −log σ(r⁺ − r⁻ − m); save adapter + head."""
    cfg.validate()
    accelerator = tu.make_accelerator()
    ctx.is_main_process = accelerator.is_main_process
    device = accelerator.device
    tu.seed_everything(cfg.seed)

    store = ctx.store
    kind = store.get_dataset(cfg.dataset)["kind"]
    if kind != "preference":
        raise ValueError(f"dataset {cfg.dataset!r} is a {kind} dataset; a reward model needs "
                         f"a preference dataset with {{prompt, chosen, rejected}} rows")
    train_rows = _split_rows(store.list_rows(cfg.dataset, split="train"), cfg.max_train_pairs)
    eval_rows = store.list_rows(cfg.dataset, split=cfg.eval_split) if cfg.eval_split else []
    if not eval_rows and len(train_rows) >= 4:
        cut = max(1, len(train_rows) // 10)
        eval_rows, train_rows = train_rows[-cut:], train_rows[:-cut]
        ctx.log(f"dataset has no {cfg.eval_split!r} rows: holding out the last {cut} "
                f"training pairs for evaluation")
    eval_rows = _split_rows(eval_rows, cfg.max_eval_pairs)
    train_rows = mix_sources(train_rows, cfg.ai_share, cfg.seed, cfg.dataset, ctx.log)
    if not train_rows:
        raise ValueError(f"dataset {cfg.dataset!r} has no training pairs")
    ctx.log(f"{len(train_rows)} training pairs, {len(eval_rows)} evaluation pairs")

    ctx.progress(0, None, "loading model")
    loaded, _ = tu.load_training_base("reward", cfg, ctx.store, device, ctx.log)
    tok = loaded.tokenizer
    train_pairs = [encode_pair(tok, r, cfg.max_length) for r in train_rows]
    eval_pairs = [encode_pair(tok, r, cfg.max_length) for r in eval_rows]
    truncated = sum(c.truncated or r.truncated for c, r in train_pairs + eval_pairs)
    if truncated:
        ctx.log(f"{truncated} pairs truncated to max_length={cfg.max_length}", "warning")
    same = sum(c.input_ids == r.input_ids for c, r in train_pairs)
    if same:
        ctx.log(f"{same} training pairs have identical chosen and rejected tokens", "warning")

    lm = add_lora(loaded.model, cfg.lora)
    head = new_head(hidden_size_of(lm), seed=cfg.seed).to(device)
    reward_model = RewardModel(lm, head)
    lora_params = [p for p in lm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": lora_params, "lr": cfg.learning_rate},
         {"params": list(head.parameters()), "lr": cfg.head_lr or cfg.learning_rate}],
        weight_decay=cfg.weight_decay)
    accum = max(1, cfg.grad_accum)
    # batch_size pairs per process: each takes its own slice of every global batch
    procs, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = math.ceil(len(train_pairs) / (cfg.batch_size * accum * procs))
    total = cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else \
        max(1, math.ceil(cfg.epochs * per_epoch))
    scheduler = tu.make_scheduler(optimizer, cfg.schedule,
                                  tu.warmup_steps_for(total, cfg.warmup_ratio), total)
    reward_model, optimizer = accelerator.prepare(reward_model, optimizer)

    step = 0
    last = tu.latest_checkpoint(ctx.run_dir) if ctx.resume else None
    if last is not None:
        has_head = tu.has_state(last, "head")
        step = int(tu.load_checkpoint(last, lm, optimizer, scheduler,
                                      modules={"head": head} if has_head else None)["step"])
        if not has_head:
            ctx.log(f"{last} has no head: the head restarts from its initialisation",
                    "warning")
        ctx.log(f"resumed from the checkpoint at step {step}")
    if ctx.resume and ctx.is_main_process:
        # steps after the checkpoint are redone; without one everything is redone
        store.delete_after_step(ctx.run_id, step if step > 0 else -1)

    # a pair's chosen and rejected share one padded forward pass: group by the longer
    pair_lengths = ([max(len(c.input_ids), len(r.input_ids)) for c, r in train_pairs]
                    if cfg.group_by_length else None)
    train_seconds, steps_done = 0.0, 0
    ctx.steps_begin(step)
    while step < total:
        ctx.check_cancel()
        t_step = time.perf_counter()
        reward_model.train()
        acc_sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "reward_chosen": 0.0,
                    "reward_rejected": 0.0}
        for k in range(accum):
            # a deterministic stream of (seed, position): a resumed run replays the same order
            B = cfg.batch_size
            idx = tu.stream_indices(len(train_pairs), cfg.seed, (step * accum + k) * B * procs,
                                    B * procs, lengths=pair_lengths, batch=B)[rank * B:
                                                                              (rank + 1) * B]
            rc, rr = pair_rewards(reward_model, [train_pairs[i] for i in idx],
                                  tok.pad_token_id, device)
            loss = pairwise_loss(rc, rr, cfg.margin or None)
            accelerator.backward(loss / accum)
            acc_sums["loss"] += float(loss.detach())
            acc_sums["accuracy"] += float(pairwise_accuracy(rc.detach(), rr.detach()))
            acc_sums["margin"] += float((rc - rr).detach().mean())
            acc_sums["reward_chosen"] += float(rc.detach().mean())
            acc_sums["reward_rejected"] += float(rr.detach().mean())
        grad_norm, lr_now = tu.optimizer_step(accelerator, reward_model.parameters(), optimizer,
                                               scheduler, cfg.max_grad_norm)
        step += 1
        steps_done += 1
        values = {k: v / accum for k, v in acc_sums.items()}
        if procs > 1:  # the metrics of the whole global batch, not of this process's slice
            mean = accelerator.reduce(torch.tensor(list(values.values()), device=device), "mean")
            values = dict(zip(values, mean.tolist()))
        values.update(grad_norm=float(grad_norm), lr=lr_now)
        ctx.metrics(step, values)
        train_seconds += time.perf_counter() - t_step
        ctx.progress(step, total, f"loss {values['loss']:.3f} · acc {values['accuracy']:.2f}")
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total and eval_pairs:
            res = evaluate_pairs(reward_model, eval_pairs, tok.pad_token_id, device,
                                 cfg.eval_batch_size, cfg.margin)
            ctx.metrics(step, {"eval_loss": res["loss"], "eval_accuracy": res["accuracy"],
                               "eval_margin": res["margin"]})
        if cfg.save_every and step % cfg.save_every == 0 and step < total:
            tu.save_checkpoint(ctx.run_dir, step, lm, optimizer, scheduler, keep=1,
                               accelerator=accelerator, modules={"head": head})
    seconds_per_step = train_seconds / steps_done if steps_done else None

    # -- normalisation and final evaluation ---------------------------------------------
    ctx.check_cancel()
    stats = None
    if cfg.normalize:
        ctx.progress(step, total, "normalising rewards")
        stats = _normalisation_stats(cfg, ctx, lm, head, tok, train_rows)
    ctx.progress(step, total, "evaluating")
    summary: dict[str, Any] = {"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                               "steps": step, "seconds_per_step": seconds_per_step,
                               "device": str(device)}
    if eval_pairs:
        eval_result = evaluate_pairs(reward_model, eval_pairs, tok.pad_token_id, device,
                                     cfg.eval_batch_size, cfg.margin)
        rc, rr = eval_result["chosen"], eval_result["rejected"]
        if stats:
            rc, rr = normalize_rewards(rc, stats["mean"], stats["std"]), \
                normalize_rewards(rr, stats["mean"], stats["std"])
        ctx.metrics(step, {"eval_loss": eval_result["loss"],
                           "eval_accuracy": eval_result["accuracy"],
                           "eval_margin": eval_result["margin"]})
        rows, lengths, rewards = [], [], []
        for i, (row, (ce, re_)) in enumerate(zip(eval_rows, eval_pairs)):
            c, r = float(rc[i]), float(rr[i])
            lc, lr_ = response_length(ce), response_length(re_)
            lengths += [lc, lr_]
            rewards += [c, r]
            rows.append({"prompt": row["prompt"], "response": row["chosen"], "reward": c,
                         "kind": "eval_pair", "pair_id": row.get("id"),
                         "rejected": row["rejected"], "chosen_reward": c, "rejected_reward": r,
                         "margin": c - r, "correct": c > r, "chosen_length": lc,
                         "rejected_length": lr_, "chosen_chars": len(row["chosen"]),
                         "rejected_chars": len(row["rejected"])})
        ctx.samples(step, rows)
        longer_chosen = [float(a > b) for a, b in
                         ((x["chosen_length"], x["rejected_length"]) for x in rows) if a != b]
        summary.update(eval_accuracy=eval_result["accuracy"], eval_loss=eval_result["loss"],
                       eval_margin=eval_result["margin"],
                       eval_reward_chosen=float(rc.mean()), eval_reward_rejected=float(rr.mean()),
                       length_correlation=pearson(lengths, rewards),
                       longer_is_chosen=(sum(longer_chosen) / len(longer_chosen)
                                         if longer_chosen else None))
    if stats:
        summary.update(norm_mean=stats["mean"], norm_std=stats["std"],
                       norm_source=stats["source"])

    # -- saving: only the main process writes ---------------------------------------------
    ctx.progress(step, total, "saving the adapter")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out = adapter_dir(ctx.run_id)
        tu.save_adapter(lm, out, "default")
        save_head(out / HEAD_FILE, head, stats,
                  {"base_model": cfg.model, "max_length": cfg.max_length,
                   "run_id": ctx.run_id})
        (out / "reward_config.json").write_text(json.dumps(
            {"max_length": cfg.max_length, "model": cfg.model, "stats": stats}, indent=1))
        ctx.artifact("adapter", out)
        ctx.artifact("reward_head", out / HEAD_FILE)
        shutil.rmtree(tu.checkpoints_dir(ctx.run_dir), ignore_errors=True)
        summary["adapter"] = str(out)
    accelerator.free_memory()
    ctx.log(f"eval accuracy {summary.get('eval_accuracy')}")
    return summary
