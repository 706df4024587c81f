"""Before/after RLHF, side by side, and the blind A/B vote.

A *comparison* answers one prompt set with two to four models (the base model and any
finished SFT or PPO run), with the same seed and sampling settings, and stores every
answer with its reward-model score (when a reward run is chosen), its KL to the base
model and its length. Per model it reports mean reward, distinct-1/distinct-2 and mean
length: the course's over-specialisation and length-bias checks.

The blind A/B vote shows two answers of a stored comparison in a hidden order decided
per item by a hash (stable across reruns and processes, never shown), stores the vote
with the real model names, and reports a Wilson interval on the win rate next to the
reward model's own preference on the same pairs: the gap between R_learned and people.
"""
from __future__ import annotations

import hashlib
import math
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch

from engine.inference.chat import IGNORE_INDEX, collate_completions, encode_completion, prompt_text
from engine.objectives import logprobs_from_logits
from engine.training.reward import pearson
from engine.schema import ConfigError, SamplingSettings, StageConfig, like

MAX_MODELS = 5  # base, SFT, PPO, DPO and GRPO side by side
CHOICES = ("a", "b", "tie")


@dataclass
class CompareConfig(StageConfig, SamplingSettings):
    """Answers of several models to the same prompts (model: the base of source "base")."""
    max_new_tokens: int = like("max_new_tokens", 64)
    top_p: float = like("top_p", 0.9)
    name: str = ""
    sources: list = field(default_factory=lambda: ["base"])  # "base" or run ids (SFT/PPO)
    prompts: list = field(default_factory=list)              # strings or chat message lists
    dataset: str | None = None         # when no prompts are typed: sample from this dataset
    split: str = "eval"
    num_prompts: int = 8
    reward_run: int | None = None      # a finished reward run: score every answer
    greedy: bool = False
    seed: int = 0
    batch_size: int = 8
    compute_kl: bool = True
    # capability retention (engine.capability): "shipped" (the shipped EN/FR questions), an
    # SFT dataset's name (its prompts and completions), or None to skip; answered greedily
    capability: str | None = "shipped"
    capability_limit: int = 0          # > 0: ask only this many questions (0: all)
    capability_max_new_tokens: int = 24

    def check(self) -> None:
        if self.capability_limit < 0:
            raise ConfigError("capability_limit", "must be 0 (every question) or more, "
                                                  f"not {self.capability_limit}")
        if self.capability_max_new_tokens < 1:
            raise ConfigError("capability_max_new_tokens", "must be at least 1")
        if self.capability is not None and not str(self.capability).strip():
            raise ConfigError("capability", "give 'shipped', an SFT dataset's name, or none")


