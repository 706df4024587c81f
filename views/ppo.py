"""PPO: optimise the policy against a reward with a KL leash to the SFT model, and watch
every quantity of the equations as it trains (reward, KL, β, ratios and their clip band,
advantages, value fit, entropy, length) beside the formula that defines it."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.training import rewards_builtin
from engine.inference.models import display_name
from engine.objectives import LATEX
from engine.training.ppo import CLIPFRAC_WARN, KL_WARN, RATIO_HIST_EDGES, PPOConfig
from ui.common import (datasets_or_hint, get_store, job_panel, line_chart, metric_label,
                       metrics_frame,
                       model_spec, run_label, translated_choice, translated_radio)
from ui.i18n import t
from ui.rl_diagnostics import challenges, eos_warning, reward_model_choices
from ui.stage_page import PageFields, StagePage, start_and_prompts

store = get_store()
defaults = PPOConfig()


# -- a new run -----------------------------------------------------------------------------
def _reward_params(name: str) -> dict:
    """Widgets for the parameters of a built-in reward (outside the form: they depend on it)."""
    params = rewards_builtin.defaults(name)
    out = {}
    cols = st.columns(max(1, len(params)))
    for col, (key, value) in zip(cols, params.items()):
        label = t(f"ppo.param_{key}")
        wkey = f"ppo_param_{name}_{key}"
        if key == "words":
            text = col.text_input(label, ", ".join(value), key=wkey, help=t("ppo.param_words_help"))
            out[key] = [w.strip() for w in text.split(",") if w.strip()]
        elif key == "unit":
            out[key] = translated_choice(col.selectbox, label, ["words", "chars"], wkey,
                                         lambda u: t("ppo.unit_" + u))
        elif isinstance(value, int):
            out[key] = int(col.number_input(label, 1, 10_000, value, key=wkey))
        else:
            out[key] = col.text_input(label, str(value), key=wkey)
    return out


def page_fields() -> PageFields | None:
    """Where the policy starts, its prompts and its reward: the choices that depend on
    the runs and datasets there are (the schema's other fields form the rest)."""
    datasets = datasets_or_hint(None, "ppo")
    if not datasets:
        return None
    spec = model_spec()
    st.caption(t("ppo.model_line", name=display_name(spec), spec=spec))

    sft_choice, dataset, model = start_and_prompts("ppo", datasets, defaults.dataset)

    reward_runs = {r["id"]: r for r in store.list_runs(stage="reward", status="succeeded")}
    source = translated_radio(t("ppo.reward_source"), ["builtin", "model"], horizontal=True,
                              key="ppo_reward_source",
                              format_func=lambda s: t("ppo.reward_" + s),
                              index=1 if reward_runs else 0)  # a trained one when there is
    reward_run, builtin, params = None, defaults.builtin_reward, {}
    if source == "model":
        if not reward_runs:
            st.info(t("ppo.no_reward_runs"))
            st.page_link("views/reward.py", label=t("ppo.go_reward"), icon=":material/balance:")
            return None
        reward_run = translated_choice(st.selectbox, t("ppo.reward_run"), list(reward_runs),
                                       "ppo_reward_run", lambda i: run_label(reward_runs[i]))
    else:
        options = rewards_builtin.names()
        builtin = translated_choice(st.selectbox, t("ppo.builtin_reward"), options,
                                    "ppo_builtin", lambda n: t("ppo.rw_" + n),
                                    index=options.index(defaults.builtin_reward))
        st.caption(t("ppo.rw_" + builtin + "_help"))
        params = _reward_params(builtin)
    more = reward_model_choices("ppo", reward_runs)
    if more.get("reward_runs"):  # the ensemble replaces the one reward model
        reward_run = None
    parents = [i for i in (sft_choice, reward_run, more.get("gold_reward_run")) if i is not None]
    return PageFields(values={"model": model, "sft_run": sft_choice, "reward_run": reward_run,
                              "builtin_reward": builtin, "reward_params": params,
                              "dataset": dataset, **more},
                      parents=parents + more.get("reward_runs", []))


# -- one run ---------------------------------------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _chart_with_formula(names: list[str], title: str, formula: str, run_id: int,
                        smoothing: float, caption: str | None = None,
                        rule: float | None = None) -> None:
    chart, eq = st.columns([3, 2])
    with chart:
        line_chart(metrics_frame(run_id, names), title, smoothing=smoothing, rule=rule)
    with eq:
        st.latex(formula)
        if caption:
            st.caption(caption)


