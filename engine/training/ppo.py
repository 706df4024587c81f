"""PPO, the RLHF stage: a policy with a KL penalty to its SFT reference, GAE, a value head.

One base model in memory (peft multi-adapter):
- π_θ     = base + trainable LoRA adapter "policy" (initialised from the SFT run's adapter
            when one is given, so the result is a standalone adapter on the base);
- π_ref   = the same weights with the frozen adapter "ref" (the SFT adapter loaded a second
            time), or with adapters disabled when there is no SFT run. Not a second copy;
- V_φ     = a zero-initialised Linear on the policy's last hidden states;
- reward  = a finished reward-model run, or a built-in programmatic rule
            (engine.training.rewards_builtin).

Each step: sample B responses (KV cache, left-padded prompts, stop at EOS) and keep the
sampling pass's own log π_θ and V on the sampled tokens; score them and compute log π_ref
(padding-free passes, engine.inference.packing); build per-token rewards (−β·KL on every token,
the score on the last), advantages by GAE, then `ppo_epochs` passes over `minibatches`
minibatches of the clipped PPO objective.
Details follow "The N Implementation Details of RLHF with PPO" (Huang et al., 2023).

The equations are in engine.objectives, one function each with its formula (and its LaTeX).
Tensors are [batch, response tokens]; `mask` is 1 on response tokens (EOS included)
and 0 on the padding after them.
"""
from __future__ import annotations

import inspect
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from engine.training import heldout, rewards_builtin, train_utils
from engine.inference.chat import collate_prompts, encode_prompt
from engine.inference.generate import DECODE_CACHES, generation_cache_options, sample_groups
from engine.errors import NonFiniteError
from engine.inference.models import add_lora, adapter_dir, load_adapter
from engine.objectives import (adaptive_kl_update, approx_kl, clip_fraction,
                               clipped_policy_loss, clipped_value_loss, entropy_from_logits,
                               explained_variance, gae_advantages, kl_k1, logprobs_from_logits,
                               masked_mean, masked_var, per_token_rewards, ppo_ratio,
                               sequence_kl, value_clip_fraction, whiten)
from engine.inference.packing import DEFAULT_ROW_TOKENS, packed_outputs, supports_packing, unpad
from engine.inference.logprobs import (GRAD_ROW_TOKENS, answer_rows, backward_by_rows,
                                       gather_rows)
from engine.schema import (ADVANCED, ConfigError, LoraSettings, SamplingSettings, TrainConfig,
                           like, setting)
from engine.training.diversity import diversity
from engine.training.heldout import HeldoutCheck
from engine.training.rl_prompts import PROMPT_LANGUAGES, load_prompts
from engine.training.rl_rewards import RewardSources, check_reward_runs, score_rollout

# Fixed bin edges of the ratio histogram logged each step as ratio_hist_00 .. _NN
# (values outside [0.5, 1.5] fall into the end bins); the page draws them.
RATIO_HIST_EDGES = [round(0.5 + 0.05 * i, 2) for i in range(21)]
# The page warns when these run away.
KL_WARN = 10.0          # nats per response
CLIPFRAC_WARN = 0.3     # fraction of tokens where the clip binds
DEFAULT_PROMPT_DATASET = "sample-preferences"
EOS_WARN = 0.5          # the pages warn when fewer answers than this end with EOS
REWARD_AGGREGATES = ("mean", "conservative")


# ======================================================================================
# The KL coefficient and the rollout's bookkeeping (the equations: engine.objectives)
# ======================================================================================
class FixedKLController:
    """β_{k+1} = β_k: a fixed KL coefficient."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Adaptive KL coefficient (Ziegler et al., 2019): β follows `adaptive_kl_update` with
    the target KL and the horizon H (in responses)."""

    def __init__(self, beta: float, target: float, horizon: int):
        super().__init__(beta)
        self.target, self.horizon = float(target), max(1, int(horizon))

    def update(self, current_kl: float, n_steps: int) -> float:
        self.value = adaptive_kl_update(self.value, current_kl, self.target, n_steps,
                                        self.horizon)
        return self.value


def ratio_histogram(ratios: torch.Tensor, edges: list[float] = RATIO_HIST_EDGES) -> list[int]:
    """Counts of ratios per bin [e_k, e_{k+1}); values outside go to the end bins."""
    lo, hi = edges[0], edges[-1]
    x = ratios.detach().float().clamp(lo, hi - 1e-6).cpu()
    counts = torch.histc(x, bins=len(edges) - 1, min=lo, max=hi)
    return [int(c) for c in counts.tolist()]