# -- equations -------------------------------------------------------------------------
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased word and punctuation tokens: the unit distinct-n counts in."""
    return _TOKEN.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """distinct-n = |unique n-grams over all texts| / |n-grams over all texts| (Li et al. 2016).

    Counted over the whole set of answers of one model (a corpus-level diversity score):
    1.0 means no n-gram repeats anywhere, near 0 means the model says the same thing
    again and again. 0.0 when the answers hold no n-gram at all.
    """
    grams: list[tuple[str, ...]] = []
    for text in texts:
        grams.extend(ngrams(words(text), n))
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_1(texts: Iterable[str]) -> float:
    """distinct-1 = |unique words| / |words| over all answers."""
    return distinct_n(texts, 1)


def distinct_2(texts: Iterable[str]) -> float:
    """distinct-2 = |unique word bigrams| / |word bigrams| over all answers."""
    return distinct_n(texts, 2)


@torch.no_grad()
def response_logprobs(model, tokenizer, prompts: list, responses: list[str],
                      batch_size: int = 8, max_length: int = 1024) -> list[torch.Tensor]:
    """log π(y_t | x, y_<t) for every response token, by one teacher-forced forward pass.

    The response goes through the chat template (encode_completion), so its tokens are
    the ones the model would have produced, end-of-turn token included. Logits are used
    as they are (temperature 1): the model's own distribution.
    """
    from engine.training.sft import forward_logits

    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [encode_completion(tokenizer, p, r, max_length)
                   for p, r in zip(prompts[start:start + batch_size],
                                   responses[start:start + batch_size])]
        batch = {k: v.to(device) for k, v in
                 collate_completions(encoded, tokenizer.pad_token_id).items()}
        # logits only over the batch's response window, not the prompts (as SFT's loss)
        logits, labels = forward_logits(model, batch)
        labels = labels[:, 1:]
        token_logp = logprobs_from_logits(logits[:, :-1], labels.clamp(min=0))
        mask = labels != IGNORE_INDEX
        for row in range(len(encoded)):
            out.append(token_logp[row][mask[row]].cpu())
    return out


def kl_to_reference(logp_source: torch.Tensor, logp_ref: torch.Tensor) -> float:
    """KL̂(π_source ‖ π_ref) = 1/T · Σ_t [log π_source(y_t | x, y_<t) − log π_ref(y_t | x, y_<t)]

    over the T tokens of a response y of the source: the per-token log-ratio whose
    expectation, for y drawn from π_source itself, is the KL divergence (the quantity PPO's
    KL penalty uses). The comparison samples at its own temperature / top-p and scores at
    temperature 1, so read it as the mean log-ratio of the two models on these answers, an
    estimate of the KL only for plain sampling at temperature 1. One response gives a noisy,
    possibly negative, value; the mean over prompts is the number to read.
    """
    if logp_source.numel() == 0:
        return 0.0
    return float((logp_source - logp_ref).mean())


def source_kl(model, tokenizer, prompts: list, responses: list[str],
              batch_size: int = 8) -> list[float]:
    """KL to the reference for each answer of a run: its adapter on vs off (the base)."""
    if not hasattr(model, "disable_adapter"):
        return [0.0] * len(prompts)
    with_adapter = response_logprobs(model, tokenizer, prompts, responses, batch_size)
    with model.disable_adapter():
        reference = response_logprobs(model, tokenizer, prompts, responses, batch_size)
    return [kl_to_reference(a, b) for a, b in zip(with_adapter, reference)]


def mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# -- the comparison job ----------------------------------------------------------------
def resolve_prompts(store, cfg: CompareConfig) -> list:
    """The typed prompts, or up to num_prompts drawn (seeded) from a dataset's split."""
    prompts = [p for p in (cfg.prompts or []) if (p.strip() if isinstance(p, str) else p)]
    if prompts:
        return prompts
    if not cfg.dataset:
        raise ValueError("compare: give prompts or a dataset to sample them from")
    from engine.data import prompts_of

    pool = list(prompts_of(store, cfg.dataset, cfg.split))
    if not pool:
        raise ValueError(f"compare: dataset {cfg.dataset!r} has no {cfg.split} rows")
    if len(pool) <= cfg.num_prompts:
        return pool
    picked = sorted(random.Random(cfg.seed).sample(range(len(pool)), cfg.num_prompts))
    return [pool[i] for i in picked]


