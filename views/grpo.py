"""GRPO / RLOO: G answers per prompt, each judged against its own group (no value function),
with several rewards at once; every quantity beside its formula, and the groups side by side."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.inference.models import display_name
from engine.objectives import LATEX, trend_verdict
from engine.training import rewards_builtin
from engine.training.grpo import MODEL_REWARD, GRPOConfig, reward_trend
from engine.training.ppo import CLIPFRAC_WARN, KL_WARN
from ui.common import (datasets_or_hint, get_store, job_panel, line_chart, metrics_frame,
                       model_spec, reward_name, run_label, translated_choice)
from ui.i18n import t
from ui.rl_diagnostics import (challenges, chart_with_formulas, eos_warning,
                               reward_model_choices)
from ui.stage_page import PageFields, StagePage, start_and_prompts

store = get_store()
defaults = GRPOConfig()
ZERO_SIGNAL_WARN = 0.5   # share of groups with equal rewards above which the page warns
ADVANTAGE_LATEX = {"grpo": LATEX["grpo_advantages"], "dr_grpo": LATEX["dr_grpo_advantages"],
                   "rloo": LATEX["rloo_advantages"]}


# -- a new run -----------------------------------------------------------------------------
def _rule_params(name: str) -> dict:
    """The parameters of one built-in rule (labels from the PPO page's catalogue)."""
    out = {}
    params = rewards_builtin.defaults(name)
    for col, (key, value) in zip(st.columns(max(1, len(params))), params.items()):
        wkey = f"grpo_param_{name}_{key}"
        if isinstance(value, list):
            text = col.text_input(t(f"ppo.param_{key}"), ", ".join(value), key=wkey)
            out[key] = [w.strip() for w in text.split(",") if w.strip()]
        elif key == "unit":
            out[key] = translated_choice(col.selectbox, t("ppo.param_unit"), ["words", "chars"],
                                         wkey, lambda u: t("ppo.unit_" + u))
        elif isinstance(value, int):
            out[key] = int(col.number_input(t(f"ppo.param_{key}"), 1, 10_000, value, key=wkey))
        else:
            out[key] = col.text_input(t(f"ppo.param_{key}"), str(value), key=wkey)
    return out


def _rewards() -> tuple[list[str], dict, list[float], int | None] | None:
    """The rewards and their weights: built-in rules (a multiselect, one weight and the
    parameters of each) and/or a trained reward model with its weight."""
    st.markdown("**" + t("grpo.rewards") + "**")
    st.caption(t("grpo.rewards_help"))
    rules = translated_choice(st.multiselect, t("grpo.rules"), rewards_builtin.names(),
                              "grpo_rules", lambda n: t("ppo.rw_" + n),
                              default=defaults.builtin_rewards)
    params, weights = {}, []
    for name in rules:
        with st.container(border=True):
            c = st.columns([3, 1])
            c[0].markdown(f"**{t('ppo.rw_' + name)}** — {t('ppo.rw_' + name + '_help')}")
            weights.append(float(c[1].number_input(t("grpo.weight"), -100.0, 100.0, 1.0, 0.1,
                                                   key=f"grpo_weight_{name}")))
            if rewards_builtin.defaults(name):
                params[name] = _rule_params(name)
    reward_runs = {r["id"]: r for r in store.list_runs(stage="reward", status="succeeded")}
    reward_run = None
    if reward_runs:
        c = st.columns([3, 1])
        reward_run = translated_choice(c[0].selectbox, t("grpo.reward_run"),
                                       [None, *reward_runs], "grpo_reward_run",
                                       lambda i: t("grpo.no_reward_model") if i is None
                                       else run_label(reward_runs[i]))
        if reward_run is not None:
            weights.append(float(c[1].number_input(t("grpo.weight"), -100.0, 100.0, 1.0, 0.1,
                                                   key=f"grpo_weight_{MODEL_REWARD}")))
    else:
        st.caption(t("grpo.no_reward_runs"))
    if not rules and reward_run is None:
        st.info(t("grpo.pick_a_reward"))
        return None
    return rules, params, weights, reward_run


def page_fields() -> PageFields | None:
    datasets = datasets_or_hint(None, "grpo")
    if not datasets:
        return None
    spec = model_spec()
    st.caption(t("grpo.model_line", name=display_name(spec), spec=spec))
    sft_choice, dataset, model = start_and_prompts("grpo", datasets, defaults.dataset)
    rewards = _rewards()
    if rewards is None:
        return None
    rules, params, weights, reward_run = rewards
    more = reward_model_choices(
        "grpo", {r["id"]: r for r in store.list_runs(stage="reward", status="succeeded")})
    if more.get("reward_runs"):  # the ensemble is the model reward (weight 1 if none given)
        if reward_run is None:
            weights = [*weights, 1.0]
        reward_run = None
    parents = [i for i in (sft_choice, reward_run, more.get("gold_reward_run")) if i is not None]
    return PageFields(values={"model": model, "sft_run": sft_choice, "dataset": dataset,
                              "builtin_rewards": rules, "reward_params": params,
                              "reward_weights": weights, "reward_run": reward_run, **more},
                      parents=parents + more.get("reward_runs", []))


# -- one run ---------------------------------------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _chart(names: list[str], title: str, formulas: list[str], run_id: int,
           caption: str | None = None, rule: float | None = None) -> None:
    chart_with_formulas(run_id, names, title, formulas, caption, rule=rule)