def truncate_after_eos(response: torch.Tensor, eos_id: int, pad_id: int
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep each response up to and including its first EOS; pad the rest.

    Returns (tokens, mask, has_eos)."""
    is_eos = response == eos_id
    has_eos = is_eos.any(1)
    T = response.shape[1]
    first = torch.where(has_eos, is_eos.float().argmax(1), torch.full_like(has_eos, T - 1,
                                                                        dtype=torch.long))
    mask = (torch.arange(T, device=response.device)[None, :] <= first[:, None]).long()
    tokens = torch.where(mask.bool(), response, torch.full_like(response, pad_id))
    return tokens, mask, has_eos


# ======================================================================================
# The stage
# ======================================================================================
@dataclass
class RLSettings:
    """What PPO and GRPO share beyond the step loop (issue 16: the course's challenges).

    - the token limit: answers that never emit EOS lose `missing_eos_penalty`;
    - generalisation: every `heldout_every` steps `heldout_answers` answers to each of
      `heldout_prompts` held-out prompts (the dataset's eval split, none of them a training
      prompt) and to as many fixed training prompts, sampled the same way with one fixed
      seed and scored by the run's reward, each mean with its SE clustered by prompt;
    - over-optimisation: a gold reward (a built-in rule, or a reward-model run) scores the
      samples too, and is never optimised;
    - an uncertain reward: an ensemble of reward-model runs (`reward_runs`, one adapter
      each on one base) combined by their mean or by mean − λ·std (conservative_reward).
    """
    # the prompts the run trains and is evaluated on: every prompt of the dataset, or those
    # of one language (the other's left out: rewards_builtin.language_of, function words)
    prompt_language: str = setting("any", choices=PROMPT_LANGUAGES)
    missing_eos_penalty: float = setting(1.0, min=0.0, max=100.0, step=0.1, group=ADVANCED)
    heldout_every: int = setting(10, min=0, max=10_000_000, group=ADVANCED)
    heldout_prompts: int = setting(8, min=1, max=1024, group=ADVANCED)
    heldout_answers: int = setting(4, min=1, max=1024, group=ADVANCED)
    gold_reward: str = setting("", choices=("", *rewards_builtin.names()), group=ADVANCED)
    gold_params: dict = setting(factory=dict, widget="page")
    gold_reward_run: int | None = setting(None, widget="page")
    reward_runs: list = setting(factory=list, widget="page")
    reward_aggregate: str = setting("mean", choices=REWARD_AGGREGATES, group=ADVANCED)
    uncertainty_lambda: float = setting(1.0, min=0.0, max=100.0, step=0.1, group=ADVANCED)
    # the sampling loop's KV cache (engine.inference.generate.generation_cache_options)
    decode_cache: str = setting("dynamic", choices=DECODE_CACHES, group=ADVANCED)

    def check(self) -> None:
        super().check()  # type: ignore[misc] - the stage config's own rules (MRO)
        runs = list(self.reward_runs)
        if runs and getattr(self, "reward_run", None) is not None:
            raise ConfigError("reward_runs", "set reward_run (one reward model) or reward_runs "
                              "(an ensemble), not both")
        for rid in runs:
            if isinstance(rid, bool) or not isinstance(rid, int):
                raise ConfigError("reward_runs", f"{rid!r} is not a run id")
        if len(set(runs)) != len(runs):
            raise ConfigError("reward_runs", f"a run is listed twice: {runs}")
        if len(runs) == 1:
            raise ConfigError("reward_runs", "an ensemble needs at least two reward-model "
                              "runs (one run: use reward_run)")
        if self.reward_aggregate == "conservative" and not runs:
            raise ConfigError("reward_aggregate", "the conservative reward needs an ensemble "
                              "(reward_runs)")
        check_gold(self)


def check_gold(cfg) -> None:
    """The gold reward's settings: a rule (gold_reward, gold_params) or a reward-model run
    (gold_reward_run), not both; ConfigError naming the field."""
    if cfg.gold_reward and cfg.gold_reward_run is not None:
        raise ConfigError("gold_reward_run", "set gold_reward (a rule) or gold_reward_run "
                          "(a reward model), not both")
    if cfg.gold_params and not cfg.gold_reward:
        raise ConfigError("gold_params", "parameters for a gold rule, but gold_reward is "
                          "not set")
    if cfg.gold_reward:
        try:
            rewards_builtin.check_params(cfg.gold_reward, cfg.gold_params)
        except ValueError as exc:
            raise ConfigError("gold_params", str(exc)) from exc


@dataclass
class PPOConfig(RLSettings, SamplingSettings, TrainConfig):
    """Settings of a PPO run (see engine.schema for the shared ones)."""
    dataset: str = like("dataset", DEFAULT_PROMPT_DATASET)  # prompts of an SFT/preference set
    max_steps: int = like("max_steps", 16, min=1)
    save_every: int = like("save_every", 8)
    keep_checkpoints: int = like("keep_checkpoints", 1)
    lora: LoraSettings = like("lora", factory=lambda: LoraSettings(dropout=0.0))
    # top_p < 1 samples from a truncated distribution the log-probs do not see; keep 1.0
    max_new_tokens: int = like("max_new_tokens", 32)
    sft_run: int | None = setting(None, widget="page")     # None: from the base (ref = base)
    reward_run: int | None = setting(None, widget="page")  # a reward-model run, or None:
    builtin_reward: str = setting(rewards_builtin.DEFAULT_REWARD, widget="page",
                                  choices=tuple(rewards_builtin.names()))  # ... a rule
    reward_params: dict = setting(factory=dict, widget="page")
    max_prompt_length: int = setting(128, min=8, max=65_536, step=32, group=ADVANCED)
    ppo_epochs: int = setting(1, min=1, max=64, group=ADVANCED)
    minibatches: int = setting(2, min=1, max=1024, group=ADVANCED)
    gamma: float = setting(1.0, min=0.0, max=1.0, step=0.01, group=ADVANCED)
    lam: float = setting(0.95, min=0.0, max=1.0, step=0.01, group=ADVANCED)
    cliprange: float = setting(0.2, min=0.001, max=1e6, step=0.05)   # ε (1e6: no clip)
    cliprange_value: float = setting(0.2, min=0.001, max=1e6, step=0.05, group=ADVANCED)
    vf_coef: float = setting(0.1, min=0.0, max=100.0, step=0.05, group=ADVANCED)
    beta: float = setting(0.05, min=0.0, max=100.0, step=0.01, format="%.3f")  # initial β
    adaptive_kl: bool = setting(False, group=ADVANCED)
    target_kl: float = setting(4.0, min=0.001, max=1000.0, step=0.5, group=ADVANCED)
    horizon: int = setting(200, min=1, max=100_000_000, group=ADVANCED)  # responses
    whiten_rewards: bool = setting(False, group=ADVANCED)
    sample_every: int = setting(1, min=0, max=10_000_000, group=ADVANCED)
    samples_per_step: int = setting(4, min=0, max=1024, group=ADVANCED)

    def check(self) -> None:
        super().check()
        if self.batch_size % self.minibatches:
            raise ConfigError("minibatches", f"batch_size ({self.batch_size}) must be a "
                              f"multiple of minibatches ({self.minibatches})")
        if self.reward_run is None:
            try:
                rewards_builtin.check_params(self.builtin_reward, self.reward_params)
            except ValueError as exc:
                raise ConfigError("reward_params", str(exc)) from exc


@dataclass
class Rollout:
    prompts: list
    query: torch.Tensor          # [B, P] left-padded
    query_mask: torch.Tensor
    response: torch.Tensor       # [B, T] right-padded after EOS
    mask: torch.Tensor           # [B, T]
    has_eos: torch.Tensor        # [B]
    texts: list[str]
    logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    raw_scores: torch.Tensor | None = None
    gold: torch.Tensor | None = None          # the gold reward's scores, when there is one
    reward_std: torch.Tensor | None = None    # the ensemble's disagreement σ_k per answer


class ValueHead(nn.Module):
    """V_φ(s_t) = w·h_t + b on the policy's last hidden state, zero-initialised (V ≡ 0 at
    the start, so the first advantages are the rewards-to-go)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


class PPOTrainer(RewardSources, HeldoutCheck):
    """Holds the model (policy/ref adapters), the value head, the reward and the optimizer;
    `step(k)` does one PPO iteration and returns its metrics and sample rows."""

    POLICY, REF, REWARD = "policy", "ref", "reward"

    def __init__(self, cfg: PPOConfig, store, log=lambda msg: None, accelerator=None,
                 stage: tuple | None = None):
        """`stage`: (name, settings) the memory estimate reads (GRPO passes its own)."""
        cfg.validate()
        self.cfg, self.store, self.log = cfg, store, log
        check_reward_runs(store, cfg)  # before any model loads
        train_utils.seed_everything(cfg.seed)
        self.accelerator = accelerator or train_utils.make_accelerator()
        self.device = self.accelerator.device
        name, settings = stage or ("ppo", cfg)
        loaded, self.memory = train_utils.load_training_base(name, settings, store,
                                                             self.device, log)
        self.base_spec = cfg.model
        self.tokenizer = loaded.tokenizer
        model = loaded.model
        if cfg.sft_run is not None:
            path = train_utils.sft_adapter_path(store, cfg.sft_run, cfg.model)
            # the same adapter twice: a frozen reference and the trainable policy
            model = load_adapter(model, path, adapter_name=self.REF, is_trainable=False)
            model.load_adapter(str(path), adapter_name=self.POLICY, is_trainable=True)
            self.has_ref_adapter = True
        else:
            model = add_lora(model, cfg.lora, adapter_name=self.POLICY)
            self.has_ref_adapter = False
        self.scorer, self.reward_label, model = self._make_reward(cfg, store, model)
        self.gold, self.gold_label, model = self._make_gold(cfg, store, model)
        model.set_adapter(self.POLICY)
        # no dropout anywhere: log-probs at sampling, scoring and training must agree
        model.eval()
        hidden = model.get_base_model().config.hidden_size
        self.value_head = ValueHead(hidden).to(self.device)
        self.prompts = load_prompts(store, cfg.dataset, language=cfg.prompt_language)
        marker = f".{self.POLICY}."
        params = [p for n, p in model.named_parameters() if p.requires_grad and marker in n] \
            + list(self.value_head.parameters())
        optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, eps=1e-5)
        self.model, self.value_head, self.optimizer = self.accelerator.prepare(
            model, self.value_head, optimizer)
        self.params = params
        self.kl_ctl = (AdaptiveKLController(cfg.beta, cfg.target_kl, cfg.horizon)
                       if cfg.adaptive_kl else FixedKLController(cfg.beta))
        self._keep_arg = "logits_to_keep" in inspect.signature(
            self.policy.get_base_model().forward).parameters
        self.row_tokens = DEFAULT_ROW_TOKENS
        self.packing = supports_packing(self.policy)
        if not self.packing:
            log("this model does not support packed sequences: PPO runs padded passes")

    # -- parts ---------------------------------------------------------------------
    @property
    def policy(self):
        """The PeftModel itself (unwrapped from any distributed wrapper)."""
        return self.accelerator.unwrap_model(self.model)


    @contextmanager
    def reference(self):
        """π_ref: the frozen "ref" adapter, or the base with adapters disabled."""
        policy = self.policy
        if self.has_ref_adapter:
            policy.set_adapter(self.REF, inference_mode=True)
            try:
                yield
            finally:
                policy.set_adapter(self.POLICY)
        else:
            with policy.disable_adapter():
                yield

    def forward(self, query, query_mask, response, mask, values: bool = False,
                entropy: bool = False):
        """Log-probs (at the sampling temperature) of the response tokens, and optionally
        V(s_t) and the entropy, from one forward pass over prompt + response; [B, T] each,
        0 where the response is padding. Padding-free (engine.inference.packing) where the model
        supports it, else one padded pass."""
        # several forward calls before one backward: fine on one process; under DDP
        # (several processes) only the no-grad passes pack
        if self.packing and (self.accelerator.num_processes == 1 or not torch.is_grad_enabled()):
            return self._forward_packed(query, query_mask, response, mask, values, entropy)
        P, T = query.shape[1], response.shape[1]
        input_ids = torch.cat([query, response], 1)
        attn = torch.cat([query_mask, mask], 1)
        position_ids = (attn.cumsum(1) - 1).clamp(min=0)  # as generate() numbers them
        kwargs: dict[str, Any] = dict(input_ids=input_ids, attention_mask=attn,
                                      position_ids=position_ids, use_cache=False,
                                      output_hidden_states=values)
        if self._keep_arg:
            kwargs["logits_to_keep"] = T + 1
        out = self.model(**kwargs)
        logits = out.logits[:, -(T + 1):-1]  # position P−1+t predicts response token t
        logp = logprobs_from_logits(logits, response, self.cfg.temperature) * mask
        v = self.value_head(out.hidden_states[-1][:, P - 1:P + T - 1]) * mask if values \
            else None
        ent = None
        if entropy:
            with torch.no_grad():
                ent = entropy_from_logits(logits.detach(), self.cfg.temperature) * mask
        return logp, v, ent

    def _forward_packed(self, query, query_mask, response, mask, values: bool,
                        entropy: bool):
        """`forward` without padding: each prompt + response laid end to end in short rows
        (engine.inference.packing); the LM head only on the positions that predict response tokens
        (position P_b − 1 + t of sequence b predicts its token t)."""
        B, T = response.shape
        rows = answer_rows(self.policy, query, query_mask, response, mask,
                           self.cfg.temperature, self.row_tokens, entropy=entropy, hidden=values)
        if rows is not None:  # answers to one prompt share a row; chunked LM head
            return gather_rows(rows, mask, self.value_head if values else None)
        prompts, answers = unpad(query, query_mask), unpad(response, mask)
        keep = [torch.arange(len(q) - 1, len(q) - 1 + len(a), device=self.device)
                for q, a in zip(prompts, answers)]
        lps, vs, ents = [], [], []
        for members, logits, hidden in packed_outputs(
                self.model, [torch.cat([q, a]) for q, a in zip(prompts, answers)], keep,
                self.row_tokens, hidden=values, logits_to_keep=self._keep_arg):
            targets = torch.cat([answers[b] for b in members])
            lps.append(logprobs_from_logits(logits, targets, self.cfg.temperature))
            if values:
                vs.append(self.value_head(hidden))
            if entropy:
                with torch.no_grad():
                    ents.append(entropy_from_logits(logits.detach(), self.cfg.temperature))
        lengths = torch.tensor([len(a) for a in answers], device=self.device)
        where = (torch.repeat_interleave(torch.arange(B, device=self.device), lengths),
                 torch.cat([torch.arange(int(n), device=self.device) for n in lengths]))

        def scatter(parts):
            return torch.zeros(B, T, device=self.device).index_put(where, torch.cat(parts))

        return (scatter(lps), scatter(vs) if values else None,
                scatter(ents) if entropy else None)

    def forward_backward(self, query, query_mask, response, mask, loss_fn, filler):
        """Backpropagate loss_fn(log-probs [B, T]), a sum over tokens divided by a constant,
        and return (the log-probs, the entropies), detached. Row by row where the lean pass
        applies (engine.inference.logprobs.backward_by_rows: one row's activations at a time,
        the same gradient), else one forward and one backward."""
        rows = None
        if self.packing and self.accelerator.num_processes == 1:
            rows = answer_rows(self.policy, query, query_mask, response, mask,
                               self.cfg.temperature, GRAD_ROW_TOKENS, entropy=True)
        if rows is None:
            logp, _, ent = self.forward(query, query_mask, response, mask, entropy=True)
            self.accelerator.backward(loss_fn(logp))
            return logp.detach(), ent
        ent = torch.zeros_like(filler)

        def values():
            for members, logp, e, _ in rows:
                ent[members] = e
                yield members, logp

        logp = backward_by_rows(values(), filler, loss_fn, self.accelerator.backward)
        return logp, ent

    @torch.no_grad()
    def ref_logprobs(self, query, query_mask, response, mask) -> torch.Tensor:
        with self.reference():
            return self.forward(query, query_mask, response, mask)[0]

    @torch.no_grad()
    def policy_logprobs(self, query, query_mask, response, mask) -> torch.Tensor:
        return self.forward(query, query_mask, response, mask)[0]

    def encode(self, prompts: list) -> tuple[torch.Tensor, torch.Tensor]:
        ids = [encode_prompt(self.tokenizer, p, self.cfg.max_prompt_length) for p in prompts]
        batch = collate_prompts(ids, self.tokenizer.pad_token_id)
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    @torch.no_grad()
    def generate(self, prompts: list) -> Rollout:
        """Sample one response per prompt from π_θ (KV cache, stop at EOS).

        The sampling pass already computes, at every response position t, the policy's
        logits and last hidden state h_t: they give the old log-probs log π_θ_old(y_t | ·)
        and the values V(s_t) of the rollout for free, without a second forward pass over
        prompt + response, on every device and dtype (issue 28). The log-probs are those of
        the distribution each token was drawn from (its logits in float32, before top-p);
        V is the float32 value head on h_t. In fp32 they agree with a full pass to ~1e-5; in
        bf16 the cached pass differs from a full one by bf16 rounding (up to ~0.3 nats on
        single tokens of SmolLM2-135M, measured before issue 28): the first update's ratios
        then scatter around 1 by that much, as with any sampler whose kernels differ from
        the trainer's."""
        from transformers import GenerationConfig  # here: 0.4 s the pages need not pay

        cfg, tok = self.cfg, self.tokenizer
        query, query_mask = self.encode(prompts)
        gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                               top_k=0, max_new_tokens=cfg.max_new_tokens, use_cache=True,
                               pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.bos_token_id, return_dict_in_generate=True,
                               output_logits=True, output_hidden_states=True,
                               **generation_cache_options(cfg.decode_cache, self.device))
        self.policy.set_adapter(self.POLICY)
        out = self.policy.generate(input_ids=query, attention_mask=query_mask,
                                   generation_config=gen)
        response, mask, has_eos = truncate_after_eos(out.sequences[:, query.shape[1]:],
                                                     tok.eos_token_id, tok.pad_token_id)
        texts = [tok.decode(r[m.bool()], skip_special_tokens=True).strip()
                 for r, m in zip(response, mask)]
        ro = Rollout(prompts, query, query_mask, response, mask, has_eos, texts)
        logits = torch.stack(out.logits, 1).float()             # [B, T, V]: step t's
        hidden = torch.stack([h[-1][:, -1] for h in out.hidden_states], 1)  # [B, T, H]
        ro.logp = logprobs_from_logits(logits, response, cfg.temperature) * mask
        ro.values = self.value_head(hidden) * mask
        return ro

    @torch.no_grad()
    def score(self, ro: Rollout) -> Rollout:
        """Reference log-probs and the reward (the old log-probs and values come with the
        rollout, see `generate`; computed here for a rollout built without them)."""
        cfg = self.cfg
        if ro.logp is None or ro.values is None:
            ro.logp, ro.values, _ = self.forward(ro.query, ro.query_mask, ro.response,
                                                 ro.mask, values=True)
        ro.ref_logp = self.ref_logprobs(ro.query, ro.query_mask, ro.response, ro.mask)
        raw = torch.tensor(score_rollout(self.scorer, ro), dtype=torch.float32,
                           device=self.device)
        if not torch.isfinite(raw).all():
            raise NonFiniteError(f"the reward ({self.reward_label}) returned a non-finite score")
        ro.raw_scores = raw
        ro.reward_std = getattr(self.scorer, "last_std", None)
        ro.scores = raw - (~ro.has_eos).float() * float(cfg.missing_eos_penalty)
        return ro

    def prompts_for_step(self, step: int) -> list:
        """This process's prompts of a step: a deterministic order over epochs (the same
        after a resume); under several processes each takes its own slice."""
        B, acc = self.cfg.batch_size, self.accelerator
        start = ((step - 1) * acc.num_processes + acc.process_index) * B
        order = train_utils.stream_indices(len(self.prompts), self.cfg.seed, start, B)
        return [self.prompts[i] for i in order]

    # -- one PPO iteration ------------------------------------------------------------
    def step(self, step: int) -> tuple[dict[str, float], list[dict]]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed * 100_003 + step)  # sampling reproducible across resume
        t0 = time.perf_counter()
        ro = self.generate(self.prompts_for_step(step))
        t1 = time.perf_counter()
        self.score(ro)
        mask = ro.mask.float()
        beta = self.kl_ctl.value
        rewards, non_score = per_token_rewards(ro.scores, ro.logp, ro.ref_logp, mask, beta)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, mask, shift_mean=False)
        adv_raw, returns = gae_advantages(rewards, ro.values, mask, cfg.gamma, cfg.lam)
        adv = whiten(adv_raw, mask)
        t2 = time.perf_counter()
        stats = self._train(ro, adv, returns)
        t3 = time.perf_counter()

        seq_kl = sequence_kl(ro.logp, ro.ref_logp, mask)
        procs = self.accelerator.num_processes
        # β follows the KL of the whole global batch, the same on every process
        mean_kl = float(self.accelerator.reduce(seq_kl.mean().reshape(1), "mean")) \
            if procs > 1 else float(seq_kl.mean())
        self.kl_ctl.update(mean_kl, cfg.batch_size * procs)
        lengths = ro.mask.sum(1).float()
        non_score_seq = non_score.sum(1)
        metrics = {
            "score_mean": float(ro.raw_scores.mean()),
            "score_std": float(ro.raw_scores.std(unbiased=False)),
            "non_score_reward": float(non_score_seq.mean()),
            "rlhf_reward": float((ro.scores + non_score_seq).mean()),
            "kl": mean_kl,
            "kl_per_token": float(masked_mean(kl_k1(ro.logp, ro.ref_logp), mask)),
            "beta": beta,
            "response_length": float(lengths.mean()),
            "eos_fraction": float(ro.has_eos.float().mean()),
            "value_mean": float(masked_mean(ro.values, mask)),
            "return_mean": float(masked_mean(returns, mask)),
            "advantage_std_raw": float(masked_var(adv_raw, mask).sqrt()),
            "explained_variance": float(explained_variance(ro.values, returns, mask)),
            "time_generate": t1 - t0,
            "time_score": t2 - t1,
            "time_train": t3 - t2,
            "time_step": t3 - t0,
            **stats,
            **self.rollout_extras(ro),
        }
        if procs > 1:  # all processes: means (ratio_min/max too), histogram summed
            names = list(metrics)
            mean = self.accelerator.reduce(torch.tensor([float(metrics[k]) for k in names],
                                                        device=self.device), "mean").tolist()
            metrics = {k: v * procs if k.startswith("ratio_hist_") else v
                       for k, v in zip(names, mean)}
        rows = []
        if cfg.sample_every and step % cfg.sample_every == 0:
            for i in range(min(cfg.samples_per_step, len(ro.prompts))):
                rows.append({"prompt": ro.prompts[i], "response": ro.texts[i],
                             "reward": float(ro.raw_scores[i]), "kl": float(seq_kl[i]),
                             "length": int(lengths[i]), "eos": bool(ro.has_eos[i]),
                             "score_with_penalty": float(ro.scores[i]),
                             **self.row_extras(ro, i)})
        return metrics, rows

    # -- what PPO and GRPO log beside their update (issue 16) ---------------------------
    def rollout_extras(self, ro: Rollout) -> dict[str, float]:
        """A step's answers beyond the reward: their diversity (distinct-1/2 and
        self-similarity), the gold score (sets `ro.gold`) and the ensemble's disagreement."""
        out = diversity(ro.texts)
        if self.gold is not None:
            ro.gold = self.gold_scores(ro.prompts, ro.texts)
            out["gold_score"] = float(ro.gold.mean())
        if ro.reward_std is not None:
            out["reward_ensemble_std"] = float(ro.reward_std.mean())
        return out

    @staticmethod
    def row_extras(ro: Rollout, i: int) -> dict[str, float]:
        """A sample row's gold score and ensemble disagreement, when the run has them."""
        out = {}
        if ro.gold is not None:
            out["gold"] = float(ro.gold[i])
        if ro.reward_std is not None:
            out["reward_std"] = float(ro.reward_std[i])
        return out


    @torch.no_grad()
    def sample_answers(self, prompts: list, n: int) -> Rollout:
        """n answers to each prompt from π_θ in one sampling loop with the run's sampling
        settings (rows b·n .. b·n+n−1 answer prompt b; each prompt computed once, its KV
        cache repeated n times: engine.inference.generate.sample_groups), truncated after
        EOS; `ro.logp` the sampling pass's log-probs (see `generate`)."""
        cfg, tok = self.cfg, self.tokenizer
        query, query_mask = self.encode(prompts)
        self.policy.set_adapter(self.POLICY)
        tokens, logp = sample_groups(self.policy, query, query_mask, n,
                                     max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, top_p=cfg.top_p,
                                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                     decode_cache=cfg.decode_cache)
        query, query_mask = query.repeat_interleave(n, 0), query_mask.repeat_interleave(n, 0)
        response, mask, has_eos = truncate_after_eos(tokens, tok.eos_token_id, tok.pad_token_id)
        texts = [tok.decode(r[m.bool()], skip_special_tokens=True).strip()
                 for r, m in zip(response, mask)]
        ro = Rollout([p for p in prompts for _ in range(n)], query, query_mask, response,
                     mask, has_eos, texts)
        ro.logp = logp * mask
        return ro


    def _train(self, ro: Rollout, adv: torch.Tensor, returns: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        B = ro.response.shape[0]
        mb_size = B // cfg.minibatches
        acc = {k: [] for k in ("policy_loss", "value_loss", "loss", "clipfrac", "approx_kl",
                               "entropy", "grad_norm", "value_clipfrac")}
        ratios = []
        self.policy.set_adapter(self.POLICY)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(B)
            for start in range(0, B, mb_size):
                idx = order[start:start + mb_size].to(self.device)
                q, qm, r, m, sl = _trim(ro.query[idx], ro.query_mask[idx], ro.response[idx],
                                        ro.mask[idx])
                m_f = m.float()
                old_logp, old_values = ro.logp[idx][:, sl], ro.values[idx][:, sl]
                a, ret = adv[idx][:, sl], returns[idx][:, sl]
                logp, values, ent = self.forward(q, qm, r, m, values=True, entropy=True)
                pg_loss = clipped_policy_loss(logp, old_logp, a, cfg.cliprange, m_f)
                vf_loss = clipped_value_loss(values, old_values, ret, cfg.cliprange_value, m_f)
                loss = pg_loss + cfg.vf_coef * vf_loss
                self.optimizer.zero_grad(set_to_none=True)
                self.accelerator.backward(loss)
                norm = self.accelerator.clip_grad_norm_(self.params, cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    ratio = ppo_ratio(logp, old_logp)
                    ratios.append(ratio[m.bool()].detach().float().cpu())
                    acc["policy_loss"].append(float(pg_loss))
                    acc["value_loss"].append(float(vf_loss))
                    acc["loss"].append(float(loss))
                    acc["clipfrac"].append(float(clip_fraction(logp, old_logp, a,
                                                               cfg.cliprange, m_f)))
                    acc["approx_kl"].append(float(approx_kl(logp, old_logp, m_f)))
                    acc["entropy"].append(float(masked_mean(ent, m_f)))
                    acc["grad_norm"].append(float(norm))
                    acc["value_clipfrac"].append(float(value_clip_fraction(
                        values, old_values, cfg.cliprange_value, m_f)))
        stats = {k: sum(v) / len(v) for k, v in acc.items()}
        allr = torch.cat(ratios)
        stats.update(ratio_mean=float(allr.mean()), ratio_min=float(allr.min()),
                     ratio_max=float(allr.max()))
        for k, c in enumerate(ratio_histogram(allr)):
            stats[f"ratio_hist_{k:02d}"] = float(c)
        return stats

    # -- saving ---------------------------------------------------------------------
    def save_checkpoint(self, run_dir: Path, step: int, keep: int = 1) -> None:
        self.policy.set_adapter(self.POLICY)
        train_utils.save_checkpoint(run_dir, step, self.policy, self.optimizer,
                                    extra={"kl_ctl": self.kl_ctl.state_dict()}, keep=keep,
                                    accelerator=self.accelerator,
                                    modules={"value_head": self.value_head})

    def load_checkpoint(self, run_dir: Path) -> int:
        """Restore the latest complete checkpoint; returns its step (0 if none)."""
        for _, folder in reversed(train_utils.list_checkpoints(run_dir)):
            train_utils.refuse_legacy(folder)  # an old pickle checkpoint fails the resume
            if not train_utils.has_state(folder, "value_head"):
                continue
            self.policy.set_adapter(self.POLICY)
            state = train_utils.load_checkpoint(folder, self.policy, self.optimizer,
                                                modules={"value_head": self.value_head})
            self.kl_ctl.load_state_dict(state["kl_ctl"])
            return int(state["step"])
        return 0

    def save_final(self, run_id: int) -> tuple[Path, Path]:
        """The policy adapter flat at adapter_dir(run_id) (standard PEFT, on the base),
        and the value head beside it."""
        folder = adapter_dir(run_id)
        head_path = folder.parent / "value_head.safetensors"
        if self.accelerator.is_main_process:
            self.policy.set_adapter(self.POLICY)
            train_utils.save_adapter(self.policy, folder, adapter_name=self.POLICY)
            cfg_path = folder / "adapter_config.json"
            data = json.loads(cfg_path.read_text())
            data["inference_mode"] = True
            cfg_path.write_text(json.dumps(data, indent=2))
            sd = self.accelerator.unwrap_model(self.value_head).state_dict()
            save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(head_path))
        return folder, head_path


def _trim(query, query_mask, response, mask):
    """Drop the columns that are padding in every row of a minibatch (exact: positions are
    numbered from the attention mask). Returns the response column slice kept too."""
    keep_q = query_mask.any(0).nonzero()
    q0 = int(keep_q[0]) if len(keep_q) else 0
    t1 = int(mask.sum(1).max())
    sl = slice(0, t1)
    return query[:, q0:], query_mask[:, q0:], response[:, sl], mask[:, sl], sl


def run_steps(trainer, cfg, ctx, score: str, label: str,
              finite: tuple[str, ...] = ("kl", "score_mean", "entropy")
              ) -> tuple[float | None, dict[str, float], list[float]]:
    """The loop PPO and GRPO share: resume from the last complete checkpoint (the metrics
    of later steps are redone), then for each step `trainer.step(k)` (sample, score,
    update), a finiteness check of the `finite` metrics, metrics, samples and progress, and a checkpoint every
    `save_every` steps. Returns (the first step's `score`, the last step's metrics, the
    seconds of each step run now)."""
    start = 0
    if ctx.resume:
        start = trainer.load_checkpoint(ctx.run_dir)
        if start and ctx.is_main_process and hasattr(ctx.store, "delete_after_step"):
            ctx.store.delete_after_step(ctx.run_id, start)
        ctx.log(f"resumed from step {start}" if start else "no checkpoint: starting over")
    first = None
    if start:
        prev = ctx.store.get_metrics(ctx.run_id, [score])
        first = prev[0]["value"] if prev else None
    last: dict[str, float] = {}
    times: list[float] = []
    ctx.steps_begin(start)
    for step in range(start + 1, cfg.max_steps + 1):
        ctx.check_cancel()
        metrics, rows = trainer.step(step)
        evaluated = trainer.heldout_eval(step)
        if evaluated and getattr(ctx, "is_main_process", True):
            heldout.append_answers(ctx.run_dir, step, trainer.last_heldout)
        metrics.update(evaluated)
        _check_finite(step, metrics, finite)
        ctx.metrics(step, metrics)
        ctx.samples(step, rows)
        ctx.progress(step, cfg.max_steps, f"{label} {metrics[score]:.3f} · "
                                          f"KL {metrics['kl']:.3f}")
        first = metrics[score] if first is None else first
        last = metrics
        times.append(metrics["time_step"])
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.max_steps:
            trainer.save_checkpoint(ctx.run_dir, step, keep=cfg.keep_checkpoints)
    if not last:  # resumed after the last step
        last = ctx.store.last_metrics(ctx.run_id)
    return first, last, times


def train_ppo(cfg: PPOConfig, ctx) -> dict:
    """The PPO stage: `fn(config, ctx) -> summary` (see engine.runtime.jobs)."""
    trainer = PPOTrainer(cfg, ctx.store, log=ctx.log)
    ctx.is_main_process = trainer.accelerator.is_main_process
    ctx.log(f"PPO on {trainer.base_spec} · reference: "
            f"{'SFT run #' + str(cfg.sft_run) if cfg.sft_run is not None else 'base'} · "
            f"reward: {trainer.reward_label} · {len(trainer.prompts)} prompts from "
            f"{cfg.dataset!r} · device {trainer.device}")
    first_score, last, step_times = run_steps(trainer, cfg, ctx, "score_mean", "score")
    ctx.progress(cfg.max_steps, cfg.max_steps, "saving the adapter")
    folder, head = trainer.save_final(ctx.run_id)
    ctx.artifact("adapter", folder)
    ctx.artifact("value_head", head)
    return {
        "first_score": first_score,
        "last_score": last.get("score_mean"),
        "final_kl": last.get("kl"),
        "final_beta": last.get("beta"),
        "seconds_per_step": (sum(step_times) / len(step_times)) if step_times else None,
        "steps": cfg.max_steps,
        "reward": trainer.reward_label,
        "gold": trainer.gold_label,
        "last_gold": last.get("gold_score"),
        **heldout.summary(ctx.store, ctx.run_id),   # the held-out score beyond its noise?
    }


def _check_finite(step: int, metrics: dict[str, float],
                  names: tuple[str, ...] = ("kl", "score_mean", "entropy")) -> None:
    for name in names:
        value = metrics.get(name)
        if value is not None and not math.isfinite(value):
            raise NonFiniteError(f"step {step}: {name} is {value} (not finite); lower the "
                                 f"learning rate or raise β")
