"""GRPO, with RLOO as an option: PPO's clipped objective without a value function, the
baseline taken from a group of G answers to the same prompt (Shao et al., 2024, DeepSeekMath;
Dr. GRPO, Liu et al., 2025; RLOO, Ahmadian et al., 2024).

One base model in memory, as in PPO (engine.training.ppo.PPOTrainer, whose model set-up,
reference switch and padding-free passes this stage reuses):
- π_θ   = base + trainable LoRA "policy" (from the SFT run's adapter when one is given);
- π_ref = the SFT adapter frozen as "ref" on the same base, or the base with adapters off;
- R     = Σ_k w_k·R_k over built-in rules (engine.training.rewards_builtin) and/or a trained
          reward model (attached to the same base as the adapter "reward").

Each step: B prompts, each repeated G times, sampled in one generate call (B·G answers,
truncated after EOS); log π_θ_old from the sampling pass, log π_ref from one padding-free
pass; the rewards; the group advantages (grpo / dr_grpo / rloo from engine.objectives), the
same Â_i on every token of answer i; then `ppo_epochs` passes over `minibatches` of the
clipped ratio objective plus β·k₃ to the reference (objectives.grpo_loss). No value head.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from engine.errors import NonFiniteError
from engine.inference.models import adapter_dir
from engine.objectives import (clip_fraction, dr_grpo_advantages, grpo_advantages, grpo_loss,
                               group_reward_std, kl_k3, masked_mean,
                               rloo_advantages, trend_slope, trend_verdict, weighted_reward,
                               zero_signal_fraction)
from engine.schema import ADVANCED, ConfigError, LoraSettings, SamplingSettings, TrainConfig, \
    like, setting
from engine.training import heldout, rewards_builtin, train_utils
from engine.training.ppo import (DEFAULT_PROMPT_DATASET, PPOConfig, PPOTrainer, RLSettings,
                                 Rollout, _trim, run_steps)
from engine.training.rl_prompts import PROMPT_LANGUAGES
from engine.training.rl_rewards import score_rollout

ADVANTAGES = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages}
MODEL_REWARD = "model"   # the component name of the trained reward model (metric reward_model)


@dataclass
class GRPOConfig(RLSettings, SamplingSettings, TrainConfig):
    """Settings of a GRPO / RLOO run (see engine.schema for the shared ones)."""
    dataset: str = like("dataset", DEFAULT_PROMPT_DATASET)   # prompts of an SFT/preference set
    # English: the embedded 135M model's French is mostly gibberish, which form rules pay
    prompt_language: str = setting("en", choices=PROMPT_LANGUAGES)
    # the held-out check at the first and the last step (the sentence compares those two),
    # 5 answers a prompt: the shipped samples hold 7 English eval prompts, 7 × 5 ≥ 32 answers
    heldout_every: int = setting(12, min=0, max=10_000_000, group=ADVANCED)
    heldout_answers: int = setting(5, min=1, max=1024, group=ADVANCED)
    # the defaults (issue 27): 12 steps of 4 English prompts × 8 answers at 1e-3, β 0.1,
    # 32 new tokens: the reward's trend rose beyond 2 SE on seeds 0, 1 and 2 (bench/RESULTS.md,
    # "Default GRPO run", with the runs that did not: 4 answers a prompt left most groups
    # without one finished answer, and French prompts are gibberish from the 135M model)
    max_steps: int = like("max_steps", 12, min=1)
    batch_size: int = like("batch_size", 4)                   # prompts per step (× G answers)
    learning_rate: float = like("learning_rate", 1e-3)
    save_every: int = like("save_every", 8)
    keep_checkpoints: int = like("keep_checkpoints", 1)
    lora: LoraSettings = like("lora", factory=lambda: LoraSettings(dropout=0.0))
    # an answer of about 12 words (the default target_length) fits in 32 tokens with room
    # to finish its sentence; most of the base model's answers need more
    max_new_tokens: int = like("max_new_tokens", 32)
    # 0.7: at 1.0 the embedded 135M model's answers are mostly gibberish (French ones above
    # all), and no rule's reward can then be a better answer a person can see; the group
    # still differs enough in length and form to give a signal
    temperature: float = like("temperature", 0.7)
    # 8: with 4, most groups held no answer that finished within the token limit, so no
    # answer was better than the others and the step taught nothing
    group_size: int = setting(8, min=2, max=1024)
    advantage: str = setting("grpo", choices=tuple(ADVANTAGES))
    beta: float = setting(0.1, min=0.0, max=100.0, step=0.01, format="%.3f")
    cliprange: float = setting(0.2, min=0.001, max=1e6, step=0.05)   # ε (1e6: no clip)
    sft_run: int | None = setting(None, widget="page")     # None: from the base (ref = base)
    reward_run: int | None = setting(None, widget="page")  # a trained reward model, and/or
    builtin_rewards: list = setting(factory=lambda: list(rewards_builtin.DEFAULT_GROUP_REWARDS),
                                    widget="page")          # ... built-in rules, by name
    reward_params: dict = setting(factory=dict, widget="page")   # {rule: {param: value}}
    # one weight per reward: the rules in order, then the reward model; [] = all 1
    reward_weights: list = setting(factory=list, widget="page")
    max_prompt_length: int = setting(128, min=8, max=65_536, step=32, group=ADVANCED)
    ppo_epochs: int = setting(1, min=1, max=64, group=ADVANCED)
    minibatches: int = setting(2, min=1, max=1024, group=ADVANCED)
    sample_every: int = setting(1, min=0, max=10_000_000, group=ADVANCED)
    sample_groups: int = setting(2, min=0, max=1024, group=ADVANCED)

    def check(self) -> None:
        super().check()
        answers = self.batch_size * self.group_size
        if answers % self.minibatches:
            raise ConfigError("minibatches", f"batch_size × group_size ({answers}) must be a "
                              f"multiple of minibatches ({self.minibatches})")
        names = list(self.builtin_rewards)
        if not names and self.reward_run is None and not self.reward_runs:
            raise ConfigError("builtin_rewards", "choose at least one reward: a built-in rule "
                              "or a reward model (reward_run, or an ensemble: reward_runs)")
        if len(set(names)) != len(names):
            raise ConfigError("builtin_rewards", f"a rule is listed twice: {names}")
        for name in names:
            if name not in rewards_builtin.names():
                raise ConfigError("builtin_rewards", f"{name!r} is not a built-in reward; "
                                  f"choose among {', '.join(rewards_builtin.names())}")
        for name, params in self.reward_params.items():
            if name not in names:
                raise ConfigError("reward_params", f"parameters for {name!r}, which is not "
                                  f"in builtin_rewards {names}")
            try:
                rewards_builtin.check_params(name, params)
            except ValueError as exc:
                raise ConfigError("reward_params", str(exc)) from exc
        expected = len(self.reward_names())
        if self.reward_weights and len(self.reward_weights) != expected:
            raise ConfigError("reward_weights", f"{len(self.reward_weights)} weight(s) for "
                              f"{expected} reward(s) {self.reward_names()}: give one weight "
                              f"per reward, in that order")
        for w in self.reward_weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise ConfigError("reward_weights", f"{w!r} is not a finite number")

    def reward_names(self) -> list[str]:
        """The reward components in the order of reward_weights."""
        model = self.reward_run is not None or bool(self.reward_runs)
        return list(self.builtin_rewards) + ([MODEL_REWARD] if model else [])

    def weights(self) -> list[float]:
        return [float(w) for w in self.reward_weights] or [1.0] * len(self.reward_names())


class GRPOTrainer(PPOTrainer):
    """PPOTrainer's model (policy/ref adapters, shared reward adapter), passes and prompt
    order, with group sampling, group advantages and no value head; `step(k)` does one
    GRPO iteration and returns its metrics and sample rows."""

    def __init__(self, cfg: GRPOConfig, store, log=lambda msg: None, accelerator=None):
        cfg.validate()
        # PPO's set-up with the settings it reads (model, SFT run, reward model, LoRA,
        # optimizer); its value head stays unused (no gradient: AdamW skips it)
        shared = PPOConfig(model=cfg.model, dataset=cfg.dataset, sft_run=cfg.sft_run,
                           reward_run=cfg.reward_run, lora=cfg.lora, seed=cfg.seed,
                           learning_rate=cfg.learning_rate, temperature=cfg.temperature,
                           top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                           max_prompt_length=cfg.max_prompt_length, batch_size=cfg.batch_size,
                           minibatches=1, max_grad_norm=cfg.max_grad_norm,
                           gradient_checkpointing=cfg.gradient_checkpointing,
                           quantization=cfg.quantization,
                           **{f.name: getattr(cfg, f.name) for f in fields(RLSettings)})
        super().__init__(shared, store, log=log, accelerator=accelerator, stage=("grpo", cfg))
        self.cfg = cfg
        self.scorers: dict[str, object] = {
            name: rewards_builtin.BuiltinScorer(name, cfg.reward_params.get(name))
            for name in cfg.builtin_rewards}
        if MODEL_REWARD in cfg.reward_names():
            self.scorers[MODEL_REWARD] = self.scorer  # PPO's: the shared reward adapter(s)
        self.weights = dict(zip(cfg.reward_names(), cfg.weights()))
        self.reward_label = " + ".join(
            f"{w:g}·{self.reward_label if n == MODEL_REWARD else self.scorers[n].label()}"
            for n, w in self.weights.items())
        self.advantage_fn = ADVANTAGES[cfg.advantage]

    # -- sampling and scoring -----------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list) -> Rollout:
        """G answers to each prompt from π_θ in one sampling loop (rows b·G .. b·G+G−1 are
        group b; each prompt computed once, its KV cache repeated G times:
        engine.inference.generate.sample_groups), truncated after EOS. The sampling pass's
        log-probs are log π_θ_old, on every device and dtype (see PPOTrainer.generate)."""
        return self.sample_answers(prompts, self.cfg.group_size)

    @torch.no_grad()
    def score(self, ro: Rollout, step: int = 0) -> dict[str, torch.Tensor]:
        """Old and reference log-probs, and each reward component ([B·G] each)."""
        if ro.logp is None:
            ro.logp = self.forward(ro.query, ro.query_mask, ro.response, ro.mask)[0]
        ro.ref_logp = self.ref_logprobs(ro.query, ro.query_mask, ro.response, ro.mask)
        parts = {}
        for name, scorer in self.scorers.items():
            values = torch.tensor(score_rollout(scorer, ro), dtype=torch.float32,
                                  device=self.device)
            bad = (~torch.isfinite(values)).nonzero()
            if len(bad):
                i = int(bad[0])
                raise NonFiniteError(f"step {step}: the reward {name!r} returned "
                                     f"{float(values[i])} for the answer {ro.texts[i][:80]!r}; "
                                     f"fix or remove that reward")
            parts[name] = values
        ro.raw_scores = weighted_reward(parts, self.weights)
        ro.reward_std = getattr(self.scorer, "last_std", None) if MODEL_REWARD in parts else None
        ro.scores = ro.raw_scores - (~ro.has_eos).float() * float(self.cfg.missing_eos_penalty)
        return parts

    @torch.no_grad()
    def reward_scores(self, prompts: list, texts: list[str]) -> torch.Tensor:
        """The run's reward Σ_k w_k·R_k of some answers (before the EOS penalty)."""
        parts = {name: torch.tensor(scorer.score(prompts, texts), dtype=torch.float32)
                 for name, scorer in self.scorers.items()}
        return weighted_reward(parts, self.weights)

    # -- one GRPO iteration -------------------------------------------------------------
    def step(self, step: int) -> tuple[dict[str, float], list[dict]]:
        cfg, G = self.cfg, self.cfg.group_size
        torch.manual_seed(cfg.seed * 100_003 + step)  # sampling reproducible across resume
        t0 = time.perf_counter()
        ro = self.generate(self.prompts_for_step(step))
        t1 = time.perf_counter()
        parts = self.score(ro, step)
        rewards = ro.scores.view(-1, G)       # [B, G], less the penalty for a missing EOS
        adv = self.advantage_fn(rewards).reshape(-1)              # [B·G]
        t2 = time.perf_counter()
        stats = self._train_groups(ro, adv)
        t3 = time.perf_counter()

        mask = ro.mask.float()
        k3 = kl_k3(ro.logp, ro.ref_logp) * mask
        lengths = ro.mask.sum(1).float()
        metrics = {
            "reward_mean": float(ro.raw_scores.mean()),
            "reward_std": float(ro.raw_scores.std(unbiased=False)),
            "reward_std_within_group": float(group_reward_std(rewards)),
            "zero_signal_fraction": float(zero_signal_fraction(rewards)),
            **{f"reward_{n}": float(v.mean()) for n, v in parts.items()},
            "advantage_abs_mean": float(adv.abs().mean()),
            "kl": float(k3.sum(1).mean()),
            "kl_per_token": float(masked_mean(k3, mask)),
            "response_length": float(lengths.mean()),
            "eos_fraction": float(ro.has_eos.float().mean()),
            "time_generate": t1 - t0,
            "time_score": t2 - t1,
            "time_train": t3 - t2,
            "time_step": t3 - t0,
            **stats,
            **self.rollout_extras(ro),
        }
        rows = []
        if cfg.sample_every and step % cfg.sample_every == 0:
            for i in range(min(cfg.sample_groups, rewards.shape[0]) * G):
                rows.append({"prompt": ro.prompts[i], "response": ro.texts[i],
                             "reward": float(ro.raw_scores[i]), "kl": float(k3[i].sum()),
                             "group": i // G, "advantage": float(adv[i]),
                             "rewards": {n: float(v[i]) for n, v in parts.items()},
                             "length": int(lengths[i]), "eos": bool(ro.has_eos[i]),
                             **self.row_extras(ro, i)})
        return metrics, rows

    def _train_groups(self, ro: Rollout, adv: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        N = ro.response.shape[0]
        mb_size = N // cfg.minibatches
        # Dr. GRPO: a constant denominator (answers × max new tokens), not the token count
        per_answer = float(cfg.max_new_tokens) if cfg.advantage == "dr_grpo" else None
        acc = {k: [] for k in ("loss", "policy_loss", "kl_loss", "clipfrac", "entropy",
                               "grad_norm")}
        self.policy.set_adapter(self.POLICY)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(N)
            for start in range(0, N, mb_size):
                idx = order[start:start + mb_size].to(self.device)
                q, qm, r, m, sl = _trim(ro.query[idx], ro.query_mask[idx], ro.response[idx],
                                        ro.mask[idx])
                m_f = m.float()
                old_logp, ref_logp, a = ro.logp[idx][:, sl], ro.ref_logp[idx][:, sl], adv[idx]
                denom = None if per_answer is None else per_answer * len(idx)

                def loss_of(lp):
                    return grpo_loss(lp, old_logp, ref_logp, a, m_f, cfg.cliprange, cfg.beta,
                                     denom)[0]

                self.optimizer.zero_grad(set_to_none=True)
                # a sum over tokens: backpropagated row by row (one row's activations)
                logp, ent = self.forward_backward(q, qm, r, m, loss_of, old_logp)
                with torch.no_grad():
                    loss, pg, kl = grpo_loss(logp, old_logp, ref_logp, a, m_f, cfg.cliprange,
                                             cfg.beta, denom)
                norm = self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    acc["loss"].append(float(loss))
                    acc["policy_loss"].append(float(pg))
                    acc["kl_loss"].append(float(kl))
                    acc["clipfrac"].append(float(clip_fraction(
                        logp, old_logp, a[:, None].expand_as(logp), cfg.cliprange, m_f)))
                    acc["entropy"].append(float(masked_mean(ent, m_f)))
                    acc["grad_norm"].append(float(norm))
        return {k: sum(v) / len(v) for k, v in acc.items()}

    # -- saving ---------------------------------------------------------------------
    def save_checkpoint(self, run_dir: Path, step: int, keep: int = 1) -> None:
        self.policy.set_adapter(self.POLICY)
        train_utils.save_checkpoint(run_dir, step, self.policy, self.optimizer, keep=keep,
                                    accelerator=self.accelerator)

    def load_checkpoint(self, run_dir: Path) -> int:
        """Restore the latest complete checkpoint; returns its step (0 if none)."""
        for _, folder in reversed(train_utils.list_checkpoints(run_dir)):
            self.policy.set_adapter(self.POLICY)
            state = train_utils.load_checkpoint(folder, self.policy, self.optimizer)
            return int(state["step"])
        return 0

    def save_final(self, run_id: int) -> Path:
        """The policy adapter flat at adapter_dir(run_id) (standard PEFT, on the base)."""
        folder = adapter_dir(run_id)
        if self.accelerator.is_main_process:
            self.policy.set_adapter(self.POLICY)
            train_utils.save_adapter(self.policy, folder, adapter_name=self.POLICY)
        return folder


def reward_trend(store, run_id: int) -> tuple[float | None, float | None]:
    """(slope, SE) of the run's stored per-step reward mean over the step
    (objectives.trend_slope): every step, those of a resumed run's earlier life too."""
    rows = store.get_metrics(run_id, ["reward_mean"])
    return trend_slope([float(r["step"]) for r in rows], [float(r["value"]) for r in rows])


def train_grpo(cfg: GRPOConfig, ctx) -> dict:
    """The GRPO stage: `fn(config, ctx) -> summary` (see engine.runtime.jobs)."""
    trainer = GRPOTrainer(cfg, ctx.store, log=ctx.log)
    ctx.is_main_process = trainer.accelerator.is_main_process
    ctx.log(f"{cfg.advantage.upper()} on {trainer.base_spec} · G = {cfg.group_size} · "
            f"reference: {'SFT run #' + str(cfg.sft_run) if cfg.sft_run is not None else 'base'}"
            f" · reward: {trainer.reward_label} · {len(trainer.prompts)} prompts from "
            f"{cfg.dataset!r} · device {trainer.device}")
    first, last, times = run_steps(trainer, cfg, ctx, "reward_mean", "reward",
                                   finite=("loss", "policy_loss", "kl", "reward_mean", "entropy"))
    ctx.progress(cfg.max_steps, cfg.max_steps, "saving the adapter")
    ctx.artifact("adapter", trainer.save_final(ctx.run_id))
    slope, se = reward_trend(ctx.store, ctx.run_id)
    return {
        "first_reward": first,
        "last_reward": last.get("reward_mean"),
        # the OLS slope of the per-step reward mean over the steps, with its SE: the reward
        # rose beyond its noise when the slope exceeds 2 SE (not first vs last step)
        "reward_trend": slope,
        "reward_trend_se": se,
        "reward_trend_verdict": trend_verdict(slope, se),
        "final_kl": last.get("kl"),
        "zero_signal_fraction": last.get("zero_signal_fraction"),
        "seconds_per_step": (sum(times) / len(times)) if times else None,
        "steps": cfg.max_steps,
        "advantage": cfg.advantage,
        "reward": trainer.reward_label,
        "gold": trainer.gold_label,
        "last_gold": last.get("gold_score"),
        **heldout.summary(ctx.store, ctx.run_id),   # the held-out score beyond its noise?
    }

