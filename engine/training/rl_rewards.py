"""Where an RL run's rewards come from (PPO, GRPO): a built-in rule, a finished reward-model
run (attached to the policy's base as one more adapter, or its own copy on another base), an
ensemble of reward-model runs, and the gold reward that scores beside them, never optimised.

`RewardSources` is a part of PPOTrainer (engine.training.ppo): it builds the scorers from
the run's settings and scores answers with them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from engine.errors import NonFiniteError
from engine.inference.chat import completion_ids
from engine.inference.models import load_adapter
from engine.objectives import conservative_reward
from engine.schema import ConfigError
from engine.training import reward as reward_mod
from engine.training import rewards_builtin

if TYPE_CHECKING:
    from engine.training.ppo import PPOConfig


def run_base(run: dict) -> str:
    """The base model a stored run trained on."""
    return (run.get("config") or {}).get("model") or run.get("model") or "embedded"


def check_reward_runs(store, cfg) -> None:
    """The ensemble's runs exist, are reward models and share one base (`reward_runs` named
    by the ConfigError otherwise): checked from the store before any model loads."""
    from storage import NotFound

    bases = {}
    for rid in cfg.reward_runs:
        try:
            run = store.get_run(int(rid))
        except NotFound:
            raise ConfigError("reward_runs", f"run {rid} does not exist") from None
        if run["stage"] != "reward":
            raise ConfigError("reward_runs", f"run {rid} is a {run['stage']} run, not a "
                              f"reward model")
        bases[int(rid)] = run_base(run)
    if len(set(bases.values())) > 1:
        raise ConfigError("reward_runs", "the ensemble mixes base models ("
                          + ", ".join(f"#{r}: {b}" for r, b in bases.items())
                          + "); train every member on one base")


class EnsembleScorer:
    """K reward models as one reward: R̃ = r̄ − λ·σ_k(r) (objectives.conservative_reward;
    λ = 0: the plain mean). After each `score` call, `last_std` holds σ_k per answer."""

    def __init__(self, members: list, lam: float = 0.0):
        self.members, self.lam = members, float(lam)
        self.last_std: torch.Tensor | None = None

    def score(self, prompts: list, responses: list[str]) -> list[float]:
        return self._combine([list(m.score(prompts, responses)) for m in self.members])

    def score_rollout(self, ro) -> list[float]:
        return self._combine([list(score_rollout(m, ro)) for m in self.members])

    def _combine(self, scores: list[list[float]]) -> list[float]:
        r = torch.tensor(scores, dtype=torch.float32)              # [K, B]
        self.last_std = r.std(0, unbiased=False)
        return conservative_reward(r, self.lam).tolist()


def score_rollout(scorer, ro) -> list[float]:
    """A scorer's rewards of a rollout's answers: from their token ids where the scorer
    reads them (a reward model on the policy's base), else from the texts."""
    if hasattr(scorer, "score_rollout"):
        return scorer.score_rollout(ro)
    return scorer.score(ro.prompts, ro.texts)


def rollout_reward_ids(ro, eos_id: int, max_length: int) -> list[list[int]]:
    """Each sample's prompt + answer ids as a reward model reads them (chat.completion_ids,
    the layout `encode_completion` gives the texts): the prompt without its padding, the
    answer up to its EOS (EOS appended to an answer cut at the token limit)."""
    return [completion_ids(q[qm.bool()].tolist(), r[m.bool()].tolist(), eos_id,
                           max_length).input_ids
            for q, qm, r, m in zip(ro.query, ro.query_mask, ro.response, ro.mask)]


class RewardSources:
    """The reward, the gold reward and the reward-model scorers of a PPO/GRPO trainer (a
    part of engine.training.ppo.PPOTrainer, which sets cfg, device, tokenizer, REWARD)."""

    def _make_reward(self, cfg: PPOConfig, store, model):
        """The reward: a built-in rule, a finished reward-model run, or an ensemble of them
        (`reward_runs`: each its own adapter "reward_k" and head on the one base, combined
        by EnsembleScorer). Returns (scorer with .score(prompts, responses), label, model).
        """
        if cfg.reward_runs:
            members = []
            for k, rid in enumerate(cfg.reward_runs):
                scorer, _, model = self._reward_model(store, int(rid), model,
                                                      f"{self.REWARD}_{k}")
                members.append(scorer)
            agg = cfg.reward_aggregate
            label = (f"{'mean' if agg == 'mean' else f'mean − {cfg.uncertainty_lambda:g}·std'}"
                     f" of reward#{', #'.join(str(r) for r in cfg.reward_runs)}")
            lam = cfg.uncertainty_lambda if agg == "conservative" else 0.0
            return EnsembleScorer(members, lam), label, model
        if cfg.reward_run is None:
            scorer = rewards_builtin.BuiltinScorer(cfg.builtin_reward, cfg.reward_params)
            return scorer, scorer.label(), model
        return self._reward_model(store, int(cfg.reward_run), model, self.REWARD)

    def _make_gold(self, cfg: PPOConfig, store, model):
        """The gold reward, never optimised (a rule, or a reward-model run attached like the
        reward as the adapter "gold"); (None, None, model) without one."""
        if cfg.gold_reward:
            scorer = rewards_builtin.BuiltinScorer(cfg.gold_reward, cfg.gold_params)
            return scorer, scorer.label(), model
        if cfg.gold_reward_run is not None:
            return self._reward_model(store, int(cfg.gold_reward_run), model, "gold")
        return None, None, model

    def _reward_model(self, store, run_id: int, model, adapter: str):
        """A finished reward-model run as a scorer.

        A reward model trained on the same base is attached to the same weights as the
        adapter `adapter` plus its scalar head (one base in memory). One trained on another
        base gets its own private copy of that base on our device (one more model in
        memory) through engine.training.reward.load_scorer.
        Returns (scorer with .score(prompts, responses), label, model).
        """
        run = store.get_run(run_id)
        if run["stage"] != "reward":
            raise ValueError(f"run {run['id']} is a {run['stage']} run, not a reward model")
        path = reward_mod.reward_adapter_path(run["id"])
        if not (path / "adapter_config.json").exists():
            raise ValueError(f"reward run {run['id']} has no saved reward model (status "
                             f"{run['status']}); pick a finished reward run")
        spec = run_base(run)
        if spec != self.cfg.model:
            scorer = reward_mod.load_scorer(store, run["id"], device=self.device)
            return scorer, f"reward#{run['id']} (own copy of {spec})", model
        model = load_adapter(model, path, adapter_name=adapter, is_trainable=False)
        head, stats = reward_mod.load_reward_head(run["id"])
        head = head.to(self.device).eval()
        for p in head.parameters():
            p.requires_grad_(False)
        max_length = int((run.get("config") or {}).get("max_length") or 512)
        tokenizer = self.tokenizer

        class _SharedScorer:
            def score(self, prompts, responses):
                return reward_mod.score_with_model(model, head, tokenizer, prompts, responses,
                                                   max_length=max_length, stats=stats,
                                                   adapter_name=adapter)

            def score_rollout(self, ro):
                """The rollout's own token ids (the policy's tokenizer is this model's):
                no decoding and re-tokenising of the answers."""
                return reward_mod.score_token_ids(
                    model, head, rollout_reward_ids(ro, tokenizer.eos_token_id, max_length),
                    stats, adapter, pad_id=tokenizer.pad_token_id)

        return _SharedScorer(), f"reward#{run['id']}", model

    @torch.no_grad()
    def gold_scores(self, prompts: list, texts: list[str]) -> torch.Tensor:
        values = torch.tensor(self.gold.score(prompts, texts), dtype=torch.float32)
        if not torch.isfinite(values).all():
            raise NonFiniteError(f"the gold reward ({self.gold_label}) returned a non-finite "
                                 f"score")
        return values

    @torch.no_grad()
    def reward_scores(self, prompts: list, texts: list[str]) -> torch.Tensor:
        """The run's reward of some answers, as the step scores them (before penalties)."""
        return torch.tensor(self.scorer.score(prompts, texts), dtype=torch.float32)
