"""The course's challenges as recipes: each a plan of ordinary runs, its charts, and a
summary (a table and one sentence) computed from the numbers the runs stored.

    overoptimization   Gao, Schulman & Hilton (2022): a proxy reward model trained on pairs a
                       gold reward labelled; GRPO and best-of-n against the proxy, the gold
                       score logged beside it (does it peak and fall beyond its noise while
                       the proxy climbs?)
    clip_epsilon       PPO's clip ε ∈ {0.05, 0.2, ∞} at a high learning rate: clip fraction,
                       per-update KL, score variance, ratio histograms
    kl_penalty         β ∈ {0, 0.05, 0.3}: the reward-vs-KL frontier and the answers' diversity
    length_bias        a reward model trained on pairs where the longer answer always wins,
                       PPO against it, beside a reward model trained on length-balanced pairs
    uncertain_reward   k reward models (seeds) on one base; PPO against their mean and
                       against mean − λ·std; their disagreement per answer, and a gold score

The sentence never claims an effect the numbers do not show: each summary tests its effect
against a stated threshold and picks the "shows" or the "does not show" wording.
Defaults are sized for 10 to 20 minutes on a 2-core CPU with the embedded model
(docs/EXPERIMENTS.md records the measured times and outcomes); `uncertain_reward_gpu` is the
uncertain reward at the size where its effect is expected, for a GPU.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from engine.experiments.plan import Chart, PlannedRun, Recipe, ref, register
from engine.objectives import mean_standard_error
from engine.schema import ConfigError, StageConfig, setting
from engine.training import rewards_builtin

NO_CLIP = 1e6   # PPOConfig.cliprange's maximum: the clip never binds


def _s(name: str, default: Any = None, **meta) -> Any:
    """A recipe setting labelled from i18n/<lang>/recipes.json ("settings.<name>")."""
    return setting(default, label=f"recipes.settings.{name}",
                   help=f"recipes.settings.{name}_help", **meta)


# -- reading the stored numbers ------------------------------------------------------------
def series(store, run: dict | None, name: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of a run, by step (empty without the run)."""
    if not run:
        return []
    return sorted((int(m["step"]), float(m["value"]))
                  for m in store.get_metrics(run["id"], [name]) if m["name"] == name)


def values(store, run: dict | None, name: str) -> list[float]:
    return [v for _, v in series(store, run, name)]


def metric_values(store, run: dict | None, names: list[str]) -> dict[str, list[float]]:
    """{name: its values by step} for several metrics of a run."""
    out: dict[str, list[float]] = {n: [] for n in names}
    for _, m in by_step(store, run, names).items():
        for n, v in m.items():
            out[n].append(v)
    return out


def by_step(store, run: dict | None, names: list[str]) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    if run:
        for m in store.get_metrics(run["id"], names):
            out.setdefault(int(m["step"]), {})[m["name"]] = float(m["value"])
    return dict(sorted(out.items()))


def mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def head_tail(xs: list[float], k: int = 3) -> tuple[float | None, float | None]:
    """The mean of the first and of the last min(k, n/2) values (a noisy step's worth of
    samples is not a trend)."""
    if not xs:
        return None, None
    k = max(1, min(k, len(xs) // 2 or 1))
    return mean(xs[:k]), mean(xs[-k:])


def smooth(xs: list[float], k: int = 3) -> list[float]:
    """Centred moving average over k points (shorter at the ends)."""
    h = k // 2
    return [mean(xs[max(0, i - h):i + h + 1]) for i in range(len(xs))]


def rnd(x: float | None, digits: int = 2) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def ok(run: dict | None) -> bool:
    return bool(run) and run.get("status") == "succeeded"


def incomplete(runs: dict[str, dict], keys: list[str], table: list[dict]) -> dict:
    missing = [k for k in keys if not ok(runs.get(k))]
    return {"table": table, "sentence": {"key": "recipes.incomplete",
                                         "params": {"runs": ", ".join(missing)}}}


def line_charts(recipe: str, metrics: dict[str, str], runs: list[str]) -> list[Chart]:
    """One chart a metric over steps ({title suffix: metric}), the same runs on each."""
    return [Chart(f"recipes.{recipe}.chart_{title}", [metric], runs=list(runs))
            for title, metric in metrics.items()]


def noisy_peak_and_fall(xs: list[float], ys: list[float]) -> dict:
    """Where a noisy curve (one PPO batch a point, x not growing steadily) peaks and how
    much of its gain it gives back after the peak: the points sorted by x, the peak taken
    on their 3-point moving average, and the fall measured from that peak to the mean of
    the raw points beyond it. `fell` only
    when at least two points lie beyond the peak and the fall exceeds twice its standard
    error (the noise: the spread of the points around the moving average)."""
    pts = sorted(zip(xs, ys))
    x, y = [p[0] for p in pts], [p[1] for p in pts]
    sm = smooth(y)
    i = max(range(len(sm)), key=lambda j: sm[j])
    tail = y[i + 1:]
    noise = math.sqrt(sum((a - b) ** 2 for a, b in zip(y, sm)) / max(1, len(y) - 1))
    fall = sm[i] - (mean(tail) if tail else sm[i])
    se = noise * math.sqrt(1 / min(3, len(y)) + 1 / max(1, len(tail)))
    fell = len(tail) >= 2 and fall > max(0.01, 2 * se)
    gain = sm[i] - sm[0]
    return {"peak_x": x[i], "peak": sm[i], "first": sm[0], "last": mean(tail) if tail else sm[i],
            "last_x": x[-1], "fell": fell, "fall": fall, "fall_se": se,
            "given_back": (100.0 * fall / gain) if gain > 1e-9 else None}


# ==========================================================================================
# 1. Reward over-optimisation (Gao, Schulman & Hilton 2022)
# ==========================================================================================
@dataclass
class OveroptimizationSettings(StageConfig):
    """Size knobs of the over-optimisation recipe.

    Gao, Schulman & Hilton (2022) at the size of a 2-core CPU. A gold rule pays answers of
    about TARGET_WORDS words; a proxy reward model is trained on a few dozen pairs it
    labelled, of the base model's whole answers (pairs_max_new_tokens = 64: most hold 40 or
    more words), so nearly every pair is won by the shorter answer: the proxy learns
    "shorter is better" and nothing about where that stops. GRPO then optimises the proxy
    alone on 32-token answers (about 23 words at the start, near the target): it shortens
    them, and once they are shorter than the target the gold score falls while the proxy
    climbs. Best-of-n with the same proxy runs beside it: n_max samples per prompt, drawn
    once and reused for every n, reach KL log n_max − (n_max−1)/n_max (3.2 nats at 64),
    where GRPO goes to 10 nats and more. docs/EXPERIMENTS.md, recipe 1, records the design
    runs and the default run."""
    gold_reward: str = _s("gold_reward", "target_length", choices=tuple(rewards_builtin.names()))
    gold_params: dict = _s("gold_params", factory=lambda: {"target": TARGET_WORDS},
                           widget="page")
    sft_run: int | None = setting(None, widget="page", optional=True)   # None: the base
    num_pairs: int = _s("num_pairs", 64, min=4, max=100_000)
    # the pairs' answers are longer than the optimised ones: at 32 tokens about half the
    # pairs are won by the longer answer (most answers are cut near 23 words, a target of
    # 16 already lies among them) and the proxy learns no direction; at 64 tokens 3 pairs
    # in 4 are won by the shorter one
    pairs_max_new_tokens: int = _s("pairs_max_new_tokens", 64, min=1, max=4096)
    proxy_steps: int = _s("proxy_steps", 60, min=1, max=100_000)
    proxy_learning_rate: float = _s("proxy_learning_rate", 5e-4, min=1e-9, format="%.1e")
    bon_prompts: int = _s("bon_prompts", 8, min=0, max=10_000)       # 0: no best-of-n
    n_max: int = _s("n_max", 64, min=2, max=1024)
    rl_steps: int = _s("rl_steps", 24, min=0, max=100_000)           # 0: no GRPO
    rl_beta: float = _s("rl_beta", 0.02, min=0.0, max=100.0, step=0.01)
    learning_rate: float = _s("learning_rate", 1e-3, min=1e-9, format="%.1e")
    rl_prompts: int = _s("rl_prompts", 4, min=1, max=4096)           # GRPO prompts a step
    group_size: int = _s("group_size", 8, min=2, max=1024)           # answers per prompt
    max_new_tokens: int = _s("max_new_tokens", 32, min=1, max=4096)
    seed: int = setting(0, min=0, max=2**31 - 1)

    def check(self) -> None:
        super().check()
        try:
            rewards_builtin.check_params(self.gold_reward, self.gold_params)
        except ValueError as exc:
            raise ConfigError("gold_params", str(exc)) from exc
        if not self.bon_prompts and not self.rl_steps:
            raise ConfigError("rl_steps", "nothing optimises the proxy: set rl_steps (GRPO) "
                              "or bon_prompts (best-of-n) above 0")


TARGET_WORDS = 20
GOLD_PAIRS_DATASET = "gold-pairs-overoptimization"
FALL_SE = 2.0   # a fall counts as beyond noise when it exceeds FALL_SE standard errors
RL_KEYS = ("grpo", "ppo")   # the policy-optimisation run (groups made before issue 24: PPO)


def plan_overoptimization(s: OveroptimizationSettings) -> list[PlannedRun]:
    gold = {"gold_reward": s.gold_reward, "gold_params": dict(s.gold_params)}
    common = {"model": s.model, "sft_run": s.sft_run, "max_new_tokens": s.max_new_tokens,
              "seed": s.seed}
    plan = [
        PlannedRun("pairs", "gold_pairs",
                   {**common, **gold, "num_prompts": s.num_pairs,
                    "max_new_tokens": s.pairs_max_new_tokens,
                    "out_dataset": GOLD_PAIRS_DATASET, "overwrite": True},
                   label="gold pairs"),
        PlannedRun("proxy", "reward",
                   {"model": s.model, "dataset": GOLD_PAIRS_DATASET,
                    "max_steps": s.proxy_steps, "learning_rate": s.proxy_learning_rate,
                    "save_every": 0, "normalize_samples": 16, "seed": s.seed},
                   label="proxy reward model"),
    ]
    if s.bon_prompts:
        plan.append(PlannedRun("bon", "best_of_n",
                               {**common, **gold, "num_prompts": s.bon_prompts,
                                "n_max": s.n_max, "reward_run": ref("proxy")},
                               label="best-of-n"))
    if s.rl_steps:
        # the proxy alone is the reward: no rule, and no penalty for an answer cut at the
        # token limit (it would pay short answers by itself)
        plan.append(PlannedRun("grpo", "grpo",
                               {**common, **gold, "reward_run": ref("proxy"),
                                "builtin_rewards": [], "missing_eos_penalty": 0.0,
                                "max_steps": s.rl_steps, "beta": s.rl_beta,
                                "learning_rate": s.learning_rate, "batch_size": s.rl_prompts,
                                "group_size": s.group_size, "heldout_every": 0,
                                "save_every": 0},
                               label="GRPO"))
    return plan


def bon_peak_and_fall(points: list[dict]) -> dict:
    """Best-of-n's gold curve (rows of n, kl_bon, bon_gold_score and bon_gold_gap_se, in
    order of n): its peak, and whether the gold score fell after it beyond its noise.

    The noise is the paired standard error over the prompts of the gap between the peak's
    point and the last one (the same prompts and samples at every n). `fell` when the peak is
    not the last point, the SE is known, and the fall exceeds FALL_SE standard errors."""
    gold = [p["bon_gold_score"] for p in points]
    i = max(range(len(gold)), key=lambda j: gold[j])
    fall = gold[i] - gold[-1]
    se = points[i].get("bon_gold_gap_se")
    fell = i < len(gold) - 1 and se is not None and fall > FALL_SE * se
    return {"peak_n": int(points[i]["n"]), "peak_kl": points[i]["kl_bon"], "peak": gold[i],
            "first": gold[0], "last": gold[-1], "last_n": int(points[-1]["n"]),
            "last_kl": points[-1]["kl_bon"], "fall": fall, "fall_se": se, "fell": fell}


def rl_key_of(planned: list[str]) -> str | None:
    """The plan key of the recipe's policy-optimisation run, if it has one."""
    return next((k for k in RL_KEYS if k in planned), None)


def summarize_overoptimization(store, group: dict, runs: dict[str, dict]) -> dict:
    table: list[dict] = []
    bon = by_step(store, runs.get("bon"), ["kl_bon", "bon_proxy_score", "bon_gold_score",
                                           "bon_gold_score_se", "bon_gold_gap_se"])
    for n, m in bon.items():
        table.append({"run": "best-of-n", "point": f"n={n}", "kl": rnd(m.get("kl_bon"), 3),
                      "sqrt_kl": rnd(math.sqrt(max(0.0, m["kl_bon"])), 3)
                      if "kl_bon" in m else None,
                      "proxy": rnd(m.get("bon_proxy_score"), 3),
                      "gold": rnd(m.get("bon_gold_score"), 3),
                      "gold_se": rnd(m.get("bon_gold_score_se"), 3)})
    planned = [p["key"] for p in (group.get("config") or {}).get("plan", [])] or list(runs)
    rl_key = rl_key_of(planned)
    # GRPO logs the proxy as its reward model's component; PPO (older groups) as score_mean
    proxy_metric = "reward_model" if rl_key == "grpo" else "score_mean"
    rl = by_step(store, runs.get(rl_key), ["kl", proxy_metric, "gold_score"]) if rl_key else {}
    for step, m in rl.items():
        table.append({"run": rl_key, "point": f"step {step}", "kl": rnd(m.get("kl"), 3),
                      "sqrt_kl": rnd(math.sqrt(max(0.0, m["kl"])), 3) if "kl" in m else None,
                      "proxy": rnd(m.get(proxy_metric), 3),
                      "gold": rnd(m.get("gold_score"), 3)})
    with_bon = "bon" in planned
    keys = ["pairs", "proxy"] + (["bon"] if with_bon else []) + ([rl_key] if rl_key else [])
    bon_pts = [{"n": n, **m} for n, m in bon.items()
               if {"kl_bon", "bon_proxy_score", "bon_gold_score"} <= set(m)]
    rl_pts = [(m["kl"], m[proxy_metric], m["gold_score"]) for m in rl.values()
              if {"kl", proxy_metric, "gold_score"} <= set(m)]
    if (with_bon and len(bon_pts) < 2) or (rl_key and len(rl_pts) < 2):
        return incomplete(runs, keys, table)
    params: dict = {}
    key = "recipes.overoptimization.sentence"
    if with_bon:
        b = bon_peak_and_fall(bon_pts)
        prompts = ((runs.get("bon") or {}).get("summary") or {}).get("prompts")
        params.update({
            "bon_proxy0": rnd(bon_pts[0]["bon_proxy_score"]),
            "bon_proxy1": rnd(bon_pts[-1]["bon_proxy_score"]),
            "bon_peak_n": b["peak_n"], "bon_peak_kl": rnd(b["peak_kl"]),
            "bon_peak": rnd(b["peak"]), "bon_first": rnd(b["first"]),
            "bon_last": rnd(b["last"]), "bon_last_n": b["last_n"],
            "bon_last_kl": rnd(b["last_kl"]), "bon_fall": rnd(b["fall"]),
            "bon_fall_se": rnd(b["fall_se"], 3) if b["fall_se"] is not None else "?",
            "bon_prompts": prompts if prompts is not None else "?"})
        # the gold score's highest point is the last one: it rose with the proxy, no peak
        key += "_bon_" + ("fell" if b["fell"] else "rose" if b["peak_n"] == b["last_n"]
                          else "held")
    if rl_key:
        # one batch a point and a KL that goes back and forth: the gold score in order of
        # KL, tested against its own noise
        p = noisy_peak_and_fall([q[0] for q in rl_pts], [q[2] for q in rl_pts])
        proxy_first, proxy_last = head_tail([q[1] for q in rl_pts])
        params.update({"rl": "GRPO" if rl_key == "grpo" else "PPO", "rl_steps": len(rl_pts),
                       "rl_proxy0": rnd(proxy_first), "rl_proxy1": rnd(proxy_last),
                       "rl_peak_kl": rnd(p["peak_x"], 1), "rl_peak": rnd(p["peak"]),
                       "rl_first": rnd(p["first"]), "rl_last": rnd(p["last"]),
                       "rl_last_kl": rnd(p["last_x"], 1), "rl_fall": rnd(p["fall"]),
                       "rl_fall_se": rnd(p["fall_se"], 3)})
        # a fall from the very first point is told apart: no rise came before it
        start = p["peak_x"] == min(q[0] for q in rl_pts)
        key += "_rl_" + ("held" if not p["fell"] else "fell_from_start" if start else "fell")
    return {"table": table, "sentence": {"key": key, "params": params}}


register(Recipe(
    name="overoptimization", settings_cls=OveroptimizationSettings,
    plan=plan_overoptimization,
    charts=[Chart("recipes.overoptimization.chart_bon", ["bon_proxy_score", "bon_gold_score"],
                  x="kl_bon", x_transform="sqrt", runs=["bon"]),
            Chart("recipes.overoptimization.chart_grpo", ["reward_model", "gold_score"],
                  x="kl", x_transform="sqrt", runs=["grpo"]),
            # groups made before the GRPO leg (issue 24) optimised the proxy with PPO
            Chart("recipes.overoptimization.chart_ppo", ["score_mean", "gold_score"],
                  x="kl", x_transform="sqrt", runs=["ppo"])],
    summarize=summarize_overoptimization, formula="kl_best_of_n", minutes=17))


# ==========================================================================================
# 2. PPO instability and the clip ε
# ==========================================================================================
@dataclass
class RulePPOSettings(StageConfig):
    """What the recipes whose PPO runs optimise a built-in rule share."""
    max_steps: int = _s("ppo_steps", 12, min=1, max=100_000)
    learning_rate: float = _s("learning_rate", 1e-3, min=1e-9, format="%.1e")
    batch_size: int = _s("batch_size", 8, min=1, max=4096)
    builtin_reward: str = _s("builtin_reward", "ends_with_period",
                             choices=tuple(rewards_builtin.names()))
    max_new_tokens: int = _s("max_new_tokens", 32, min=1, max=4096)
    seed: int = setting(0, min=0, max=2**31 - 1)


def rule_ppo_config(s: RulePPOSettings, **extra) -> dict:
    """The PPO config the planned runs of such a recipe share."""
    return {"model": s.model, "max_steps": s.max_steps, "learning_rate": s.learning_rate,
            "batch_size": s.batch_size, "builtin_reward": s.builtin_reward,
            "max_new_tokens": s.max_new_tokens, "seed": s.seed, "heldout_every": 0,
            "save_every": 0, **extra}


@dataclass
class ClipEpsilonSettings(RulePPOSettings):
    """Size knobs of the clip-ε recipe (ε itself takes 0.05, 0.2 and ∞)."""
    max_steps: int = _s("ppo_steps", 8, min=1, max=100_000)
    learning_rate: float = _s("learning_rate", 3e-3, min=1e-9, format="%.1e")
    ppo_epochs: int = _s("ppo_epochs", 4, min=1, max=64)
    minibatches: int = _s("minibatches", 4, min=1, max=1024)

    def check(self) -> None:
        super().check()
        if self.batch_size % self.minibatches:
            raise ConfigError("minibatches", f"batch_size ({self.batch_size}) must be a "
                              f"multiple of minibatches ({self.minibatches})")


EPSILONS = (0.05, 0.2, NO_CLIP)


def eps_key(eps: float) -> str:
    return "ppo_eps_inf" if eps >= NO_CLIP else f"ppo_eps_{eps:g}"


def sig(x: float | None, digits: int = 3) -> float | int | None:
    """A number for a sentence: `digits` significant digits, whole numbers from 1000 up."""
    if x is None:
        return None
    if abs(x) >= 1000:
        return int(round(x))
    return float(f"{x:.{digits}g}")


def plan_clip_epsilon(s: ClipEpsilonSettings) -> list[PlannedRun]:
    base = rule_ppo_config(s, ppo_epochs=s.ppo_epochs, minibatches=s.minibatches)
    return [PlannedRun(eps_key(e), "ppo", {**base, "cliprange": e},
                       label="ε = ∞" if e >= NO_CLIP else f"ε = {e:g}",
                       varied={"cliprange": e}) for e in EPSILONS]


def summarize_clip_epsilon(store, group: dict, runs: dict[str, dict]) -> dict:
    table, stats = [], {}
    for e in EPSILONS:
        v = metric_values(store, runs.get(eps_key(e)), ["approx_kl", "clipfrac", "score_std",
                                                         "ratio_min", "ratio_max",
                                                         "score_mean", "kl"])
        akl = v["approx_kl"]
        row = {"run": "∞" if e >= NO_CLIP else f"{e:g}", "cliprange": e,
               "clipfrac_mean": rnd(mean(v["clipfrac"]), 3),
               "approx_kl_mean": rnd(mean(akl), 4),
               "approx_kl_max": rnd(max(akl), 4) if akl else None,
               "score_std_mean": rnd(mean(v["score_std"]), 3),
               "ratio_min": rnd(min(v["ratio_min"]), 3) if v["ratio_min"] else None,
               "ratio_max": rnd(max(v["ratio_max"]), 3) if v["ratio_max"] else None,
               "score_last": rnd((v["score_mean"] or [None])[-1], 3),
               "kl_last": rnd((v["kl"] or [None])[-1], 3)}
        table.append(row)
        stats[e] = row
    if any(stats[e]["approx_kl_mean"] is None for e in EPSILONS):
        return incomplete(runs, [eps_key(e) for e in EPSILONS], table)
    lo, mid, inf = stats[0.05], stats[0.2], stats[NO_CLIP]
    ratio = inf["approx_kl_mean"] / max(lo["approx_kl_mean"], 1e-6)
    params = {"kl_inf": sig(inf["approx_kl_mean"]), "kl_inf_max": sig(inf["approx_kl_max"]),
              "kl_lo": sig(lo["approx_kl_mean"]), "kl_mid": sig(mid["approx_kl_mean"]),
              "ratio": rnd(ratio, 1), "cf_lo": rnd(100 * lo["clipfrac_mean"], 0),
              "cf_mid": rnd(100 * mid["clipfrac_mean"], 0),
              "rmin_inf": sig(inf["ratio_min"]), "rmax_inf": sig(inf["ratio_max"]),
              "rmin_lo": sig(lo["ratio_min"]), "rmax_lo": sig(lo["ratio_max"]),
              "std_inf": inf["score_std_mean"], "std_lo": lo["score_std_mean"],
              "score_inf": inf["score_last"], "score_lo": lo["score_last"]}
    # the effect: without a clip each update moves the policy clearly further
    shows = ratio >= 1.5 and inf["approx_kl_mean"] > 1e-3
    key = "recipes.clip_epsilon.sentence_shows" if shows else \
        "recipes.clip_epsilon.sentence_no_effect"
    return {"table": table, "sentence": {"key": key, "params": params}}


register(Recipe(
    name="clip_epsilon", settings_cls=ClipEpsilonSettings, plan=plan_clip_epsilon,
    charts=[Chart("recipes.clip_epsilon.chart_clipfrac", ["clipfrac"]),
            Chart("recipes.clip_epsilon.chart_approx_kl", ["approx_kl"]),
            Chart("recipes.clip_epsilon.chart_score_std", ["score_std"]),
            Chart("recipes.clip_epsilon.chart_ratio", ["ratio_hist"], kind="hist")],
    summarize=summarize_clip_epsilon, formula="clipped_policy_loss", minutes=10))


# ==========================================================================================
# 3. Why the KL penalty
# ==========================================================================================
@dataclass
class KLPenaltySettings(RulePPOSettings):
    """Size knobs of the KL-penalty recipe (β itself takes 0, 0.05 and 0.3)."""


BETAS = (0.0, 0.05, 0.3)


def beta_key(beta: float) -> str:
    return f"ppo_beta_{beta:g}"


def plan_kl_penalty(s: KLPenaltySettings) -> list[PlannedRun]:
    return [PlannedRun(beta_key(b), "ppo", rule_ppo_config(s, beta=b), label=f"β = {b:g}",
                       varied={"beta": b}) for b in BETAS]


def last_sample(store, run: dict | None) -> str | None:
    """The first sample answer of the run's last sampled step."""
    if not run:
        return None
    rows = store.get_samples(run["id"])
    if not rows:
        return None
    last = max(r["step"] for r in rows)
    return next(r["response"] for r in rows if r["step"] == last)


def summarize_kl_penalty(store, group: dict, runs: dict[str, dict]) -> dict:
    table, stats = [], {}
    for b in BETAS:
        run = runs.get(beta_key(b))
        v = metric_values(store, run, ["distinct_1", "distinct_2", "self_similarity", "kl",
                                       "score_mean"])
        d1, d2, sim = v["distinct_1"], v["distinct_2"], v["self_similarity"]
        kl, score = v["kl"], v["score_mean"]
        row = {"run": f"β={b:g}", "beta": b,
               "kl_last": rnd(head_tail(kl)[1], 3), "score_last": rnd(head_tail(score)[1], 3),
               "distinct_2_first": rnd(head_tail(d2)[0], 3),
               "distinct_2_last": rnd(head_tail(d2)[1], 3),
               "distinct_1_last": rnd(head_tail(d1)[1], 3),
               "self_similarity_first": rnd(head_tail(sim)[0], 3),
               "self_similarity_last": rnd(head_tail(sim)[1], 3),
               "sample": last_sample(store, run)}
        table.append(row)
        stats[b] = row
    if any(stats[b]["kl_last"] is None for b in BETAS):
        return incomplete(runs, [beta_key(b) for b in BETAS], table)
    free, mid, tight = stats[0.0], stats[0.05], stats[0.3]
    params = {"kl_free": rnd(free["kl_last"]), "kl_mid": rnd(mid["kl_last"]),
              "kl_tight": rnd(tight["kl_last"]), "score_free": rnd(free["score_last"]),
              "score_mid": rnd(mid["score_last"]), "score_tight": rnd(tight["score_last"]),
              "d2_free0": rnd(free["distinct_2_first"]), "d2_free1": rnd(free["distinct_2_last"]),
              "d2_tight0": rnd(tight["distinct_2_first"]),
              "d2_tight1": rnd(tight["distinct_2_last"]),
              "sim_free": free["self_similarity_last"],
              "sim_tight": tight["self_similarity_last"]}
    # the effect: without the penalty the policy drifts clearly further from the reference
    shows = free["kl_last"] > 0.5 and free["kl_last"] >= 1.5 * max(tight["kl_last"], 0.0)
    if not shows:
        key = "recipes.kl_penalty.sentence_no_effect"
    else:
        lost = None not in (free["distinct_2_first"], free["distinct_2_last"],
                            tight["distinct_2_last"]) and \
            free["distinct_2_last"] < free["distinct_2_first"] - 0.05 and \
            free["distinct_2_last"] < tight["distinct_2_last"] - 0.05
        key = "recipes.kl_penalty.sentence_shows_diversity" if lost else \
            "recipes.kl_penalty.sentence_shows"
    return {"table": table, "sentence": {"key": key, "params": params}}


register(Recipe(
    name="kl_penalty", settings_cls=KLPenaltySettings, plan=plan_kl_penalty,
    charts=[Chart("recipes.kl_penalty.chart_frontier", ["score_mean"], x="kl"),
            Chart("recipes.kl_penalty.chart_kl", ["kl"]),
            Chart("recipes.kl_penalty.chart_distinct", ["distinct_1", "distinct_2"]),
            Chart("recipes.kl_penalty.chart_similarity", ["self_similarity"])],
    summarize=summarize_kl_penalty, formula="per_token_rewards", minutes=10))


# ==========================================================================================
# 4. Length bias
# ==========================================================================================
@dataclass
class RewardPPOSettings(StageConfig):
    """What the recipes that train reward models, then PPO against them, share."""
    reward_steps: int = _s("reward_steps", 20, min=1, max=100_000)
    ppo_steps: int = _s("ppo_steps", 12, min=1, max=100_000)
    learning_rate: float = _s("learning_rate", 1e-3, min=1e-9, format="%.1e")
    beta: float = _s("ppo_beta", 0.02, min=0.0, max=100.0, step=0.01)
    batch_size: int = _s("batch_size", 8, min=1, max=4096)
    max_new_tokens: int = _s("max_new_tokens", 32, min=1, max=4096)
    seed: int = setting(0, min=0, max=2**31 - 1)


def reward_config(s: RewardPPOSettings, dataset: str, seed: int) -> dict:
    return {"model": s.model, "dataset": dataset, "max_steps": s.reward_steps,
            "save_every": 0, "normalize_samples": 16, "seed": seed}


def reward_ppo_config(s: RewardPPOSettings, **extra) -> dict:
    return {"model": s.model, "max_steps": s.ppo_steps, "learning_rate": s.learning_rate,
            "beta": s.beta, "batch_size": s.batch_size, "max_new_tokens": s.max_new_tokens,
            "seed": s.seed, "heldout_every": 0, "save_every": 0, **extra}


@dataclass
class LengthBiasSettings(RewardPPOSettings):
    """Size knobs of the length-bias recipe."""
    biased_dataset: str = _s("biased_dataset", "sample-preferences-longer", widget="page")
    balanced_dataset: str = _s("balanced_dataset", "sample-preferences", widget="page")
    reward_steps: int = _s("reward_steps", 30, min=1, max=100_000)
    max_new_tokens: int = _s("max_new_tokens", 64, min=1, max=4096)


def plan_length_bias(s: LengthBiasSettings) -> list[PlannedRun]:
    return [
        PlannedRun("rm_biased", "reward", reward_config(s, s.biased_dataset, s.seed),
                   label="reward model: longer wins"),
        PlannedRun("rm_balanced", "reward", reward_config(s, s.balanced_dataset, s.seed),
                   label="reward model: length-balanced"),
        PlannedRun("ppo_biased", "ppo", reward_ppo_config(s, reward_run=ref("rm_biased")),
                   label="PPO vs the biased reward"),
        PlannedRun("ppo_balanced", "ppo", reward_ppo_config(s, reward_run=ref("rm_balanced")),
                   label="PPO vs the balanced reward"),
    ]


def slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of value against step (tokens per step)."""
    if len(points) < 2:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = mean(xs), mean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else None


def summarize_length_bias(store, group: dict, runs: dict[str, dict]) -> dict:
    table, stats = [], {}
    for key in ("rm_biased", "rm_balanced"):
        run = runs.get(key)
        summ = (run or {}).get("summary") or {}
        table.append({"run": key, "eval_accuracy": rnd(summ.get("eval_accuracy"), 3),
                      "length_correlation": rnd(summ.get("length_correlation"), 2),
                      "longer_is_chosen": rnd(summ.get("longer_is_chosen"), 2)})
        stats[key] = summ
    for key in ("ppo_biased", "ppo_balanced"):
        run = runs.get(key)
        length = series(store, run, "response_length")
        l0, l1 = head_tail([v for _, v in length])
        s0, s1 = head_tail(values(store, run, "score_mean"))
        eos = values(store, run, "eos_fraction")
        row = {"run": key, "length_first": rnd(l0, 1), "length_last": rnd(l1, 1),
               "length_slope": rnd(slope(length), 2), "score_first": rnd(s0, 3),
               "score_last": rnd(s1, 3), "eos_fraction_last": rnd(eos[-1], 2) if eos else None}
        table.append(row)
        stats[key] = row
    if any(stats[k]["length_first"] is None for k in ("ppo_biased", "ppo_balanced")):
        return incomplete(runs, ["rm_biased", "rm_balanced", "ppo_biased", "ppo_balanced"],
                          table)
    b, u = stats["ppo_biased"], stats["ppo_balanced"]
    grow_b = b["length_last"] - b["length_first"]
    grow_u = u["length_last"] - u["length_first"]
    params = {"b0": b["length_first"], "b1": b["length_last"], "u0": u["length_first"],
              "u1": u["length_last"], "rho_b": rnd(stats["rm_biased"].get("length_correlation"), 2),
              "rho_u": rnd(stats["rm_balanced"].get("length_correlation"), 2),
              "slope_b": b["length_slope"], "slope_u": u["length_slope"],
              "steps": len(values(store, runs.get("ppo_biased"), "response_length"))}
    # the effect: answers grow by 2+ tokens more against the biased reward than against
    # the balanced one
    shows = grow_b >= 2.0 and grow_b >= grow_u + 2.0
    key = "recipes.length_bias.sentence_shows" if shows else \
        "recipes.length_bias.sentence_no_effect"
    return {"table": table, "sentence": {"key": key, "params": params}}


register(Recipe(
    name="length_bias", settings_cls=LengthBiasSettings, plan=plan_length_bias,
    charts=line_charts("length_bias", {"length": "response_length", "score": "score_mean"},
                       ["ppo_biased", "ppo_balanced"]),
    summarize=summarize_length_bias, formula="pairwise_loss", minutes=10))


# ==========================================================================================
# 5. An uncertain reward
# ==========================================================================================
@dataclass
class UncertainRewardSettings(RewardPPOSettings):
    """Size knobs of the uncertain-reward recipe (the 2-core CPU size: about 12 minutes)."""
    k: int = _s("ensemble_k", 3, min=2, max=16)
    dataset: str = _s("reward_dataset", "sample-preferences", widget="page")
    ppo_steps: int = _s("ppo_steps", 10, min=1, max=100_000)
    uncertainty_lambda: float = _s("uncertainty_lambda", 1.0, min=0.0, max=100.0, step=0.1)
    gold_reward: str = _s("gold_reward", "ends_with_period",
                          choices=("", *rewards_builtin.names()))


@dataclass
class UncertainRewardGPUSettings(UncertainRewardSettings):
    """The uncertain reward at the size where the conservative objective is expected to
    matter (for a GPU, not measured on the 2-core CPU): 5 members (Coste et al. 2023 found
    4–5 enough), a small KL penalty (their β = 0.01), and PPO long and wide enough for the
    mean-optimising policy to leave the region its reward models agree on."""
    k: int = _s("ensemble_k", 5, min=2, max=16)
    reward_steps: int = _s("reward_steps", 200, min=1, max=100_000)
    ppo_steps: int = _s("ppo_steps", 300, min=1, max=100_000)
    beta: float = _s("ppo_beta", 0.01, min=0.0, max=100.0, step=0.01)
    batch_size: int = _s("batch_size", 64, min=1, max=4096)
    max_new_tokens: int = _s("max_new_tokens", 64, min=1, max=4096)


def plan_uncertain_reward(s: UncertainRewardSettings) -> list[PlannedRun]:
    members = [PlannedRun(f"rm_{i}", "reward", reward_config(s, s.dataset, s.seed + i),
                          label=f"reward model {i + 1} (seed {s.seed + i})")
               for i in range(s.k)]
    ppo = reward_ppo_config(s, reward_runs=[ref(m.key) for m in members],
                            gold_reward=s.gold_reward)
    return members + [
        PlannedRun("ppo_mean", "ppo", {**ppo, "reward_aggregate": "mean"},
                   label="PPO vs the mean", varied={"reward_aggregate": "mean"}),
        PlannedRun("ppo_conservative", "ppo",
                   {**ppo, "reward_aggregate": "conservative",
                    "uncertainty_lambda": s.uncertainty_lambda},
                   label=f"PPO vs mean − {s.uncertainty_lambda:g}·σ",
                   varied={"reward_aggregate": "conservative"}),
    ]


def window_size(steps: int) -> int:
    """How many steps a window of `window_mean_se` holds: half the run, at least 2."""
    return max(2, steps // 2) if steps >= 2 else steps


def window_mean_se(xs: list[float], first: bool = False) -> tuple[float | None, float | None]:
    """The mean of the last (or first) half of a run's per-step values (at least 2 steps)
    and its standard error over those steps (objectives.mean_standard_error: each step's
    value is one batch's mean, the steps are the unit that varies)."""
    if not xs:
        return None, None
    k = window_size(len(xs))
    part = xs[:k] if first else xs[-k:]
    return mean(part), mean_standard_error(part)


def beyond_noise(diff: float | None, *ses: float | None) -> tuple[float | None, bool]:
    """The SE of a difference of independent means, sqrt(Σ SE²), and whether `diff`
    exceeds FALL_SE of them (False when a SE is unknown)."""
    if diff is None or any(se is None for se in ses):
        return None, False
    se = math.sqrt(sum(x * x for x in ses))
    return se, diff > FALL_SE * se


def summarize_uncertain_reward(store, group: dict, runs: dict[str, dict]) -> dict:
    table, stats = [], {}
    members = sorted(k for k in runs if k.startswith("rm_"))
    for key in members:
        summ = runs[key].get("summary") or {}
        table.append({"run": key, "seed": (runs[key].get("config") or {}).get("seed"),
                      "eval_accuracy": rnd(summ.get("eval_accuracy"), 3)})
    for key in ("ppo_mean", "ppo_conservative"):
        run = runs.get(key)
        std = values(store, run, "reward_ensemble_std")
        s0, s0_se = window_mean_se(std, first=True)
        s1, s1_se = window_mean_se(std)
        gold = values(store, run, "gold_score")
        g1, g1_se = window_mean_se(gold)
        row = {"run": key, "ensemble_std_first": rnd(s0, 3), "ensemble_std_first_se": rnd(s0_se, 3),
               "ensemble_std_last": rnd(s1, 3), "ensemble_std_last_se": rnd(s1_se, 3),
               "ensemble_std_mean": rnd(mean(std), 3),
               "score_last": rnd(head_tail(values(store, run, "score_mean"))[1], 3),
               "kl_last": rnd(head_tail(values(store, run, "kl"))[1], 3),
               "gold_last": rnd(g1, 3) if gold else None,
               "gold_last_se": rnd(g1_se, 3) if gold else None,
               "steps": len(std)}
        table.append(row)
        stats[key] = {**row, "raw": (s0, s0_se, s1, s1_se, g1, g1_se)}
    if any(stats[k]["ensemble_std_mean"] is None for k in ("ppo_mean", "ppo_conservative")):
        return incomplete(runs, members + ["ppo_mean", "ppo_conservative"], table)
    m, c = stats["ppo_mean"], stats["ppo_conservative"]
    (m0, m0_se, m1, m1_se, mg, mg_se), (_, _, c1, c1_se, cg, cg_se) = m["raw"], c["raw"]
    cfg = runs["ppo_conservative"].get("config") or {}
    # did the mean-optimising run reach answers the members disagree on (its σ rose)?
    rise_se, _ = beyond_noise(m1 - m0, m0_se, m1_se)
    # the effect: the conservative run ends where the members disagree less
    d_std_se, lower = beyond_noise(m1 - c1, m1_se, c1_se)
    with_gold = mg is not None and cg is not None
    d_gold_se = beyond_noise(cg - mg, mg_se, cg_se)[0] if with_gold else None
    gpu = UncertainRewardGPUSettings()
    params = {"k": len(members), "lam": cfg.get("uncertainty_lambda"),
              "steps": m["steps"], "steps_half": window_size(m["steps"]),
              "batch": cfg.get("batch_size"), "beta": cfg.get("beta"),
              "std0": rnd(m0, 3), "std_mean": rnd(m1, 3), "std_mean_se": rnd(m1_se, 3),
              "std_cons": rnd(c1, 3), "std_cons_se": rnd(c1_se, 3),
              "d_std": rnd(m1 - c1, 3), "d_std_se": rnd(d_std_se, 3),
              "rise": rnd(m1 - m0, 3), "rise_se": rnd(rise_se, 3),
              "kl_mean": m["kl_last"], "kl_cons": c["kl_last"],
              "gold_mean": rnd(mg, 3), "gold_mean_se": rnd(mg_se, 3),
              "gold_cons": rnd(cg, 3), "gold_cons_se": rnd(cg_se, 3),
              "d_gold": rnd(cg - mg, 3) if with_gold else None, "d_gold_se": rnd(d_gold_se, 3),
              "gpu_k": gpu.k, "gpu_steps": gpu.ppo_steps, "gpu_batch": gpu.batch_size,
              "gpu_beta": gpu.beta}
    params = {k: ("?" if v is None else v) for k, v in params.items()}
    # the sentence claims the effect on σ only beyond its noise; the gold scores and the
    # rise of σ under the mean come with their standard errors for the reader to weigh
    key = "recipes.uncertain_reward.sentence_" + ("shows" if lower else "no_effect") + \
        ("_gold" if with_gold else "")
    return {"table": table, "sentence": {"key": key, "params": params}}


UNCERTAIN_CHARTS = line_charts("uncertain_reward", {"std": "reward_ensemble_std",
                                                    "score": "score_mean", "gold": "gold_score"},
                               ["ppo_mean", "ppo_conservative"])
register(Recipe(
    name="uncertain_reward", settings_cls=UncertainRewardSettings, plan=plan_uncertain_reward,
    charts=UNCERTAIN_CHARTS, summarize=summarize_uncertain_reward,
    formula="conservative_reward", minutes=12))
# the same recipe at the size where its effect is expected: offered for a GPU
register(Recipe(
    name="uncertain_reward_gpu", settings_cls=UncertainRewardGPUSettings,
    plan=plan_uncertain_reward, charts=UNCERTAIN_CHARTS, summarize=summarize_uncertain_reward,
    formula="conservative_reward", minutes=40, device="gpu"))
