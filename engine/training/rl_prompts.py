"""The prompts an RL run (PPO, GRPO) trains on: a dataset's distinct prompts, all of them or
those of one language (`prompt_language`)."""
from __future__ import annotations

from engine import data
from engine.inference.chat import prompt_text
from engine.schema import ConfigError
from engine.training import rewards_builtin

PROMPT_LANGUAGES = ("any", "en", "fr")   # rewards_builtin.language_of


def load_prompts(store, dataset: str, split: str = "train", language: str = "any") -> list:
    """The distinct prompts of an SFT or a preference dataset (train split; every row if it
    has none), only those in `language` unless it is "any". The shipped samples are
    imported on first use."""
    if dataset in data.SAMPLES:
        data.ensure_sample_datasets(store)
    prompts = data.prompts_of(store, dataset, split) or data.prompts_of(store, dataset)
    prompts = [p for p in prompts if p]
    if not prompts:
        raise ValueError(f"dataset {dataset!r} has no prompts")
    kept = in_language(prompts, language)
    if not kept:
        raise ConfigError("prompt_language", f"none of the {len(prompts)} prompts of dataset "
                          f"{dataset!r} is in {language!r}; choose 'any' or another dataset")
    return kept


def in_language(prompts: list, language: str) -> list:
    """The prompts of `language` ("en"/"fr"): every prompt but those told to be in the other
    language (rewards_builtin.language_of; a prompt whose language cannot be told is kept);
    all of them for "any"."""
    if language == "any":
        return list(prompts)
    return [p for p in prompts
            if rewards_builtin.language_of(prompt_text(p)) in (language, None)]