def ratio_histogram(run_id: int, eps: float) -> None:
    """The ratios r_t(θ) of the last step, with the clip band [1−ε, 1+ε] drawn as rules,
    and the same histogram over all steps as a heat map."""
    names = [f"ratio_hist_{k:02d}" for k in range(len(RATIO_HIST_EDGES) - 1)]
    df = metrics_frame(run_id, names)
    if df.empty:
        st.caption(t("common.no_data"))
        return
    df["bin"] = df["name"].str[-2:].astype(int)
    df["lo"] = df["bin"].map(lambda k: RATIO_HIST_EDGES[k])
    df["hi"] = df["bin"].map(lambda k: RATIO_HIST_EDGES[k + 1])
    last_step = int(df["step"].max())
    last = df[df["step"] == last_step]
    total = max(1.0, float(last["value"].sum()))
    last = last.assign(share=last["value"] / total)
    # plain Vega-Lite specs: Altair's schema validation made this pair the page's slowest
    q = {"type": "quantitative"}
    bars = {"data": {"name": "last"}, "mark": "bar", "encoding": {
        "x": {"field": "lo", **q, "bin": "binned", "title": "r_t(θ)",
              "scale": {"domain": [RATIO_HIST_EDGES[0], RATIO_HIST_EDGES[-1]]}},
        "x2": {"field": "hi"}, "y": {"field": "share", **q, "title": t("ppo.share_axis")},
        "tooltip": [{"field": "lo", **q, "title": "≥"}, {"field": "hi", **q, "title": "<"},
                    {"field": "value", **q, "title": t("ppo.tokens_axis")}]}}
    band = {"data": {"values": [{"x": 1 - eps}, {"x": 1 + eps}]},
            "mark": {"type": "rule", "color": "#d62728", "strokeDash": [5, 3], "size": 2},
            "encoding": {"x": {"field": "x", **q}}}
    st.vega_lite_chart(spec={"title": t("ppo.chart_ratio_hist", step=last_step), "height": 220,
                             "datasets": {"last": last[["lo", "hi", "share", "value"]]},
                             "layer": [bars, band]}, width="stretch")
    heat = df.assign(mid=(df["lo"] + df["hi"]) / 2)[["step", "lo", "value"]]
    st.vega_lite_chart(spec={
        "title": t("ppo.chart_ratio_heat"), "height": 200, "datasets": {"heat": heat},
        "data": {"name": "heat"}, "mark": "rect", "encoding": {
            "x": {"field": "step", "type": "ordinal", "title": t("common.step")},
            "y": {"field": "lo", "type": "ordinal", "title": "r_t(θ)", "sort": "descending",
                  "axis": {"format": ".2f", "labelOverlap": True}},
            "color": {"field": "value", **q, "title": t("ppo.tokens_axis"),
                      "scale": {"scheme": "blues"}},
            "tooltip": [{"field": "step", "type": "ordinal"},
                        {"field": "lo", **q, "format": ".2f"}, {"field": "value", **q}]}},
        width="stretch")


def warnings(run: dict, last: dict) -> None:
    kl, clipfrac = last.get("kl"), last.get("clipfrac")
    if kl is not None and kl > KL_WARN:
        st.warning(t("ppo.warn_kl", kl=kl, limit=KL_WARN), icon=":material/warning:")
    if clipfrac is not None and clipfrac > CLIPFRAC_WARN:
        st.warning(t("ppo.warn_clip", clipfrac=clipfrac, limit=CLIPFRAC_WARN),
                   icon=":material/warning:")
    eos_warning(run.get("config") or {}, last)
    ev = last.get("explained_variance")
    if ev is not None and (run.get("step") or 0) >= 10 and ev < -1.0:
        st.warning(t("ppo.warn_value", ev=ev), icon=":material/warning:")