def run_compare(cfg: CompareConfig, ctx) -> dict:
    """Answer the prompts with every source, score them, store a comparison."""
    from engine.inference.generate import SamplingConfig, generate_with_lengths
    from engine.inference.models import inference_cache, source_of

    store = ctx.store
    sources = [str(s) for s in cfg.sources]
    if not 1 <= len(sources) <= MAX_MODELS:
        raise ValueError(f"compare: choose one to {MAX_MODELS} models, not {len(sources)}")
    if len(set(sources)) != len(sources):
        raise ValueError("compare: the same model is chosen twice")
    labels = {s: source_of(store, s)[2] for s in sources}  # fails early on a bad run id
    prompts = resolve_prompts(store, cfg)
    questions = (capability_questions(store, cfg) if cfg.capability else [])
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                              top_p=cfg.top_p, greedy=cfg.greedy, seed=cfg.seed,
                              batch_size=cfg.batch_size)
    total = len(sources) + (1 if cfg.reward_run else 0)
    answers: dict[str, list[str]] = {}
    kls: dict[str, list[float | None]] = {}
    lengths: dict[str, list[int]] = {}
    capability_rows: list[dict] = []
    for i, source in enumerate(sources):
        ctx.check_cancel()
        ctx.progress(i, total, f"{labels[source]}: {len(prompts)} answers")
        t0 = time.perf_counter()
        with inference_cache.use(store, source, base_spec=cfg.model) as (model, tok):
            # lengths in generated tokens (never over max_new_tokens), not re-tokenised text
            answers[source], lengths[source] = generate_with_lengths(model, tok, prompts,
                                                                     sampling)
            ctx.check_cancel()
            if source == "base":
                kls[source] = [0.0] * len(prompts)
            elif cfg.compute_kl:
                kls[source] = source_kl(model, tok, prompts, answers[source], cfg.batch_size)
            else:
                kls[source] = [None] * len(prompts)
            if questions:
                ctx.check_cancel()
                ctx.progress(i, total, f"{labels[source]}: {len(questions)} questions")
                capability_rows += score_capability(model, tok, questions, cfg,
                                                    labels[source], source)
        ctx.log(f"{labels[source]}: {len(prompts)} answers"
                + (f", {len(questions)} questions" if questions else "")
                + f" in {time.perf_counter() - t0:.1f} s")
    rewards: dict[str, list[float | None]] = {s: [None] * len(prompts) for s in sources}
    if cfg.reward_run:
        ctx.check_cancel()
        ctx.progress(len(sources), total, f"reward model #{cfg.reward_run}")
        from engine.training.reward import load_scorer

        scorer = load_scorer(store, int(cfg.reward_run))
        for source in sources:
            rewards[source] = [float(r) for r in scorer.score(prompts, answers[source])]
    name = cfg.name or f"compare-{ctx.run_id}"
    from engine.runtime.jobs import config_dict

    comparison_id = store.create_comparison(
        name, {**config_dict(cfg), "prompts": prompts, "labels": labels}, run_id=ctx.run_id)
    rows = []
    for source in sources:
        for j, prompt in enumerate(prompts):
            rows.append({"prompt_index": j, "prompt": prompt, "model": labels[source],
                         "response": answers[source][j], "reward": rewards[source][j],
                         "kl": kls[source][j], "length": lengths[source][j],
                         "source": source, "words": len(words(answers[source][j]))})
    store.add_comparison_outputs(comparison_id, rows)
    summary = model_summary(rows)
    out = {"comparison_id": comparison_id, "prompts": len(prompts),
           "models": [labels[s] for s in sources], "per_model": summary}
    if questions:
        from engine.capability import capability_summary, retention_sentence

        store.add_capability_answers(comparison_id, capability_rows)
        cap = capability_summary(capability_rows)
        out["capability"] = {"set": cfg.capability, "questions": len(questions),
                             "per_model": cap, "sentence": retention_sentence(cap)}
    ctx.progress(total, total, "done")
    return out


def capability_questions(store, cfg: CompareConfig) -> list[dict]:
    """The comparison's capability questions (engine.capability.questions_for)."""
    from engine.capability import questions_for

    return questions_for(store, cfg.capability, cfg.split, cfg.capability_limit, cfg.seed)


def score_capability(model, tok, questions: list[dict], cfg: CompareConfig, label: str,
                     source: str) -> list[dict]:
    """One model's greedy answers to the questions, each scored (engine.capability)."""
    from engine.capability import answer_questions, score_rows

    answers = answer_questions(model, tok, questions, cfg.capability_max_new_tokens,
                               max(cfg.batch_size, 16))
    return score_rows(label, source, questions, answers)


def method_of(label: str) -> str:
    """The training method of a source label ("ppo#12" -> "ppo"; "base" -> "base")."""
    return label.split("#", 1)[0] if "#" in label else "base"


