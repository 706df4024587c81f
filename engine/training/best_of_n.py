"""Best-of-n against a proxy reward, scored by a gold one (Gao, Schulman and Hilton 2022).

Best-of-n samples n answers and keeps the one the proxy reward ranks first: an optimiser
with no training at all, whose distance from the sampling policy is known in closed form,
KL_bon = log n − (n − 1)/n (objectives.kl_best_of_n). Plotting the proxy and the gold score
of the kept answer against that KL shows reward over-optimisation: the proxy keeps
climbing while the gold score peaks and falls.

The stage samples n_max answers per prompt once (batched, KV cache), scores each with the
proxy (a reward-model run or a built-in rule) and the gold reward (a rule or a reward-model
run), then for n = 1, 2, 4, …, n_max logs at step n the expected proxy and gold score of
best-of-n, estimated without bias from the n_max samples of each prompt
(objectives.best_of_n_estimate: the weights C(N−k, n−1)/C(N, n) over proxy ranks),
averaged over the prompts, with its standard error over the prompts. Every n reuses the
same n_max samples: the whole curve costs one sampling pass and one scoring pass.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass

from engine.objectives import best_of_n_estimate, kl_best_of_n, mean_standard_error
from engine.schema import ADVANCED, ConfigError, SamplingSettings, StageConfig, like, setting
from engine.training import rewards_builtin
from engine.training.ppo import check_gold

SPLITS = ("eval", "train", "all")


@dataclass
class BestOfNConfig(SamplingSettings, StageConfig):
    """Settings of a best-of-n run."""
    temperature: float = like("temperature", 1.0)   # the sampling policy itself
    max_new_tokens: int = like("max_new_tokens", 32)
    dataset: str = setting("sample-preferences", widget="page")   # its prompts
    split: str = setting("eval", choices=SPLITS)
    sft_run: int | None = setting(None, widget="page")    # None: the base model
    num_prompts: int = setting(8, min=1, max=100_000)
    n_max: int = setting(16, min=1, max=4096)             # a power of 2
    reward_run: int | None = setting(None, widget="page")  # the proxy: a reward model, or
    builtin_reward: str = setting(rewards_builtin.DEFAULT_REWARD,
                                  choices=tuple(rewards_builtin.names()))  # ... a rule
    reward_params: dict = setting(factory=dict, widget="page")
    gold_reward: str = setting("", choices=("", *rewards_builtin.names()))
    gold_params: dict = setting(factory=dict, widget="page")
    gold_reward_run: int | None = setting(None, widget="page")
    batch_size: int = setting(32, min=1, max=4096, group=ADVANCED)  # answers per pass
    max_prompt_length: int = setting(128, min=8, max=65_536, step=32, group=ADVANCED)
    seed: int = setting(0, min=0, max=2**31 - 1, group=ADVANCED)

    def check(self) -> None:
        super().check()
        if self.n_max & (self.n_max - 1):
            raise ConfigError("n_max", f"{self.n_max} is not a power of 2 (1, 2, 4, …, 64)")
        if self.reward_run is None:
            try:
                rewards_builtin.check_params(self.builtin_reward, self.reward_params)
            except ValueError as exc:
                raise ConfigError("reward_params", str(exc)) from exc
        check_gold(self)


def scorer_of(store, rule: str, params: dict | None, run_id: int | None):
    """A reward as (scorer with .score(prompts, responses), label): a finished reward-model
    run (its own copy of its base) when `run_id` is given, else the built-in rule; (None,
    None) for neither."""
    if run_id is not None:
        from engine.training import reward as reward_mod

        run = store.get_run(int(run_id))
        if run["stage"] != "reward":
            raise ValueError(f"run {run['id']} is a {run['stage']} run, not a reward model")
        return reward_mod.load_scorer(store, int(run_id)), f"reward#{int(run_id)}"
    if not rule:
        return None, None
    scorer = rewards_builtin.BuiltinScorer(rule, params)
    return scorer, scorer.label()


def best_of_n_curve(proxy: list[list[float]], gold: list[list[float]] | None,
                    n_max: int) -> list[dict[str, float]]:
    """For n = 1, 2, 4, …, n_max: KL_bon(n) and the expected proxy (and gold) score of
    best-of-n by the proxy, each prompt's estimate from its n_max samples (the same samples
    for every n), averaged over prompts. proxy/gold: [prompts][n_max].

    With two prompts or more each score also gets its standard error over the prompts
    (`*_se`, objectives.mean_standard_error of the per-prompt estimates), and the gold score
    the paired SE of its gap to the last point (`bon_gold_gap_se`: the SE of the per-prompt
    differences gold_i(n) − gold_i(n_max)), the noise a fall after a peak is tested against.
    """
    golds = gold if gold is not None else proxy
    per_n: list[tuple[int, list[tuple[float, float]]]] = []
    n = 1
    while n <= n_max:
        per_n.append((n, [best_of_n_estimate(p, g, n) for p, g in zip(proxy, golds)]))
        n *= 2
    last_gold = [e[1] for e in per_n[-1][1]]
    out = []
    for n, ests in per_n:
        row = {"bon_n": float(n), "kl_bon": kl_best_of_n(n),
               "bon_proxy_score": sum(e[0] for e in ests) / len(ests)}
        se = mean_standard_error([e[0] for e in ests])
        if se is not None:
            row["bon_proxy_score_se"] = se
        if gold is not None:
            row["bon_gold_score"] = sum(e[1] for e in ests) / len(ests)
            se = mean_standard_error([e[1] for e in ests])
            if se is not None:
                row["bon_gold_score_se"] = se
                row["bon_gold_gap_se"] = mean_standard_error(
                    [e[1] - g for e, g in zip(ests, last_gold)])
        out.append(row)
    return out


def run_best_of_n(cfg: BestOfNConfig, ctx) -> dict:
    """The best_of_n stage: `fn(config, ctx) -> summary` (see engine.runtime.jobs)."""
    from engine import data
    from engine.inference.generate import SamplingConfig, generate
    from engine.inference.models import inference_cache

    store = ctx.store
    if cfg.dataset in data.SAMPLES:
        data.ensure_sample_datasets(store)
    split = None if cfg.split == "all" else cfg.split
    prompts = [p for p in data.prompts_of(store, cfg.dataset, split) if p]
    if not prompts:
        raise ValueError(f"dataset {cfg.dataset!r} has no prompts in split {cfg.split!r}")
    random.Random(cfg.seed).shuffle(prompts)
    prompts = prompts[:cfg.num_prompts]
    proxy_scorer, proxy_label = scorer_of(store, cfg.builtin_reward, cfg.reward_params,
                                          cfg.reward_run)
    gold_scorer, gold_label = scorer_of(store, cfg.gold_reward, cfg.gold_params,
                                        cfg.gold_reward_run)
    N = cfg.n_max
    ctx.log(f"best-of-n: {len(prompts)} prompts of {cfg.dataset!r} ({cfg.split}) × {N} "
            f"answers from {'SFT run #' + str(cfg.sft_run) if cfg.sft_run else 'the base'}"
            f" · proxy {proxy_label} · gold {gold_label or 'none'}")
    per_call = max(1, cfg.batch_size // N)   # prompts per generate call (N answers each)
    answers: list[list[str]] = []
    t0 = time.perf_counter()
    source = "base" if cfg.sft_run is None else int(cfg.sft_run)
    ctx.progress(0, len(prompts), "loading the model")
    with inference_cache.use(store, source, base_spec=cfg.model) as (model, tok):
        for start in range(0, len(prompts), per_call):
            ctx.check_cancel()
            chunk = prompts[start:start + per_call]
            scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                  top_p=cfg.top_p, seed=cfg.seed * 1_000_003 + start,
                                  batch_size=len(chunk), max_prompt_length=cfg.max_prompt_length)
            flat = generate(model, tok, chunk, scfg, num_return_sequences=N)
            answers += [flat[i * N:(i + 1) * N] for i in range(len(chunk))]
            ctx.progress(start + len(chunk), len(prompts), f"sampling {N} answers per prompt")
    seconds = time.perf_counter() - t0
    ctx.progress(len(prompts), len(prompts), "scoring")
    flat_prompts = [p for p in prompts for _ in range(N)]
    flat_answers = [a for group in answers for a in group]

    def by_prompt(values) -> list[list[float]]:
        values = [float(v) for v in values]
        return [values[i * N:(i + 1) * N] for i in range(len(prompts))]

    proxy = by_prompt(proxy_scorer.score(flat_prompts, flat_answers))
    gold = by_prompt(gold_scorer.score(flat_prompts, flat_answers)) if gold_scorer else None
    curve = best_of_n_curve(proxy, gold, N)
    for row in curve:
        ctx.metrics(int(row["bon_n"]), row)
    # the samples: one answer of each prompt (n = 1) and the proxy's pick of all N (n = N)
    for step, pick in ((1, lambda p: 0), (N, lambda p: max(range(N), key=lambda i: p[i]))):
        rows = []
        for k, prompt in enumerate(prompts):
            i = pick(proxy[k])
            rows.append({"prompt": prompt, "response": answers[k][i], "reward": proxy[k][i],
                         **({"gold": gold[k][i]} if gold is not None else {}), "n": step})
        ctx.samples(step, rows)
    last = curve[-1]
    best = max(curve, key=lambda r: r["bon_gold_score"]) if gold is not None else None
    return {
        "n_max": N, "prompts": len(prompts), "proxy": proxy_label, "gold": gold_label,
        "best_gold_n": int(best["bon_n"]) if best else None,
        "best_gold": best["bon_gold_score"] if best else None,
        "first_proxy": curve[0]["bon_proxy_score"], "last_proxy": last["bon_proxy_score"],
        "first_gold": curve[0].get("bon_gold_score"), "last_gold": last.get("bon_gold_score"),
        "final_kl": last["kl_bon"], "seconds_sampling": round(seconds, 2),
    }