def groups_table(run_id: int) -> None:
    """A step's groups side by side: each answer with its reward (and components) and its
    advantage within the group."""
    st.subheader(":material/group_work: " + t("grpo.groups_title"))
    st.caption(t("grpo.groups_caption"))
    samples = store.get_samples(run_id)
    if not samples:
        st.caption(t("common.no_data"))
        return
    steps = sorted({s["step"] for s in samples})
    step = st.select_slider(t("common.step"), steps, value=steps[-1],
                            key=f"grpo_groups_step_{run_id}") if len(steps) > 1 else steps[0]
    rows = []
    for s in samples:
        if s["step"] != step:
            continue
        extra = s.get("extra") or {}
        row = {t("grpo.col_group"): extra.get("group"), t("grpo.col_reward"): s["reward"],
               t("grpo.col_advantage"): extra.get("advantage")}
        for name, value in (extra.get("rewards") or {}).items():
            row[t("grpo.col_component", name=reward_name(name))] = value
        row.update({t("grpo.col_length"): extra.get("length"), t("grpo.col_prompt"): s["prompt"],
                    t("grpo.col_response"): s["response"]})
        rows.append(row)
    frame = pd.DataFrame(rows).sort_values([t("grpo.col_group"), t("grpo.col_advantage")],
                                           ascending=[True, False])
    number = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(frame, hide_index=True, width="stretch",
                 column_config={t("grpo.col_reward"): number, t("grpo.col_advantage"): number,
                                t("grpo.col_response"): st.column_config.TextColumn(
                                    width="large")})


def trend_line(run_id: int) -> tuple[float | None, str | None]:
    """Whether the reward rose beyond its noise: the OLS slope of the per-step reward mean
    over the steps with its standard error (objectives.trend_slope), and its verdict.
    Returns (slope, verdict); (None, None) before 3 steps."""
    n = len(store.get_metrics(run_id, ["reward_mean"]))
    slope, se = reward_trend(store, run_id)
    verdict = trend_verdict(slope, se)
    if verdict is None:
        st.caption(t("grpo.trend_short"))
        return None, None
    show = {"rose": st.success, "fell": st.warning, "flat": st.info}[verdict]
    show(t(f"grpo.trend_{verdict}", n=n, slope=slope, se=se),
         icon=":material/trending_up:" if verdict == "rose" else ":material/show_chart:")
    return slope, verdict