def model_summary(outputs: list[dict]) -> list[dict]:
    """Per model over the prompt set: its method (the stage that trained it: "base", "sft",
    "ppo", "dpo", "grpo"), mean reward, distinct-1/2, mean length, mean KL."""
    by_model: dict[str, list[dict]] = {}
    for row in outputs:
        by_model.setdefault(row["model"], []).append(row)
    out = []
    for model, rows in by_model.items():
        texts = [r["response"] for r in rows]
        rewards = [r["reward"] for r in rows if r.get("reward") is not None]
        lengths = [r["length"] for r in rows if r.get("length") is not None]
        out.append({
            "model": model, "method": method_of(model), "answers": len(rows),
            "mean_reward": mean(rewards), "distinct_1": distinct_1(texts),
            "distinct_2": distinct_2(texts), "mean_length": mean(lengths),
            "mean_kl": mean(r.get("kl") for r in rows),
            "reward_length_corr": pearson(
                [float(r["length"]) for r in rows if r.get("reward") is not None],
                rewards) if len(rewards) == len(rows) else None,
        })
    return out


def outputs_by_prompt(outputs: list[dict]) -> list[dict]:
    """[{prompt_index, prompt, answers: {model: row}}] in prompt order, for columns."""
    items: dict[int, dict] = {}
    for row in outputs:
        item = items.setdefault(row["prompt_index"], {"prompt_index": row["prompt_index"],
                                                      "prompt": row["prompt"], "answers": {}})
        item["answers"][row["model"]] = row
    return [items[k] for k in sorted(items)]


def comparison_models(outputs: list[dict]) -> list[str]:
    seen: list[str] = []
    for row in outputs:
        if row["model"] not in seen:
            seen.append(row["model"])
    return seen


# -- blind A/B ---------------------------------------------------------------------------
def hidden_order_swapped(comparison_id: int | None, prompt_index: int, model_x: str,
                         model_y: str) -> bool:
    """Whether model_x is shown as B: one bit of sha256(comparison | item | model pair).

    Deterministic (the same item always shows the same way, across reruns and restarts)
    and independent of which of the two models the person picked first.
    """
    lo, hi = sorted((model_x, model_y))
    key = f"{comparison_id}|{prompt_index}|{lo}|{hi}".encode()
    swapped_lo = hashlib.sha256(key).digest()[0] & 1 == 1  # True: lo shown as B
    return swapped_lo if model_x == lo else not swapped_lo


def blind_items(outputs: list[dict], model_x: str, model_y: str,
                comparison_id: int | None = None) -> list[dict]:
    """The A/B items of a comparison for two models, each in its hidden order."""
    if model_x == model_y:
        raise ValueError("blind A/B needs two different models")
    items = []
    for item in outputs_by_prompt(outputs):
        answers = item["answers"]
        if model_x not in answers or model_y not in answers:
            continue
        first, second = answers[model_x], answers[model_y]
        if hidden_order_swapped(comparison_id, item["prompt_index"], model_x, model_y):
            first, second = second, first
        items.append({"prompt_index": item["prompt_index"], "prompt": item["prompt"],
                      "model_a": first["model"], "model_b": second["model"],
                      "response_a": first["response"], "response_b": second["response"],
                      "reward_a": first.get("reward"), "reward_b": second.get("reward")})
    return items


def _vote_key(prompt: str, model_a: str, model_b: str) -> tuple:
    return (prompt, frozenset((model_a, model_b)))


def pending_items(items: list[dict], votes: list[dict]) -> list[dict]:
    """Items not voted on yet (one vote per item and model pair)."""
    done = Counter(_vote_key(v["prompt"], v["model_a"], v["model_b"]) for v in votes)
    out = []
    for item in items:
        key = _vote_key(item["prompt"], item["model_a"], item["model_b"])
        if done[key] > 0:
            done[key] -= 1
        else:
            out.append(item)
    return out


def record_vote(store, item: dict, choice: str, comparison_id: int | None = None) -> int:
    """Store a vote with the real model names in the order shown (A, B) and their rewards."""
    if choice not in CHOICES:
        raise ValueError(f"vote {choice!r}: expected one of {CHOICES}")
    return store.add_vote(item["prompt"], item["model_a"], item["model_b"], item["response_a"],
                          item["response_b"], choice, reward_a=item.get("reward_a"),
                          reward_b=item.get("reward_b"), comparison_id=comparison_id)


