"""Preference pairs labelled by a gold reward: the data of the over-optimisation recipe.

Gao, Schulman and Hilton (2022) study reward over-optimisation with a *gold* reward that
stands in for human judgement and a *proxy* reward model trained on pairs the gold one
labelled. This stage makes those pairs: the model (the base, or a finished SFT run's
adapter) answers each prompt twice; the gold reward (a built-in rule with parameters, or
a finished reward-model run) scores both; the better one is `chosen`. Pairs whose gold
scores tie (|Δ| ≤ min_margin) teach nothing and are dropped.

The pairs land in a preference dataset (`out_dataset`), with the gold scores of both
answers in each row's meta, so a reward stage can train the proxy on them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from engine.schema import ConfigError, SamplingSettings, StageConfig, like, setting
from engine.training import rewards_builtin

DEFAULT_GOLD = "target_length"


def _s(name: str, default=None, **meta):
    """A setting labelled from the recipes catalogue ("recipes.settings.<name>")."""
    return setting(default, label=f"recipes.settings.{name}",
                   help=f"recipes.settings.{name}_help", **meta)


@dataclass
class GoldPairsConfig(SamplingSettings, StageConfig):
    """Sample two answers per prompt and label the pair with a gold reward."""
    temperature: float = like("temperature", 1.0)
    max_new_tokens: int = like("max_new_tokens", 48)
    dataset: str = _s("prompt_dataset", "sample-sft", widget="page")   # prompts from it
    sft_run: int | None = setting(None, widget="page", optional=True)  # None: the base
    num_prompts: int = _s("num_prompts", 64, min=1, max=100_000)
    gold_reward: str = _s("gold_reward", DEFAULT_GOLD,
                          choices=tuple(rewards_builtin.names()))
    gold_params: dict = _s("gold_params", factory=dict, widget="page")
    gold_reward_run: int | None = _s("gold_reward_run", None, widget="page", optional=True)
    out_dataset: str = _s("out_dataset", "gold-pairs")
    overwrite: bool = _s("overwrite", True)
    min_margin: float = _s("min_margin", 0.0, min=0.0, max=100.0, step=0.01)
    eval_fraction: float = _s("eval_fraction", 0.2, min=0.0, max=0.9, step=0.05)
    batch_size: int = setting(16, min=1, max=4096)
    seed: int = setting(0, min=0, max=2**31 - 1)

    def check(self) -> None:
        super().check()
        if not self.out_dataset.strip():
            raise ConfigError("out_dataset", "must not be empty")
        if self.gold_reward_run is None:
            try:
                rewards_builtin.check_params(self.gold_reward, self.gold_params)
            except ValueError as exc:
                raise ConfigError("gold_params", str(exc)) from exc


def gold_scorer(store, name: str, params: dict | None, run_id: int | None):
    """The gold reward as a scorer (`.score(prompts, responses)`) and its label: a
    finished reward-model run when `run_id` is given, else the built-in rule `name`."""
    if run_id is not None:
        from engine.training import reward as reward_mod

        return reward_mod.load_scorer(store, int(run_id)), f"reward#{int(run_id)}"
    scorer = rewards_builtin.BuiltinScorer(name, params)
    return scorer, scorer.label()


def label_pairs(prompts: list, answers_a: list[str], answers_b: list[str],
                gold_a: list[float], gold_b: list[float], min_margin: float = 0.0
                ) -> tuple[list[dict], int]:
    """Pairs {prompt, chosen, rejected, meta} with chosen = the answer of higher gold score;
    ties (|Δ| ≤ min_margin) and identical answers dropped. Returns (pairs, dropped)."""
    pairs, dropped = [], 0
    for p, a, b, ga, gb in zip(prompts, answers_a, answers_b, gold_a, gold_b):
        if abs(ga - gb) <= min_margin or a.strip() == b.strip() or not a.strip() \
                or not b.strip():
            dropped += 1
            continue
        (chosen, gc), (rejected, gr) = sorted([(a, ga), (b, gb)], key=lambda x: -x[1])
        pairs.append({"prompt": p, "chosen": chosen, "rejected": rejected,
                      "meta": {"origin": "gold", "gold_chosen": gc, "gold_rejected": gr}})
    return pairs, dropped


def make_gold_pairs(cfg: GoldPairsConfig, ctx) -> dict:
    """The `gold_pairs` stage: `fn(config, ctx) -> summary`."""
    import random

    from engine import data
    from engine.inference.generate import SamplingConfig, generate
    from engine.inference.models import inference_cache
    from storage import NotFound

    store = ctx.store
    if cfg.dataset in data.SAMPLES:
        data.ensure_sample_datasets(store)
    prompts = [p for p in data.prompts_of(store, cfg.dataset) if p]
    if not prompts:
        raise ValueError(f"dataset {cfg.dataset!r} has no prompts")
    rng = random.Random(cfg.seed)
    rng.shuffle(prompts)
    prompts = prompts[:cfg.num_prompts]
    try:
        store.get_dataset(cfg.out_dataset)
        if not cfg.overwrite:
            raise ValueError(f"dataset {cfg.out_dataset!r} exists; set overwrite or another "
                             f"out_dataset")
    except NotFound:
        pass
    source = "base" if cfg.sft_run is None else str(cfg.sft_run)
    t0 = time.perf_counter()
    answers: list[str] = []
    ctx.progress(0, len(prompts), "loading the model")
    with inference_cache.use(store, source, base_spec=cfg.model) as (model, tok):
        for start in range(0, len(prompts), cfg.batch_size):
            ctx.check_cancel()
            chunk = prompts[start:start + cfg.batch_size]
            scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, top_p=cfg.top_p,
                                  seed=cfg.seed * 1_000_003 + start,
                                  batch_size=cfg.batch_size)
            answers += generate(model, tok, chunk, scfg, num_return_sequences=2)
            ctx.progress(min(start + len(chunk), len(prompts)), len(prompts),
                         "sampling two answers per prompt")
    seconds_sampling = time.perf_counter() - t0
    a, b = answers[0::2], answers[1::2]
    scorer, label = gold_scorer(store, cfg.gold_reward, cfg.gold_params, cfg.gold_reward_run)
    gold_a = [float(x) for x in scorer.score(prompts, a)]
    gold_b = [float(x) for x in scorer.score(prompts, b)]
    pairs, dropped = label_pairs(prompts, a, b, gold_a, gold_b, cfg.min_margin)
    if not pairs:
        raise ValueError(f"the gold reward ({label}) scored every pair a tie: no pair to "
                         f"keep (sample more prompts or lower min_margin)")
    store.create_dataset(cfg.out_dataset, "preference",
                         description=f"pairs labelled by the gold reward {label} (run "
                                     f"{ctx.run_id})",
                         eval_fraction=cfg.eval_fraction, overwrite=cfg.overwrite)
    store.add_rows(cfg.out_dataset, pairs, source=f"gold_pairs#{ctx.run_id}")
    longer = sum(len(p["chosen"]) > len(p["rejected"]) for p in pairs) / len(pairs)
    ctx.samples(0, [{"prompt": p["prompt"], "response": p["chosen"], "label": "chosen",
                     "reward": p["meta"]["gold_chosen"], "rejected": p["rejected"],
                     "reward_rejected": p["meta"]["gold_rejected"]} for p in pairs[:8]])
    ctx.progress(len(prompts), len(prompts), f"{len(pairs)} pairs in {cfg.out_dataset!r}")
    scores = gold_a + gold_b
    return {"dataset": cfg.out_dataset, "pairs": len(pairs), "dropped_ties": dropped,
            "gold": label, "gold_mean": sum(scores) / len(scores),
            "chosen_longer_fraction": longer, "seconds_sampling": round(seconds_sampling, 2)}
