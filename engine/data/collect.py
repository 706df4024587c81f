"""Human preference collection: the model answers a prompt twice, a person picks the better.

This is the "human feedback" of RLHF. A light job (stage "pair_sample") samples two
answers from the current model (the base, or a finished SFT/PPO run's adapter) and
stores them as the run's samples A and B. A vote for A or B becomes a preference pair
{prompt, chosen, rejected} in a chosen dataset, with its provenance (model, source run,
sampling settings, the pair_sample run id) in the row's meta. A tie or "both bad" is
recorded on the run (and counted on the dataset) but is not a pair.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from engine.schema import SamplingSettings, StageConfig, like
from storage import NotFound, Store

CHOICES = ("a", "b", "tie", "both_bad")
MAX_TRIES = 3  # resample when the two answers come out identical (nothing to compare)


@dataclass
class PairSampleConfig(StageConfig, SamplingSettings):
    """Two answers to one prompt for a person's vote (model: used when source is "base")."""
    temperature: float = like("temperature", 0.9)
    top_p: float = like("top_p", 0.95)
    max_new_tokens: int = like("max_new_tokens", 64)
    source: str = "base"         # "base" or the id of a finished SFT/PPO run
    prompt: Any = ""             # a string or a list of chat messages
    prompt_dataset: str = ""     # the dataset the prompt was taken from ("": typed)
    seed: int | None = None      # None: a fresh random seed (stored in the summary)


def sample_pair(config: PairSampleConfig, ctx) -> dict:
    """Sample two answers to one prompt; write them as samples A and B (step 0)."""
    from engine.inference.generate import SamplingConfig, generate
    from engine.inference.models import inference_cache, source_of

    if not config.prompt or (isinstance(config.prompt, str) and not config.prompt.strip()):
        raise ValueError("pair_sample: the prompt is empty")
    source = str(config.source or "base")
    seed = config.seed if config.seed is not None else random.randrange(2**31)
    spec, _, label = source_of(ctx.store, source)
    spec = spec or config.model
    ctx.progress(0, 2, "loading the model")
    t0 = time.perf_counter()
    answers: list[str] = []
    with inference_cache.use(ctx.store, source, base_spec=config.model) as (model, tokenizer):
        ctx.progress(1, 2, "sampling two answers")
        for attempt in range(MAX_TRIES):
            ctx.check_cancel()
            cfg = SamplingConfig(max_new_tokens=config.max_new_tokens,
                                 temperature=config.temperature, top_p=config.top_p,
                                 seed=seed + attempt, batch_size=1)
            answers = generate(model, tokenizer, [config.prompt], cfg, num_return_sequences=2)
            if answers[0].strip() != answers[1].strip():
                break
            ctx.log(f"attempt {attempt + 1}: both answers are the same; sampling again")
    seconds = time.perf_counter() - t0
    identical = answers[0].strip() == answers[1].strip()
    ctx.samples(0, [{"prompt": config.prompt, "response": answers[i], "label": label_,
                     "source": label} for i, label_ in enumerate(("A", "B"))])
    ctx.progress(2, 2, "ready for a vote")
    return {"seed": seed, "attempts": attempt + 1, "identical": identical, "model": spec,
            "source_label": label, "seconds": round(seconds, 2),
            "lengths": [len(a) for a in answers]}


# -- sources, the pair, the vote -----------------------------------------------------
def model_sources(store: Store) -> dict[str, str]:
    """{source: label} for sampling: "base", then finished SFT, PPO and GRPO runs that saved an
    adapter (newest first)."""
    from engine.inference.models import adapter_dir

    out = {"base": "base"}
    for stage in ("sft", "ppo", "dpo", "grpo"):
        for run in store.list_runs(stage=stage, status="succeeded"):
            if (adapter_dir(run["id"]) / "adapter_config.json").exists():
                out[str(run["id"])] = f"{stage}#{run['id']} {run['name']}"
    return out


def get_pair(store: Store, run_id: int) -> dict:
    """A pair_sample run as {run, prompt, a, b, vote}; a and b are None until it succeeded."""
    run = store.get_run(run_id)
    if run["stage"] != "pair_sample":
        raise ValueError(f"run {run_id} is a {run['stage']} run, not pair_sample")
    samples = store.get_samples(run_id, step=0) if run["status"] == "succeeded" else []
    by_label = {s["extra"].get("label"): s["response"] for s in samples}
    return {"run": run, "prompt": run["config"].get("prompt"), "a": by_label.get("A"),
            "b": by_label.get("B"), "vote": (run["summary"] or {}).get("vote")}