def vote_score(vote: dict, model_x: str) -> float:
    """1 if model_x won the vote, 0 if it lost, ½ for a tie (or "both bad")."""
    if vote["choice"] in ("tie", "both_bad"):
        return 0.5
    winner = vote["model_a"] if vote["choice"] == "a" else vote["model_b"]
    return 1.0 if winner == model_x else 0.0


def pair_votes(votes: list[dict], model_x: str, model_y: str) -> list[dict]:
    pair = {model_x, model_y}
    return [v for v in votes if {v["model_a"], v["model_b"]} == pair]


def wilson_interval(successes: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion p̂ = s/n at confidence z (1.96 → 95 %):

        (p̂ + z²/2n ± z·sqrt(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)

    Unlike p̂ ± z·sqrt(p̂(1−p̂)/n) it stays inside [0, 1] and is honest for few votes.
    Ties enter as half a success (s may be fractional): a tie is read as a 50/50 vote.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    return (max(0.0, (centre - margin) / denom), min(1.0, (centre + margin) / denom))


def win_rate(votes: list[dict], model_x: str, model_y: str) -> dict:
    """Win rate of model_x over model_y: (wins + ½·ties) / votes, with its Wilson 95 % CI."""
    pv = pair_votes(votes, model_x, model_y)
    scores = [vote_score(v, model_x) for v in pv]
    wins = sum(1 for s in scores if s == 1.0)
    losses = sum(1 for s in scores if s == 0.0)
    ties = len(scores) - wins - losses
    n = len(scores)
    successes = wins + 0.5 * ties
    low, high = wilson_interval(successes, n)
    return {"model_x": model_x, "model_y": model_y, "n": n, "wins": wins, "losses": losses,
            "ties": ties, "rate": successes / n if n else None, "low": low, "high": high}


def reward_preference(votes: list[dict], model_x: str, model_y: str) -> dict:
    """On the same voted pairs: how often the reward model scores model_x above model_y
    (equal scores count half), and how often its ordering agrees with the person.

    agreement = |{decisive votes where sign(r_A − r_B) matches the vote}| / |decisive votes|
    where a vote is decisive when the person chose A or B and r_A ≠ r_B.
    """
    pv = [v for v in pair_votes(votes, model_x, model_y)
          if v.get("reward_a") is not None and v.get("reward_b") is not None]
    prefer = []
    agree = 0
    decisive = 0
    for v in pv:
        rx, ry = ((v["reward_a"], v["reward_b"]) if v["model_a"] == model_x
                  else (v["reward_b"], v["reward_a"]))
        prefer.append(1.0 if rx > ry else 0.0 if rx < ry else 0.5)
        if v["choice"] in ("a", "b") and v["reward_a"] != v["reward_b"]:
            decisive += 1
            reward_says_a = v["reward_a"] > v["reward_b"]
            agree += int(reward_says_a == (v["choice"] == "a"))
    n = len(prefer)
    low, high = wilson_interval(agree, decisive)
    return {"n": n, "reward_rate": sum(prefer) / n if n else None,
            "decisive": decisive, "agreement": agree / decisive if decisive else None,
            "agreement_low": low, "agreement_high": high}


def short_prompt(prompt: Any, width: int = 80) -> str:
    text = prompt_text(prompt) if not isinstance(prompt, str) else prompt
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


# -- headless: `python -m engine compare` -----------------------------------------------------
def parse_sources(text: str) -> list[str]:
    """"base,12,15" -> ["base", "12", "15"]; anything else than base or a run id is named."""
    out = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        if part != "base" and not part.isdigit():
            raise ValueError(f"compare: source {part!r} is neither 'base' nor a run id")
        out.append(part)
    if not out:
        raise ValueError("compare: --sources names no model (e.g. --sources base,12)")
    return out


def check_headless(store, cfg: CompareConfig) -> None:
    """What the job would fail on, said before anything runs, naming the source or dataset."""
    from engine.inference.models import ModelLoadError, source_of
    from storage import NotFound

    for source in cfg.sources:
        try:
            source_of(store, source)
        except (NotFound, ModelLoadError) as exc:
            raise ValueError(f"compare: source {source}: {exc}") from None
    names = [d["name"] for d in store.list_datasets()]
    for what, name in (("--prompts", cfg.dataset), ("--capability", cfg.capability)):
        if name and name != "shipped" and name not in names:
            raise ValueError(f"compare: {what} dataset {name!r} does not exist; known: "
                             f"{', '.join(sorted(names)) or 'none'}")
    if cfg.reward_run is not None:
        try:
            run = store.get_run(int(cfg.reward_run))
        except NotFound as exc:
            raise ValueError(f"compare: --reward-run {cfg.reward_run}: {exc}") from None
        if run["stage"] != "reward" or run["status"] != "succeeded":
            raise ValueError(f"compare: --reward-run {cfg.reward_run} is a {run['status']} "
                             f"{run['stage']} run, not a finished reward run")
    resolve_prompts(store, cfg)
    if cfg.capability:
        capability_questions(store, cfg)


def headless_report(summary: dict) -> dict:
    """The comparison's table as one JSON-ready dict: per model its reward, length, KL,
    distinct-1/2 and capability accuracy with its 95 % interval and n."""
    from engine.experiments.cli import sentence_text

    cap = summary.get("capability") or {}
    cap_by_model = {c["model"]: c for c in cap.get("per_model") or []}
    models = []
    for s in summary.get("per_model") or []:
        c = cap_by_model.get(s["model"])
        models.append({**s, "capability": None if c is None else
                       {k: c[k] for k in ("accuracy", "low", "high", "n", "correct", "by_lang")}})
    out = {"comparison_id": summary.get("comparison_id"), "prompts": summary.get("prompts"),
           "models": models}
    if cap:
        out["capability"] = {"set": cap["set"], "questions": cap["questions"],
                             "sentence": sentence_text(cap.get("sentence"))}
    return out


def cmd_compare(args) -> int:
    from engine.cli import print_json, store_of
    from engine.runtime import stages
    from engine.runtime.jobs import run_sync

    data = stages.apply_overrides({}, args.set)
    data["sources"] = parse_sources(args.sources)
    data["dataset"] = args.prompts
    if args.reward_run is not None:
        data["reward_run"] = args.reward_run
    if args.capability is not None:
        data["capability"] = None if args.capability.lower() == "none" else args.capability
    cfg = stages.get("compare").make_config(data)
    store = store_of(args)
    check_headless(store, cfg)
    t0 = time.perf_counter()
    run = run_sync(store, "compare", cfg, name=args.name)
    out = {"run_id": run["id"], "status": run["status"],
           "seconds": round(time.perf_counter() - t0, 2), "dataset": cfg.dataset,
           "split": cfg.split, **headless_report(run["summary"] or {})}
    if run["error"]:
        out["error"] = run["error"].split("\n\n")[0]
    print_json(out)
    return 0 if run["status"] == "succeeded" else 1


def register_cli(subparsers) -> None:
    """`compare --sources base,ID,... --prompts DATASET` for `python -m engine`."""
    p = subparsers.add_parser(
        "compare", help="answer a dataset's prompts with the base model and runs; print "
                        "reward, length, KL, diversity and capability accuracy as JSON")
    p.add_argument("--sources", required=True, metavar="base,ID,...",
                   help=f"'base' and/or finished run ids, comma-separated (1 to {MAX_MODELS})")
    p.add_argument("--prompts", required=True, metavar="DATASET",
                   help="the dataset whose prompts are answered (split and num_prompts by --set)")
    p.add_argument("--reward-run", type=int, help="a finished reward run: score every answer")
    p.add_argument("--capability", metavar="shipped|DATASET|none",
                   help="the capability question set (default: the shipped EN/FR questions)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting of the comparison (num_prompts, split, seed, "
                        "max_new_tokens, greedy, capability_limit, model, ...)")
    p.add_argument("--name")
    p.set_defaults(func=cmd_compare)
