"""Light jobs behind the pages' "try it" boxes, so no page runs a model in its script.

- stage "try" (`run_try`): one prompt answered greedily by the base model and by the
  same base with a finished run's adapter (the SFT page's side-by-side);
- stage "score_text" (`run_score_text`): a reward run scores several answers to one
  typed prompt (the reward page's tester).

Both use the process-wide inference model (engine.inference.models.inference_cache: one base in
memory, adapters switched by name) and return their result as the run's summary (the
pages draw it from there); their samples repeat it for the Runs page.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from engine.schema import SamplingSettings, StageConfig, like


@dataclass
class TryConfig(StageConfig, SamplingSettings):
    """One prompt answered by a run's base and by the run (temperature, top_p: when greedy
    is off)."""
    max_new_tokens: int = like("max_new_tokens", 48)
    top_p: float = like("top_p", 0.9)
    run_id: int | None = None    # a finished run (SFT or PPO) holding an adapter
    prompt: Any = ""             # a string or a list of chat messages
    greedy: bool = True          # the same answer for the same prompt, run after run
    seed: int = 0


@dataclass
class ScoreTextConfig(StageConfig):
    reward_run: int | None = None  # a finished reward run
    prompt: Any = ""
    responses: list = field(default_factory=list)  # answers to score, in the order given
    normalized: bool = True        # r̂ with the run's stored statistics, as PPO sees it


def _check_prompt(stage: str, prompt: Any) -> None:
    if not prompt or (isinstance(prompt, str) and not prompt.strip()):
        raise ValueError(f"{stage}: the prompt is empty")


def run_try(cfg: TryConfig, ctx) -> dict:
    """Answer one prompt with the run's base model and with the run's adapter on it."""
    from engine.inference.generate import SamplingConfig, generate_with_lengths
    from engine.inference.models import inference_cache, source_of

    _check_prompt("try", cfg.prompt)
    if cfg.run_id is None:
        raise ValueError("try: choose a finished run (run_id)")
    spec, _, label = source_of(ctx.store, cfg.run_id)  # fails early without an adapter
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, greedy=cfg.greedy,
                              temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                              batch_size=1)
    out: dict[str, Any] = {"prompt": cfg.prompt, "run_id": int(cfg.run_id), "model": spec,
                           "label": label}
    t0 = time.perf_counter()
    sides = (("base", "base", "base"), ("tuned", cfg.run_id, label))
    for i, (key, source, name) in enumerate(sides):
        ctx.check_cancel()
        ctx.progress(i, len(sides), f"{name}: answering")
        # the base side is the run's own base model, whatever the sidebar holds
        with inference_cache.use(ctx.store, source, base_spec=spec) as (model, tok):
            answers, lengths = generate_with_lengths(model, tok, [cfg.prompt], sampling)
        out[key], out[f"{key}_tokens"] = answers[0], lengths[0]
    out["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.samples(0, [{"prompt": cfg.prompt, "response": out[key], "source": name}
                    for key, _, name in sides])
    ctx.progress(len(sides), len(sides), "done")
    return out


def run_score_text(cfg: ScoreTextConfig, ctx) -> dict:
    """Score each typed answer to one prompt with a finished reward run."""
    from engine.training.reward import load_scorer

    _check_prompt("score_text", cfg.prompt)
    responses = [str(r) for r in cfg.responses if str(r).strip()]
    if not responses:
        raise ValueError("score_text: give at least one answer to score")
    if cfg.reward_run is None:
        raise ValueError("score_text: choose a finished reward run (reward_run)")
    ctx.progress(0, 1, f"reward model #{cfg.reward_run}: {len(responses)} answers")
    t0 = time.perf_counter()
    scorer = load_scorer(ctx.store, int(cfg.reward_run))  # shares the inference model
    scores = [float(s) for s in scorer.score([cfg.prompt] * len(responses), responses,
                                             normalized=cfg.normalized)]
    ctx.samples(0, [{"prompt": cfg.prompt, "response": r, "reward": s}
                    for r, s in zip(responses, scores)])
    ctx.progress(1, 1, "done")
    return {"reward_run": int(cfg.reward_run), "prompt": cfg.prompt, "responses": responses,
            "scores": scores, "normalized": bool(cfg.normalized and scorer.stats),
            "seconds": round(time.perf_counter() - t0, 2)}
