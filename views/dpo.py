"""DPO: learn from preference pairs directly, without a reward model or sampling; watch the
loss, the implicit rewards of chosen and rejected answers, their margin and accuracy, the
log-probs of both answers and the drift from the reference, each beside its formula."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.inference.models import display_name
from engine.objectives import LATEX
from engine.training.dpo import DPOConfig
from ui.common import (datasets_or_hint, get_store, job_panel,
                       model_spec, run_label, translated_choice)
from ui.i18n import t
from ui.rl_diagnostics import chart_with_formulas
from ui.stage_page import PageFields, StagePage

store = get_store()
defaults = DPOConfig()


# -- a new run -----------------------------------------------------------------------------
def page_fields() -> PageFields | None:
    """The preference pairs and where the policy (and its reference) start."""
    datasets = datasets_or_hint("preference", "dpo")
    if not datasets:
        return None
    spec = model_spec()
    st.caption(t("dpo.model_line", name=display_name(spec), spec=spec))
    sft_runs = {r["id"]: r for r in store.list_runs(stage="sft", status="succeeded")}
    names = [d["name"] for d in datasets]
    rows = {d["name"]: d["rows"] for d in datasets}
    c = st.columns(2)
    dataset = translated_choice(c[0].selectbox, t("dpo.dataset"), names, "dpo_dataset",
                                lambda n: t("dpo.dataset_option", name=n, rows=rows[n]),
                                index=names.index(defaults.dataset)
                                if defaults.dataset in names else 0)
    sft_choice = translated_choice(c[1].selectbox, t("dpo.start_from"), [None, *sft_runs],
                                   "dpo_sft", lambda i: t("dpo.base_model") if i is None
                                   else run_label(sft_runs[i]), help=t("dpo.start_from_help"),
                                   index=1 if sft_runs else 0)  # the pipeline: newest SFT
    # the policy continues the SFT run on that run's base model
    model = (sft_runs[sft_choice].get("config") or {}).get("model") or spec \
        if sft_choice is not None else spec
    return PageFields(values={"model": model, "dataset": dataset, "sft_run": sft_choice},
                      parents=[sft_choice] if sft_choice is not None else [])


# -- one run ---------------------------------------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def samples_table(run_id: int) -> None:
    st.subheader(":material/format_list_bulleted: " + t("dpo.samples_title"))
    st.caption(t("dpo.samples_caption"))
    samples = store.get_samples(run_id)
    if not samples:
        st.caption(t("common.no_data"))
        return
    frame = pd.DataFrame([{t("dpo.col_step"): s["step"], t("dpo.col_kl"): s["kl"],
                           t("dpo.col_prompt"): s["prompt"], t("dpo.col_response"): s["response"]}
                          for s in reversed(samples)])
    st.dataframe(frame, hide_index=True, width="stretch", height=280,
                 column_config={t("dpo.col_kl"): st.column_config.NumberColumn(format="%.3f"),
                                t("dpo.col_response"): st.column_config.TextColumn(
                                    width="large")})


def run_view(run_id: int) -> dict:
    run = job_panel(run_id)
    cfg = run.get("config") or {}
    last = store.last_metrics(run_id)
    acc = last.get("eval_reward_accuracy")
    # compared with chance (50%), not with step 0: before training π_θ = π_ref, every implicit
    # reward is 0 and no pair is ranked right (0%), so "+43%" from there overstated a 43%
    # that is worse than a coin
    c = st.columns(4)
    c[0].metric(t("dpo.m_loss"), _fmt(last.get("loss")))
    c[1].metric(t("dpo.m_accuracy"), "—" if acc is None else f"{acc:.0%}",
                delta=None if acc is None
                else t("dpo.vs_chance", points=f"{round(100 * (acc - 0.5)):+d}"),
                delta_color="off" if acc is not None and round(100 * (acc - 0.5)) == 0
                else "normal",
                help=t("dpo.m_accuracy_help"))
    c[2].metric(t("dpo.m_margin"), _fmt(last.get("eval_reward_margin")),
                help=t("dpo.m_margin_help"))
    c[3].metric(t("dpo.m_kl"), _fmt(last.get("kl_to_ref")), help=t("dpo.m_kl_help"))
    ref = (t("dpo.ref_sft", id=cfg["sft_run"]) if cfg.get("sft_run") is not None
           else t("dpo.ref_base"))
    st.caption(t("dpo.run_line", ref=ref, dataset=cfg.get("dataset", ""),
                 loss=cfg.get("loss_type", defaults.loss_type),
                 beta=cfg.get("beta", defaults.beta)))

    smoothing = st.slider(t("dpo.smoothing"), 0.0, 0.95, 0.0, 0.05, key=f"dpo_smooth_{run_id}")
    loss_formula = LATEX["ipo_loss" if cfg.get("loss_type") == "ipo" else "dpo_loss"]
    chart = chart_with_formulas
    chart(run_id, ["loss", "eval_loss"], t("dpo.chart_loss"),
          [loss_formula, LATEX["dpo_margin"]], t("dpo.loss_caption"), smoothing)
    chart(run_id, ["reward_chosen", "reward_rejected", "reward_margin"], t("dpo.chart_rewards"),
          [LATEX["dpo_implicit_reward"]], t("dpo.rewards_caption"), smoothing, rule=0.0)
    chart(run_id, ["reward_accuracy", "eval_reward_accuracy"], t("dpo.chart_accuracy"),
          [LATEX["dpo_reward_accuracy"]], None, smoothing, rule=0.5)
    chart(run_id, ["logp_chosen", "logp_rejected"], t("dpo.chart_logp"),
          [LATEX["sequence_logprobs"]], t("dpo.logp_caption"), smoothing)
    estimator = cfg.get("kl_estimator", defaults.kl_estimator)
    chart(run_id, ["kl_to_ref"], t("dpo.chart_kl"),
          [LATEX["kl_k3" if estimator == "k3" else "kl_k1"]], t("dpo.kl_caption"))
    samples_table(run_id)
    with st.expander(t("dpo.config")):
        st.json(cfg)
        if run.get("summary"):
            st.json(run["summary"])
    return run


# -- the page --------------------------------------------------------------------------------
StagePage("dpo", ":material/compare_arrows:", [LATEX["dpo_loss"]], page_fields,
          run_view).render()