def pending_pair(store: Store, source: str = "base", model: str | None = None,
                 dataset: str | None = None, prefer: int | None = None) -> int | None:
    """The newest finished pair_sample run still waiting for a vote (its two answers
    stored, no vote recorded on it): sampled for `source` (and, for "base", the base
    `model`), with a prompt from `dataset` ("": typed) when given; a run that predates
    the prompt's dataset being kept matches any. `prefer`: that run if it is one of them
    (the pair on screen stays). None when every such pair got its vote.

    A pair whose page was closed while it sampled is found here, and offered again."""
    found = None
    for run in store.list_runs(stage="pair_sample", status="succeeded"):
        cfg, summary = run["config"] or {}, run["summary"] or {}
        if summary.get("vote"):
            continue
        if str(cfg.get("source") or "base") != str(source or "base"):
            continue
        if str(source or "base") == "base" and model is not None and cfg.get("model") != model:
            continue
        if dataset is not None and cfg.get("prompt_dataset") not in (None, dataset):
            continue
        pair = get_pair(store, run["id"])
        if pair["a"] is None or pair["b"] is None:
            continue
        if prefer is None or run["id"] == prefer:
            return run["id"]
        found = found or run["id"]
    return found


def record_vote(store: Store, run_id: int, choice: str, dataset: str,
                create: bool = True) -> dict:
    """Record a person's choice on pair `run_id`.

    "a"/"b": a preference pair (chosen = the picked answer) is added to `dataset` (created
    as a preference dataset if absent and create=True), with provenance in its meta.
    "tie"/"both_bad": nothing is added; the choice is kept on the run and counted in the
    dataset's meta. A pair can be voted once. Returns {choice, stored, row_id, dataset}.
    """
    if choice not in CHOICES:
        raise ValueError(f"vote choice {choice!r} is not one of {CHOICES}")
    pair = get_pair(store, run_id)
    run = pair["run"]
    if run["status"] != "succeeded" or pair["a"] is None or pair["b"] is None:
        raise ValueError(f"pair_sample run {run_id} has no answers to vote on "
                         f"(status {run['status']})")
    if pair["vote"]:
        raise ValueError(f"pair_sample run {run_id} was already voted on: {pair['vote']}")
    try:
        ds = store.get_dataset(dataset)
    except NotFound:
        if not create:
            raise
        store.create_dataset(dataset, "preference", description="human preferences")
        ds = store.get_dataset(dataset)
    if ds["kind"] != "preference":
        raise ValueError(f"dataset {dataset!r} holds SFT rows, not preference pairs")
    cfg, summary = run["config"], run["summary"] or {}
    row_id = None
    if choice in ("a", "b"):
        chosen, rejected = (pair["a"], pair["b"]) if choice == "a" else (pair["b"], pair["a"])
        if chosen.strip() == rejected.strip():
            raise ValueError("the two answers are identical: record a tie instead")
        if not chosen.strip() or not rejected.strip():
            raise ValueError("an answer is empty: record 'both bad' instead")
        meta = {"origin": "human", "choice": choice, "pair_sample_run": run["id"],
                "model": summary.get("model") or cfg.get("model"),
                "source": cfg.get("source", "base"), "source_label": summary.get("source_label"),
                "temperature": cfg.get("temperature"), "top_p": cfg.get("top_p"),
                "max_new_tokens": cfg.get("max_new_tokens"), "seed": summary.get("seed"),
                "voted_at": time.time()}
        store.add_rows(ds["id"], [{"prompt": pair["prompt"], "chosen": chosen,
                                   "rejected": rejected, "meta": meta}],
                       source=f"pair_sample#{run['id']}")
        after = store.get_dataset(ds["id"])["rows"]
        row_id = next(r["id"] for r in reversed(store.list_rows(ds["id"], offset=max(0, after - 50)))
                      if (r.get("meta") or {}).get("pair_sample_run") == run["id"])
    else:
        counts = dict(ds["meta"] or {})
        counts[choice] = int(counts.get(choice, 0)) + 1
        store.update_dataset(ds["id"], meta=counts)
    store.update_run(run["id"], summary={**summary, "vote": choice, "dataset": ds["name"],
                                         "row_id": row_id})
    return {"choice": choice, "stored": row_id is not None, "row_id": row_id,
            "dataset": ds["name"]}


def vote_counts(store: Store, dataset: str | None = None) -> dict[str, int]:
    """How many pair_sample runs got each choice (for one dataset, or all); "pending":
    succeeded runs without a vote yet."""
    counts = {c: 0 for c in CHOICES} | {"pending": 0}
    for run in store.list_runs(stage="pair_sample", status="succeeded"):
        summary = run["summary"] or {}
        vote = summary.get("vote")
        if vote is None:
            counts["pending"] += 1
        elif dataset is None or summary.get("dataset") == dataset:
            counts[vote] += 1
    return counts
