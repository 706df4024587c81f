"""What the PPO and GRPO pages share about the course's challenges (issue 16): the
token-limit warning, held-out vs training score with their error bars and a sentence on
whether the held-out score and the gap moved beyond their noise (issue 24), the gold score
beside the optimised one, the reward ensemble's disagreement and the answers' diversity."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.objectives import LATEX
from engine.training import heldout
from engine.training.ppo import EOS_WARN
from ui.common import (get_store, line_chart, metric_label, metrics_frame, run_label,
                       translated_choice)
from ui.i18n import t


def reward_model_choices(prefix: str, reward_runs: dict[int, dict]) -> dict:
    """Beyond the reward itself, from finished reward-model runs (an expander, nothing
    chosen by default): an ensemble (`reward_runs`, two or more, instead of one reward
    model) and a gold reward model (`gold_reward_run`, scored, never optimised)."""
    if not reward_runs:
        return {}
    with st.expander(t("ppo.more_rewards"), icon=":material/balance:"):
        st.caption(t("ppo.more_rewards_help"))
        c = st.columns(2)
        ensemble = translated_choice(c[0].multiselect, t("ppo.ensemble_runs"),
                                     list(reward_runs), f"{prefix}_reward_runs",
                                     lambda i: run_label(reward_runs[i]), default=[])
        gold = translated_choice(c[1].selectbox, t("ppo.gold_run"), [None, *reward_runs],
                                 f"{prefix}_gold_run", lambda i: t("ppo.no_gold_run")
                                 if i is None else run_label(reward_runs[i]))
    return {"reward_runs": list(ensemble), "gold_reward_run": gold}


def eos_warning(cfg: dict, last: dict) -> None:
    """Most answers of the last step hit the token limit: say so, naming the settings."""
    eos = last.get("eos_fraction")
    if eos is not None and eos < EOS_WARN:
        st.warning(t("ppo.warn_eos", eos=eos, max_new_tokens=cfg.get("max_new_tokens", "?"),
                     penalty=float(cfg.get("missing_eos_penalty") or 0.0)),
                   icon=":material/content_cut:")


def heldout_sentences(run_id: int) -> str | None:
    """Whether the held-out score moved beyond its noise, and whether the gap to the
    training prompts grew beyond it (engine.training.heldout), in the session's language."""
    said = heldout.sentences(heldout.change(heldout.points(get_store(), run_id)))
    return " ".join(t(s["key"], **s["params"]) for s in said) or None


def error_bars(run_id: int, names: list[str], k: float = 2.0) -> pd.DataFrame:
    """The points of `names` that have a stored SE (metric `<name>_se`) as error bars
    value ± k·SE (columns step, series, lo, hi; series named as line_chart names them)."""
    rows = get_store().get_metrics(run_id, [*names, *(f"{n}_se" for n in names)])
    by_key = {(r["name"], r["step"]): float(r["value"]) for r in rows}
    bars = [{"step": int(step), "series": metric_label(name), "lo": value - k * se,
             "hi": value + k * se}
            for (name, step), value in by_key.items() if name in names
            for se in [by_key.get((f"{name}_se", step))] if se is not None]
    return pd.DataFrame(bars, columns=["step", "series", "lo", "hi"])


def chart_with_formulas(run_id: int, names: list[str], title: str, formulas: list[str],
                        caption: str | None = None, smoothing: float = 0.0,
                        rule: float | None = None, errors: pd.DataFrame | None = None) -> None:
    """A run's metrics charted beside their formulas (LaTeX from objectives.LATEX) and a
    caption; `errors`: error bars (`error_bars`)."""
    chart, eq = st.columns([3, 2])
    with chart:
        line_chart(metrics_frame(run_id, names), title, smoothing=smoothing, rule=rule,
                   errors=errors)
    with eq:
        for formula in formulas:
            st.latex(formula)
        if caption:
            st.caption(caption)


def generalisation(run_id: int, cfg: dict) -> None:
    """Training vs held-out score, each point ±2 SE, the two formulas of the check, how
    each point was measured and whether the score (and the gap) moved beyond its noise."""
    evals = ["eval_train_score", "eval_heldout_score"]
    sentence = heldout_sentences(run_id)
    if sentence is None:
        chart_with_formulas(run_id, evals, t("ppo.chart_generalisation"), [], t("ppo.no_heldout"))
        return
    count = get_store().get_metrics(run_id, ["eval_heldout_answers"])
    per_prompt = int(cfg.get("heldout_answers") or 1)
    caption = sentence
    if count:
        answers = int(count[-1]["value"])
        caption = t("ppo.generalisation_caption", answers=answers, per_prompt=per_prompt,
                    prompts=answers // per_prompt) + " " + sentence
    chart_with_formulas(run_id, evals, t("ppo.chart_generalisation"),
                        [LATEX["prompt_clustered_mean"], LATEX["difference_with_se"]], caption,
                        errors=error_bars(run_id, evals))


def challenges(run_id: int, cfg: dict, score: str, smoothing: float = 0.0) -> None:
    """Generalisation, gold vs optimised score, ensemble disagreement, diversity: the charts
    of a PPO or GRPO run (`score`: the stage's mean reward metric)."""
    names = set(get_store().metric_names(run_id))
    generalisation(run_id, cfg)
    if "eval_heldout_kl" in names:
        chart_with_formulas(run_id, ["eval_heldout_kl"], t("ppo.chart_heldout_kl"), [LATEX["sequence_kl"]])
    if "gold_score" in names:
        gold = cfg.get("gold_reward") or (f"#{cfg['gold_reward_run']}"
                                          if cfg.get("gold_reward_run") is not None else "?")
        chart_with_formulas(run_id, [score, "gold_score", "eval_heldout_gold"], t("ppo.chart_gold"), [],
               t("ppo.gold_caption", gold=gold), smoothing)
    if "reward_ensemble_std" in names:
        chart_with_formulas(run_id, ["reward_ensemble_std"], t("ppo.chart_ensemble"),
               [LATEX["conservative_reward"]],
               t("ppo.ensemble_caption", k=len(cfg.get("reward_runs") or []),
                 aggregate=t("settings.reward_aggregate_" + cfg.get("reward_aggregate", "mean")),
                 lam=float(cfg.get("uncertainty_lambda", 1.0))), smoothing)
    chart_with_formulas(run_id, ["distinct_1", "distinct_2", "self_similarity"], t("ppo.chart_diversity"),
           [LATEX["distinct_n"], LATEX["self_similarity"]], t("ppo.diversity_caption"),
           smoothing)
