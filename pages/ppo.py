"""PPO: optimise the policy against a reward with a KL leash to the SFT model, and watch
every quantity of the equations as it trains (reward, KL, β, ratios and their clip band,
advantages, value fit, entropy, length) beside the formula that defines it."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from engine import rewards_builtin
from engine.models import LoraSettings, display_name
from engine.objectives import LATEX
from engine.ppo import CLIPFRAC_WARN, KL_WARN, RATIO_HIST_EDGES, PPOConfig
from ui.common import (datasets_or_hint, get_jobs, get_store, job_panel, line_chart,
                       metrics_frame, model_spec, run_label, run_picker, translated_choice,
                       translated_radio)
from ui.i18n import t

store = get_store()
defaults = PPOConfig()

st.title(":material/target: " + t("ppo.title"))
st.write(t("ppo.intro"))
st.latex(LATEX["rlhf_objective"])


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


def new_run_form() -> None:
    datasets = datasets_or_hint(None, "ppo")
    if not datasets:
        return
    spec = model_spec()
    st.caption(t("ppo.model_line", name=display_name(spec), spec=spec))

    sft_runs = {r["id"]: r for r in store.list_runs(stage="sft", status="succeeded")}
    c = st.columns(2)
    sft_choice = translated_choice(c[0].selectbox, t("ppo.start_from"), [None, *sft_runs],
                                   "ppo_sft", lambda i: t("ppo.base_model") if i is None
                                   else run_label(sft_runs[i]), help=t("ppo.start_from_help"),
                                   index=1 if sft_runs else 0)  # the pipeline: newest SFT
    names = [d["name"] for d in datasets]
    rows = {d["name"]: d for d in datasets}
    dataset = translated_choice(c[1].selectbox, t("ppo.dataset"), names, "ppo_dataset",
                                lambda n: t("ppo.dataset_option", name=n, rows=rows[n]["rows"],
                                            kind=rows[n]["kind"]),
                                index=names.index(defaults.dataset)
                                if defaults.dataset in names else 0,
                                help=t("ppo.dataset_help"))

    reward_runs = {r["id"]: r for r in store.list_runs(stage="reward", status="succeeded")}
    source = translated_radio(t("ppo.reward_source"), ["builtin", "model"], horizontal=True,
                              key="ppo_reward_source",
                              format_func=lambda s: t("ppo.reward_" + s),
                              index=1 if reward_runs else 0)  # a trained one when there is
    reward_run, builtin, params = None, defaults.builtin_reward, {}
    if source == "model":
        if not reward_runs:
            st.info(t("ppo.no_reward_runs"))
            st.page_link("pages/reward.py", label=t("ppo.go_reward"), icon=":material/balance:")
            return
        reward_run = translated_choice(st.selectbox, t("ppo.reward_run"), list(reward_runs),
                                       "ppo_reward_run", lambda i: run_label(reward_runs[i]))
    else:
        options = rewards_builtin.names()
        builtin = translated_choice(st.selectbox, t("ppo.builtin_reward"), options,
                                    "ppo_builtin", lambda n: t("ppo.rw_" + n),
                                    index=options.index(defaults.builtin_reward))
        st.caption(t("ppo.rw_" + builtin + "_help"))
        params = _reward_params(builtin)

    with st.form("ppo_form"):
        c = st.columns(4)
        steps = c[0].number_input(t("ppo.steps"), 1, 100_000, defaults.steps,
                                  help=t("ppo.steps_help"))
        batch_size = c[1].number_input(t("ppo.batch_size"), 1, 1024, defaults.batch_size,
                                       help=t("ppo.batch_size_help"))
        max_new = c[2].number_input(t("ppo.max_new_tokens"), 1, 1024, defaults.max_new_tokens)
        lr = c[3].number_input(t("ppo.lr"), 1e-7, 1e-1, defaults.lr, step=1e-5, format="%.1e")
        c = st.columns(4)
        beta = c[0].number_input(t("ppo.beta"), 0.0, 10.0, defaults.beta, step=0.01,
                                 format="%.3f", help=t("ppo.beta_help"))
        cliprange = c[1].number_input(t("ppo.cliprange"), 0.01, 1.0, defaults.cliprange,
                                      step=0.05, help=t("ppo.cliprange_help"))
        temperature = c[2].number_input(t("ppo.temperature"), 0.05, 2.0, defaults.temperature,
                                        step=0.05, help=t("ppo.temperature_help"))
        top_p = c[3].number_input(t("ppo.top_p"), 0.05, 1.0, defaults.top_p, step=0.05,
                                  help=t("ppo.top_p_help"))
        with st.expander(t("ppo.advanced"), icon=":material/tune:"):
            c = st.columns(4)
            ppo_epochs = c[0].number_input(t("ppo.ppo_epochs"), 1, 32, defaults.ppo_epochs,
                                           help=t("ppo.ppo_epochs_help"))
            minibatches = c[1].number_input(t("ppo.minibatches"), 1, 64, defaults.minibatches,
                                            help=t("ppo.minibatches_help"))
            gamma = c[2].number_input(t("ppo.gamma"), 0.0, 1.0, defaults.gamma, step=0.01)
            lam = c[3].number_input(t("ppo.lam"), 0.0, 1.0, defaults.lam, step=0.01,
                                    help=t("ppo.lam_help"))
            c = st.columns(4)
            cliprange_value = c[0].number_input(t("ppo.cliprange_value"), 0.01, 10.0,
                                                defaults.cliprange_value, step=0.05)
            vf_coef = c[1].number_input(t("ppo.vf_coef"), 0.0, 10.0, defaults.vf_coef,
                                        step=0.05, help=t("ppo.vf_coef_help"))
            max_grad_norm = c[2].number_input(t("ppo.max_grad_norm"), 0.0, 100.0,
                                              defaults.max_grad_norm, step=0.1)
            eos_penalty = c[3].number_input(t("ppo.missing_eos_penalty"), 0.0, 10.0,
                                            defaults.missing_eos_penalty, step=0.1,
                                            help=t("ppo.missing_eos_penalty_help"))
            c = st.columns(4)
            adaptive = c[0].checkbox(t("ppo.adaptive_kl"), defaults.adaptive_kl,
                                     help=t("ppo.adaptive_kl_help"))
            target_kl = c[1].number_input(t("ppo.target_kl"), 0.01, 100.0, defaults.target_kl,
                                          step=0.5)
            horizon = c[2].number_input(t("ppo.horizon"), 1, 1_000_000, defaults.horizon)
            max_prompt = c[3].number_input(t("ppo.max_prompt_length"), 8, 8192,
                                           defaults.max_prompt_length, step=32)
            c = st.columns(4)
            lora_r = c[0].number_input(t("ppo.lora_r"), 1, 256, defaults.lora.r,
                                       help=t("ppo.lora_help"))
            lora_alpha = c[1].number_input(t("ppo.lora_alpha"), 1, 1024, defaults.lora.alpha)
            ckpt_every = c[2].number_input(t("ppo.checkpoint_every"), 0, 100_000,
                                           defaults.checkpoint_every)
            sample_every = c[3].number_input(t("ppo.sample_every"), 0, 100_000,
                                             defaults.sample_every)
            c = st.columns(4)
            seed = c[0].number_input(t("ppo.seed"), 0, 2**31 - 1, defaults.seed)
            whiten_rewards = c[1].checkbox(t("ppo.whiten_rewards"), defaults.whiten_rewards)
        name = st.text_input(t("ppo.run_name"), placeholder=t("ppo.run_name_placeholder"))
        submitted = st.form_submit_button(t("ppo.start"), icon=":material/play_arrow:",
                                          type="primary")
    if submitted:
        if int(batch_size) % int(minibatches):
            st.error(t("ppo.bad_minibatches"))
            return
        cfg = PPOConfig(
            model=spec, sft_run=sft_choice, reward_run=reward_run, builtin_reward=builtin,
            reward_params=params, dataset=dataset, max_prompt_length=int(max_prompt),
            steps=int(steps), batch_size=int(batch_size), max_new_tokens=int(max_new),
            temperature=float(temperature), top_p=float(top_p), ppo_epochs=int(ppo_epochs),
            minibatches=int(minibatches), lr=float(lr), gamma=float(gamma), lam=float(lam),
            cliprange=float(cliprange), cliprange_value=float(cliprange_value),
            vf_coef=float(vf_coef), beta=float(beta), adaptive_kl=bool(adaptive),
            target_kl=float(target_kl), horizon=int(horizon),
            missing_eos_penalty=float(eos_penalty), whiten_rewards=bool(whiten_rewards),
            max_grad_norm=float(max_grad_norm), seed=int(seed),
            lora=LoraSettings(r=int(lora_r), alpha=int(lora_alpha), dropout=0.0),
            checkpoint_every=int(ckpt_every), sample_every=int(sample_every))
        if sft_choice is not None:  # the policy continues the SFT run on its base model
            cfg.model = (sft_runs[sft_choice].get("config") or {}).get("model") or spec
        parents = [i for i in (sft_choice, reward_run) if i is not None]
        run_id = get_jobs().submit("ppo", cfg, name=name.strip() or None, parents=parents)
        st.session_state["ppo_view"] = run_id
        st.toast(t("ppo.started", id=run_id), icon=":material/play_arrow:")


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
    bars = alt.Chart(last).mark_bar().encode(
        x=alt.X("lo:Q", bin="binned", title="r_t(θ)",
                scale=alt.Scale(domain=[RATIO_HIST_EDGES[0], RATIO_HIST_EDGES[-1]])),
        x2="hi:Q", y=alt.Y("share:Q", title=t("ppo.share_axis")),
        tooltip=[alt.Tooltip("lo:Q", title="≥"), alt.Tooltip("hi:Q", title="<"),
                 alt.Tooltip("value:Q", title=t("ppo.tokens_axis"))])
    band = alt.Chart(pd.DataFrame({"x": [1 - eps, 1 + eps]})).mark_rule(
        color="#d62728", strokeDash=[5, 3], size=2).encode(x="x:Q")
    st.altair_chart(alt.layer(bars, band).properties(
        title=t("ppo.chart_ratio_hist", step=last_step), height=220), width="stretch")
    heat = alt.Chart(df.assign(mid=(df["lo"] + df["hi"]) / 2)).mark_rect().encode(
        x=alt.X("step:O", title=t("common.step")),
        y=alt.Y("lo:O", title="r_t(θ)", sort="descending",
                axis=alt.Axis(format=".2f", labelOverlap=True)),
        color=alt.Color("value:Q", title=t("ppo.tokens_axis"),
                        scale=alt.Scale(scheme="blues")),
        tooltip=["step", alt.Tooltip("lo:Q", format=".2f"), "value"])
    st.altair_chart(heat.properties(title=t("ppo.chart_ratio_heat"), height=200),
                    width="stretch")


def warnings(run: dict, last: dict) -> None:
    kl, clipfrac = last.get("kl"), last.get("clipfrac")
    if kl is not None and kl > KL_WARN:
        st.warning(t("ppo.warn_kl", kl=kl, limit=KL_WARN), icon=":material/warning:")
    if clipfrac is not None and clipfrac > CLIPFRAC_WARN:
        st.warning(t("ppo.warn_clip", clipfrac=clipfrac, limit=CLIPFRAC_WARN),
                   icon=":material/warning:")
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
        chart = alt.Chart(scatter).mark_circle(size=40, opacity=0.7).encode(
            x=alt.X("length:Q", title=t("ppo.length_axis")),
            y=alt.Y("reward:Q", title=t("ppo.reward_axis")),
            color=alt.Color("step:Q", scale=alt.Scale(scheme="viridis"),
                            title=t("common.step")),
            tooltip=["step", "length", alt.Tooltip("reward:Q", format=".3f")])
        st.altair_chart(chart.properties(title=t("ppo.chart_length_bias"), height=220),
                        width="stretch")


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
    tab_reward, tab_policy, tab_value, tab_more = st.tabs(
        [t("ppo.tab_reward"), t("ppo.tab_policy"), t("ppo.tab_value"), t("ppo.tab_more")])
    with tab_reward:
        _chart_with_formula(
            ["score_mean", "rlhf_reward", "non_score_reward"], t("ppo.chart_reward"),
            LATEX["per_token_rewards"], run_id, smoothing, t("ppo.reward_caption"))
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
                         lam=cfg.get("lam", defaults.lam)))
        _chart_with_formula(
            ["explained_variance"], t("ppo.chart_ev"),
            LATEX["explained_variance"],
            run_id, smoothing, t("ppo.ev_caption"))
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
            st.caption(t("ppo.time_caption"))
    samples_table(run_id)
    with st.expander(t("ppo.config")):
        st.json(cfg)
        if run.get("summary"):
            st.json(run["summary"])
    return run


@st.fragment(run_every=2)
def live_view(run_id: int) -> None:
    run = run_view(run_id)
    if run["status"] not in ("queued", "running"):
        st.rerun()


# -- the page --------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader(":material/add_circle: " + t("ppo.new_run"))
    new_run_form()

st.subheader(":material/monitoring: " + t("ppo.runs"))
picked = run_picker("ppo", t("ppo.view_run"), key="ppo_view")
if picked is None:
    st.caption(t("ppo.no_runs"))
else:
    run_id = picked["id"]
    if picked["status"] in ("queued", "running"):
        live_view(run_id)
    else:
        run_view(run_id)