def run_view(run_id: int) -> dict:
    run = job_panel(run_id)
    cfg = run.get("config") or {}
    last = store.last_metrics(run_id)
    zero = last.get("zero_signal_fraction")
    if zero is not None and zero > ZERO_SIGNAL_WARN:
        st.warning(t("grpo.warn_zero_signal", share=zero), icon=":material/warning:")
    if (last.get("kl") or 0.0) > KL_WARN:
        st.warning(t("ppo.warn_kl", kl=last["kl"], limit=KL_WARN), icon=":material/warning:")
    eos_warning(cfg, last)

    slope, verdict = trend_line(run_id)
    c = st.columns(6)
    # the slope is coloured only when it is beyond its noise (a grey arrow otherwise)
    c[0].metric(t("grpo.m_reward"), _fmt(last.get("reward_mean")),
                delta=None if slope is None else t("grpo.m_trend_delta", slope=slope),
                delta_color="normal" if verdict in ("rose", "fell") else "off")
    c[1].metric(t("grpo.m_std"), _fmt(last.get("reward_std_within_group")))
    c[2].metric(t("grpo.m_zero"), _fmt(zero, 2))
    c[3].metric(t("grpo.m_kl"), _fmt(last.get("kl")))
    c[4].metric(t("ppo.m_clipfrac"), _fmt(last.get("clipfrac")))
    c[5].metric(t("ppo.m_seconds"), _fmt(last.get("time_step"), 1))
    advantage = cfg.get("advantage", defaults.advantage)
    ref = (t("ppo.ref_sft", id=cfg["sft_run"]) if cfg.get("sft_run") is not None
           else t("ppo.ref_base"))
    st.caption(t("grpo.run_line", advantage=t(f"settings.advantage_{advantage}"),
                 G=cfg.get("group_size", defaults.group_size), ref=ref,
                 dataset=cfg.get("dataset", "")))

    components = [f"reward_{n}" for n in (cfg.get("builtin_rewards") or [])] + \
        ([f"reward_{MODEL_REWARD}"] if cfg.get("reward_run") is not None else [])
    tab_reward, tab_policy, tab_challenges, tab_more = st.tabs(
        [t("grpo.tab_reward"), t("grpo.tab_policy"), t("ppo.tab_challenges"),
         t("grpo.tab_more")])
    with tab_reward:
        _chart(["reward_mean", "reward_std_within_group"], t("grpo.chart_reward"),
               [LATEX["weighted_reward"], LATEX["group_reward_std"], LATEX["trend_slope"]],
               run_id, t("grpo.reward_caption"))
        _chart(["zero_signal_fraction"], t("grpo.chart_zero"), [LATEX["zero_signal_fraction"]], run_id,
               t("grpo.zero_caption"), rule=ZERO_SIGNAL_WARN)
        _chart(components, t("grpo.chart_components"), [LATEX["weighted_reward"]], run_id,
               t("grpo.components_caption"))
    with tab_policy:
        _chart(["policy_loss", "loss"], t("grpo.chart_loss"),
               [ADVANTAGE_LATEX[advantage], LATEX["grpo_loss"]], run_id)
        _chart(["clipfrac"], t("ppo.chart_clipfrac"), [LATEX["clip_fraction"]], run_id,
               t("ppo.clipfrac_caption"), rule=CLIPFRAC_WARN)
        _chart(["kl"], t("grpo.chart_kl"), [LATEX["kl_k3"]], run_id, t("grpo.kl_caption"))
        _chart(["entropy"], t("ppo.chart_entropy"), [LATEX["entropy_from_logits"]], run_id,
               t("ppo.entropy_caption"))
    with tab_challenges:
        challenges(run_id, cfg, "reward_mean")
    with tab_more:
        _chart(["response_length"], t("ppo.chart_length"), [LATEX["response_length"]], run_id,
               t("ppo.length_caption"))
        _chart(["eos_fraction"], t("ppo.chart_eos"), [LATEX["eos_fraction"]], run_id)
        line_chart(metrics_frame(run_id, ["time_generate", "time_score", "time_train"]),
                   t("ppo.chart_time"), y_title=t("ppo.seconds_axis"))
    groups_table(run_id)
    with st.expander(t("grpo.config")):
        st.json(cfg)
        if run.get("summary"):
            st.json(run["summary"])
    return run


# -- the page --------------------------------------------------------------------------------
StagePage("grpo", ":material/groups:", [LATEX["rlhf_objective"], LATEX["grpo_advantages"]],
          page_fields, run_view).render()