def samples_table(run_id: int) -> None:
    samples = store.get_samples(run_id)
    st.subheader(":material/format_list_bulleted: " + t("ppo.samples_title"))
    st.caption(t("ppo.samples_caption"))
    if not samples:
        st.caption(t("common.no_data"))
        return
    # the numbers first: a long answer must not push reward and KL off-screen
    frame = pd.DataFrame([{
        t("ppo.col_step"): s["step"], t("ppo.col_reward"): s["reward"], t("ppo.col_kl"): s["kl"],
        t("ppo.col_length"): (s.get("extra") or {}).get("length"),
        t("ppo.col_eos"): bool((s.get("extra") or {}).get("eos")),
        t("ppo.col_prompt"): s["prompt"], t("ppo.col_response"): s["response"]}
        for s in reversed(samples)])
    st.dataframe(frame, hide_index=True, width="stretch", height=320,
                 column_config={t("ppo.col_reward"): st.column_config.NumberColumn(format="%.3f"),
                                t("ppo.col_kl"): st.column_config.NumberColumn(format="%.3f"),
                                t("ppo.col_prompt"): st.column_config.TextColumn(width="medium"),
                                t("ppo.col_response"): st.column_config.TextColumn(
                                    width="large")})
    scatter = pd.DataFrame([{"length": (s.get("extra") or {}).get("length"),
                             "reward": s["reward"], "step": s["step"]} for s in samples])
    if scatter["length"].notna().any():
        q = {"type": "quantitative"}
        st.vega_lite_chart(spec={
            "title": t("ppo.chart_length_bias"), "height": 220,
            "datasets": {"samples": scatter}, "data": {"name": "samples"},
            "mark": {"type": "circle", "size": 40, "opacity": 0.7}, "encoding": {
                "x": {"field": "length", **q, "title": t("ppo.length_axis")},
                "y": {"field": "reward", **q, "title": t("ppo.reward_axis")},
                "color": {"field": "step", **q, "scale": {"scheme": "viridis"},
                          "title": t("common.step")},
                "tooltip": [{"field": "step", **q}, {"field": "length", **q},
                            {"field": "reward", **q, "format": ".3f"}]}}, width="stretch")


