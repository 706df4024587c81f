"""The registry of job stages: name -> config dataclass and function `fn(config, ctx)`.

Stages are imported lazily so that listing runs or starting the app never loads torch
training code it does not need. Add a stage with one line in BUILTIN or with
`register()` (tests register tiny stages this way).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from engine import schema

# name: (module, config class, function, light?)
BUILTIN: dict[str, tuple[str, str, str, bool]] = {
    "sft": ("engine.training.sft", "SFTConfig", "train_sft", False),
    "reward": ("engine.training.reward", "RewardConfig", "train_reward", False),
    "ppo": ("engine.training.ppo", "PPOConfig", "train_ppo", False),
    "dpo": ("engine.training.dpo", "DPOConfig", "train_dpo", False),
    "grpo": ("engine.training.grpo", "GRPOConfig", "train_grpo", False),
    "best_of_n": ("engine.training.best_of_n", "BestOfNConfig", "run_best_of_n", False),
    "ai_feedback": ("engine.feedback.jobs", "AIFeedbackConfig", "run_ai_feedback", False),
    "pair_sample": ("engine.data.collect", "PairSampleConfig", "sample_pair", True),
    "compare": ("engine.compare", "CompareConfig", "run_compare", True),
    "export": ("engine.export", "ExportConfig", "run_export", True),
    "try": ("engine.inference.tryout", "TryConfig", "run_try", True),
    "score_text": ("engine.inference.tryout", "ScoreTextConfig", "run_score_text", True),
    "gold_pairs": ("engine.experiments.gold_pairs", "GoldPairsConfig", "make_gold_pairs", False),
    # a run group (sweep or experiment recipe): runs its planned runs one after another
    "experiment": ("engine.experiments.runner", "ExperimentConfig", "run_experiment", False),
}
# training lane, but not `train` verbs of the CLI: a group runs other stages' runs, and the
# AI-feedback job makes data (`python -m engine data ai-label`)
GROUP_STAGES = ("experiment",)
NOT_TRAIN_VERBS = GROUP_STAGES + ("ai_feedback",)


@dataclass
class StageSpec:
    name: str
    config_cls: type
    fn: Callable | None = None
    light: bool = False
    module: str | None = None
    fn_name: str | None = None

    def function(self) -> Callable:
        if self.fn is None:
            self.fn = getattr(importlib.import_module(self.module), self.fn_name)
        return self.fn

    def make_config(self, config: Any = None):
        """The stage's config from None (defaults), an instance or JSON-like data, checked
        by its `validate()` (ConfigError names the field) before anything runs."""
        if config is None:
            config = self.config_cls()
        elif not isinstance(config, self.config_cls):
            config = from_dict(self.config_cls, dict(config))
        if hasattr(config, "validate"):
            config.validate()
        return config


_registry: dict[str, StageSpec] = {}


def register(name: str, config_cls: type, fn: Callable, light: bool = False) -> None:
    _registry[name] = StageSpec(name, config_cls, fn, light)


def get(name: str) -> StageSpec:
    if name in _registry:
        return _registry[name]
    if name not in BUILTIN:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(set(BUILTIN) | set(_registry))}")
    module, cls_name, fn_name, light = BUILTIN[name]
    cls = getattr(importlib.import_module(module), cls_name)
    spec = StageSpec(name, cls, None, light, module, fn_name)
    _registry[name] = spec
    return spec


# -- configs from JSON: the settings schema (engine.schema) ------------------------------
from_dict = schema.from_dict
apply_overrides = schema.apply_overrides
to_dict = schema.to_dict


def training_stages() -> list[str]:
    """The stages that train (the `train` verbs of the CLI), without importing them."""
    return [name for name, (_, _, _, light) in BUILTIN.items()
            if not light and name not in NOT_TRAIN_VERBS]
