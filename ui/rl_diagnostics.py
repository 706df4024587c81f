"""What the PPO and GRPO pages share about the course's challenges (issue 16): the
token-limit warning, held-out vs training score with a sentence on the gap, the gold score
beside the optimised one, the reward ensemble's disagreement and the answers' diversity."""
from __future__ import annotations

import streamlit as st

from engine.objectives import LATEX
from engine.training.ppo import EOS_WARN
from ui.common import get_store, line_chart, metrics_frame, run_label, translated_choice
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


def gap_sentence(run_id: int) -> str | None:
    """The last held-out evaluation in words: both scores and their gap."""
    rows = get_store().get_metrics(run_id, ["eval_train_score", "eval_heldout_score"])
    by_step: dict[int, dict[str, float]] = {}
    for r in rows:
        by_step.setdefault(r["step"], {})[r["name"]] = r["value"]
    both = [s for s, v in by_step.items() if len(v) == 2]
    if not both:
        return None
    step = max(both)
    train, held = by_step[step]["eval_train_score"], by_step[step]["eval_heldout_score"]
    return t("ppo.gap_sentence", train=train, heldout=held, gap=train - held, step=step)


def chart_with_formulas(run_id: int, names: list[str], title: str, formulas: list[str],
                        caption: str | None = None, smoothing: float = 0.0,
                        rule: float | None = None) -> None:
    """A run's metrics charted beside their formulas (LaTeX from objectives.LATEX) and a
    caption."""
    chart, eq = st.columns([3, 2])
    with chart:
        line_chart(metrics_frame(run_id, names), title, smoothing=smoothing, rule=rule)
    with eq:
        for formula in formulas:
            st.latex(formula)
        if caption:
            st.caption(caption)


def challenges(run_id: int, cfg: dict, score: str, smoothing: float = 0.0) -> None:
    """Generalisation, gold vs optimised score, ensemble disagreement, diversity: the charts
    of a PPO or GRPO run (`score`: the stage's mean reward metric)."""
    names = set(get_store().metric_names(run_id))
    sentence = gap_sentence(run_id)
    chart_with_formulas(run_id, ["eval_train_score", "eval_heldout_score"], t("ppo.chart_generalisation"),
           [], sentence or t("ppo.no_heldout"))
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