def run_view(run_id: int) -> dict:
    run = job_panel(run_id)
    cfg = run.get("config") or {}
    eps = float(cfg.get("cliprange", defaults.cliprange))
    last = store.last_metrics(run_id)
    first = store.get_metrics(run_id, ["score_mean"])
    first_score = first[0]["value"] if first else None
    warnings(run, last)

    c = st.columns(5)
    score = last.get("score_mean")
    c[0].metric(t("ppo.m_score"), _fmt(score), delta=None if score is None or first_score is None
                else f"{score - first_score:+.3f}", help=t("ppo.m_score_help"))
    c[1].metric(t("ppo.m_kl"), _fmt(last.get("kl")), help=t("ppo.m_kl_help"))
    c[2].metric("β", _fmt(last.get("beta"), 4))
    c[3].metric(t("ppo.m_clipfrac"), _fmt(last.get("clipfrac")))
    c[4].metric(t("ppo.m_seconds"), _fmt(last.get("time_step"), 1))
    reward = (t("ppo.reward_model_label", id=cfg["reward_run"]) if cfg.get("reward_run")
              is not None else t("ppo.rw_" + cfg.get("builtin_reward", defaults.builtin_reward)))
    ref = (t("ppo.ref_sft", id=cfg["sft_run"]) if cfg.get("sft_run") is not None
           else t("ppo.ref_base"))
    st.caption(t("ppo.run_line", reward=reward, ref=ref, dataset=cfg.get("dataset", "")))

    smoothing = st.slider(t("ppo.smoothing"), 0.0, 0.99, 0.0, 0.01, key=f"ppo_smooth_{run_id}")
    tab_reward, tab_policy, tab_value, tab_challenges, tab_more = st.tabs(
        [t("ppo.tab_reward"), t("ppo.tab_policy"), t("ppo.tab_value"),
         t("ppo.tab_challenges"), t("ppo.tab_more")])
    with tab_reward:
        _chart_with_formula(
            ["score_mean", "rlhf_reward", "non_score_reward"], t("ppo.chart_reward"),
            LATEX["per_token_rewards"], run_id, smoothing,
            t("ppo.reward_caption", score=metric_label("score_mean"),
              non_score=metric_label("non_score_reward"), rlhf=metric_label("rlhf_reward")))
        _chart_with_formula(
            ["kl"], t("ppo.chart_kl"),
            LATEX["sequence_kl"], run_id, smoothing, t("ppo.kl_caption"),
            rule=float(cfg["target_kl"]) if cfg.get("adaptive_kl") else None)
        _chart_with_formula(
            ["beta"], t("ppo.chart_beta"),
            LATEX["adaptive_kl_update"], run_id, 0.0, t("ppo.beta_caption"))
        _chart_with_formula(["score_std"], t("ppo.chart_score_std"),
                            LATEX["score_std"], run_id, smoothing)
    with tab_policy:
        chart, eq = st.columns([3, 2])
        with chart:
            ratio_histogram(run_id, eps)
        with eq:
            st.latex(LATEX["ppo_ratio"])
            st.latex(LATEX["ratio_clip"] + rf",\quad \epsilon = {eps:g}")
            st.caption(t("ppo.ratio_caption", lo=1 - eps, hi=1 + eps))
        _chart_with_formula(["ratio_mean", "ratio_min", "ratio_max"], t("ppo.chart_ratio"),
                            LATEX["ratio_stats"], run_id, smoothing, rule=1.0)
        _chart_with_formula(
            ["policy_loss"], t("ppo.chart_policy_loss"),
            LATEX["clipped_policy_loss"], run_id, smoothing)
        _chart_with_formula(
            ["clipfrac"], t("ppo.chart_clipfrac"),
            LATEX["clip_fraction"], run_id, smoothing, t("ppo.clipfrac_caption"),
            rule=CLIPFRAC_WARN)
        _chart_with_formula(
            ["approx_kl"], t("ppo.chart_approx_kl"),
            LATEX["approx_kl"], run_id, smoothing)
        _chart_with_formula(
            ["entropy"], t("ppo.chart_entropy"),
            LATEX["entropy_from_logits"], run_id, smoothing,
            t("ppo.entropy_caption"))
    with tab_value:
        _chart_with_formula(
            ["value_loss"], t("ppo.chart_value_loss"),
            LATEX["clipped_value_loss"], run_id, smoothing)
        chart, eq = st.columns([3, 2])
        with chart:
            line_chart(metrics_frame(run_id, ["advantage_std_raw", "value_mean",
                                              "return_mean"]),
                       t("ppo.chart_advantages"), smoothing=smoothing)
        with eq:
            st.latex(LATEX["gae_advantages"])
            st.caption(t("ppo.gae_caption", gamma=cfg.get("gamma", defaults.gamma),
                         lam=cfg.get("lam", defaults.lam),
                         adv=metric_label("advantage_std_raw"),
                         value=metric_label("value_mean"), ret=metric_label("return_mean")))
        _chart_with_formula(
            ["explained_variance"], t("ppo.chart_ev"),
            LATEX["explained_variance"],
            run_id, smoothing, t("ppo.ev_caption"))
    with tab_challenges:
        challenges(run_id, cfg, "score_mean", smoothing)
    with tab_more:
        _chart_with_formula(["response_length"], t("ppo.chart_length"),
                            LATEX["response_length"], run_id, smoothing,
                            t("ppo.length_caption"))
        _chart_with_formula(["eos_fraction"], t("ppo.chart_eos"),
                            LATEX["eos_fraction"], run_id, smoothing)
        chart, eq = st.columns([3, 2])
        with chart:
            line_chart(metrics_frame(run_id, ["time_generate", "time_score", "time_train"]),
                       t("ppo.chart_time"), y_title=t("ppo.seconds_axis"))
        with eq:
            st.caption(t("ppo.time_caption", generate=metric_label("time_generate"),
                         score=metric_label("time_score"), train=metric_label("time_train")))
    samples_table(run_id)
    with st.expander(t("ppo.config")):
        st.json(cfg)
        if run.get("summary"):
            st.json(run["summary"])
    return run


# -- the page --------------------------------------------------------------------------------
StagePage("ppo", ":material/target:", [LATEX["rlhf_objective"]], page_fields, run_view).render()
