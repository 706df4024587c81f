"""Reward model: train r_φ on preference pairs, watch it learn, see how it ranks, test it."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.objectives import LATEX
from engine.training.reward import RewardConfig
from engine.inference.tryout import ScoreTextConfig
from ui.common import (datasets_or_hint, get_jobs, get_store, job_of_session, job_panel,
                       line_chart, metrics_frame, model_spec, runs_options,
                       translated_choice)
from ui.i18n import LANGUAGES, t, tn
from ui.stage_page import PageFields, StagePage

store = get_store()
defaults = RewardConfig()


# -- a new run -----------------------------------------------------------------------------
def page_fields() -> PageFields | None:
    """The preference dataset and where the normalisation answers come from."""
    datasets = datasets_or_hint("preference", "reward")
    if not datasets:
        return None
    names = [d["name"] for d in datasets]
    rows = {d["name"]: d["rows"] for d in datasets}
    sft_runs = runs_options("sft")
    c = st.columns(2)
    dataset = translated_choice(c[0].selectbox, t("reward.dataset"), names, "reward_dataset",
                                lambda n: t("reward.dataset_option", name=n, rows=rows[n]),
                                index=names.index(defaults.dataset)
                                if defaults.dataset in names else 0)
    labels = {None: t("reward.norm_train"),
              **{rid: t("reward.norm_sft", run=label) for label, rid in sft_runs.items()}}
    norm_source = translated_choice(c[1].selectbox, t("reward.norm_source"), list(labels),
                                    "reward_norm_source", labels.get,
                                    help=t("settings.normalize_sft_run_help"))
    return PageFields(values={"model": model_spec(), "dataset": dataset,
                              "normalize_sft_run": norm_source},
                      parents=[norm_source] if norm_source else [])


# -- one run: live curves, then results ---------------------------------------------------
def run_view(run_id: int) -> dict:
    run = job_panel(run_id)
    smoothing = st.slider(t("reward.smoothing"), 0.0, 0.95, 0.6, 0.05,
                          help=t("reward.smoothing_help"), key=f"reward_smooth_{run_id}")
    left, right = st.columns(2)
    with left:
        line_chart(metrics_frame(run_id, ["loss", "eval_loss"]), t("reward.chart_loss"),
                   smoothing=smoothing)
    with right:
        line_chart(metrics_frame(run_id, ["accuracy", "eval_accuracy"]),
                   t("reward.chart_accuracy"), smoothing=smoothing, rule=0.5)
    left, right = st.columns(2)
    with left:
        line_chart(metrics_frame(run_id, ["reward_chosen", "reward_rejected"]),
                   t("reward.chart_rewards"), smoothing=smoothing)
    with right:
        line_chart(metrics_frame(run_id, ["margin"]), t("reward.chart_margin"),
                   smoothing=smoothing, rule=0.0)
    return run


def eval_frame(run_id: int) -> pd.DataFrame:
    rows = [s for s in store.get_samples(run_id) if s["extra"].get("kind") == "eval_pair"]
    if not rows:
        return pd.DataFrame()
    last = max(r["step"] for r in rows)
    return pd.DataFrame([{
        "prompt": r["prompt"], "chosen": r["response"], "rejected": r["extra"]["rejected"],
        "chosen_reward": r["extra"]["chosen_reward"],
        "rejected_reward": r["extra"]["rejected_reward"], "margin": r["extra"]["margin"],
        "correct": bool(r["extra"]["correct"]), "chosen_length": r["extra"]["chosen_length"],
        "rejected_length": r["extra"]["rejected_length"]} for r in rows if r["step"] == last])


MAX_WORST = 10  # misranked pairs listed


def norm_formula(mean: float, std: float) -> str:
    """The normalisation r̂ = (r − μ) / σ with μ's sign folded in: "(r + 1.501) / 0.938"
    for μ = −1.501, never "(r − -1.501)"."""
    return f"(r {'+' if mean < 0 else '−'} {abs(mean):.3f}) / {std:.3f}"


def results(run: dict) -> None:
    import altair as alt  # (imported here: the page's other views never pay its 0.4 s)

    df = eval_frame(run["id"])
    summary = run.get("summary") or {}
    if df.empty:
        st.info(t("reward.no_eval"))
        return
    st.subheader(t("reward.results"))
    chosen, rejected = t("reward.chosen"), t("reward.rejected")
    # the stage's own figures over these pairs (engine.training.reward.train_reward's summary)
    rho, longer = summary.get("length_correlation"), summary.get("longer_is_chosen")
    accuracy = summary.get("eval_accuracy", float(df["correct"].mean()))
    c = st.columns(4)
    c[0].metric(t("reward.eval_accuracy"), f"{accuracy:.1%}",
                help=t("reward.eval_accuracy_help", n=len(df)))
    c[1].metric(t("reward.mean_margin"), f"{summary.get('eval_margin', df['margin'].mean()):.3f}")
    c[2].metric(t("reward.length_corr"), "—" if rho is None else f"{rho:+.2f}",
                help=t("reward.length_corr_help"))
    c[3].metric(t("reward.longer_chosen"), "—" if longer is None else f"{longer:.0%}",
                help=t("reward.longer_chosen_help"))
    if summary.get("norm_std"):
        source = summary.get("norm_source") or "train"
        source = t("reward.norm_train") if source == "train" else t("reward.norm_sft", run=source)
        st.caption(t("reward.norm_caption", source=source,
                     formula=norm_formula(summary["norm_mean"], summary["norm_std"])))

    left, right = st.columns(2)
    with left:
        long = pd.concat([
            pd.DataFrame({"reward": df["chosen_reward"], "answer": chosen}),
            pd.DataFrame({"reward": df["rejected_reward"], "answer": rejected})])
        hist = alt.Chart(long).mark_bar(opacity=0.55, binSpacing=0).encode(
            x=alt.X("reward:Q", bin=alt.Bin(maxbins=30), title=t("reward.reward")),
            y=alt.Y("count():Q", stack=None, title=t("reward.count")),
            color=alt.Color("answer:N", title=None,
                            scale=alt.Scale(domain=[chosen, rejected],
                                            range=["#2e7d32", "#c62828"])))
        st.altair_chart(hist.properties(title=t("reward.hist_title"), height=260),
                        width="stretch")
        st.caption(t("reward.hist_caption"))
    with right:
        buckets = min(4, df["margin"].abs().nunique())
        if buckets >= 2:
            cut = pd.qcut(df["margin"].abs(), q=buckets, duplicates="drop")
            acc = df.groupby(cut, observed=True).agg(accuracy=("correct", "mean"),
                                                      pairs=("correct", "size")).reset_index()
            acc["bucket"] = [f"{iv.left:.2f}–{iv.right:.2f}" for iv in acc["margin"]]
            acc["order"] = range(len(acc))
            bars = alt.Chart(acc).mark_bar().encode(
                x=alt.X("bucket:N", sort=alt.SortField("order"), title=t("reward.abs_margin")),
                y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]),
                        title=t("reward.accuracy")),
                tooltip=["bucket", alt.Tooltip("accuracy:Q", format=".0%"), "pairs"])
            rule = alt.Chart(pd.DataFrame({"y": [0.5]})).mark_rule(strokeDash=[4, 4]).encode(
                y="y:Q")
            st.altair_chart(alt.layer(bars, rule).properties(
                title=t("reward.bucket_title"), height=260), width="stretch")
            st.caption(t("reward.bucket_caption"))

    scatter_df = pd.concat([
        pd.DataFrame({"length": df["chosen_length"], "reward": df["chosen_reward"],
                      "answer": chosen}),
        pd.DataFrame({"length": df["rejected_length"], "reward": df["rejected_reward"],
                      "answer": rejected})])
    color = alt.Color("answer:N", title=None, scale=alt.Scale(domain=[chosen, rejected],
                                                              range=["#2e7d32", "#c62828"]))
    points = alt.Chart(scatter_df).mark_circle(opacity=0.6).encode(
        x=alt.X("length:Q", title=t("reward.length_tokens")),
        y=alt.Y("reward:Q", title=t("reward.reward")), color=color,
        tooltip=["answer", "length", alt.Tooltip("reward:Q", format=".3f")])
    trend = alt.Chart(scatter_df).transform_regression("length", "reward").mark_line(
        color="#555", strokeDash=[6, 3]).encode(x="length:Q", y="reward:Q")
    st.altair_chart(alt.layer(points, trend).properties(
        title=t("reward.scatter_title", rho="—" if rho is None else f"{rho:+.2f}"), height=300),
        width="stretch")
    st.caption(t("reward.scatter_caption"))

    st.markdown("**" + t("reward.worst_title") + "**")
    # the pairs the model gets wrong (r⁺ ≤ r⁻), most wrong first; not merely the lowest margins
    wrong = df[df["margin"] <= 0].sort_values("margin")
    if wrong.empty:
        st.success(t("reward.worst_none"), icon=":material/check_circle:")
        return
    worst = wrong.head(MAX_WORST)
    more = " " + t("reward.worst_more", shown=len(worst)) if len(wrong) > len(worst) else ""
    st.caption(t("reward.worst_caption", count=tn("reward.worst_count", len(wrong),
                                                   total=len(df)), more=more))
    st.dataframe(
        worst[["prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "margin"]],
        hide_index=True, width="stretch",
        column_config={
            "prompt": st.column_config.TextColumn(t("reward.col_prompt"), width="medium"),
            "chosen": st.column_config.TextColumn(t("reward.col_chosen"), width="medium"),
            "rejected": st.column_config.TextColumn(t("reward.col_rejected"), width="medium"),
            "chosen_reward": st.column_config.NumberColumn(t("reward.col_chosen_reward"),
                                                           format="%.3f"),
            "rejected_reward": st.column_config.NumberColumn(t("reward.col_rejected_reward"),
                                                             format="%.3f"),
            "margin": st.column_config.NumberColumn(t("reward.col_margin"), format="%.3f")})


StagePage("reward", ":material/balance:", [LATEX["pairwise_loss"]], page_fields, run_view,
          after_run=results, view_key="reward_run_select").render()
run_id = st.session_state.get("reward_run_select")

# -- the tester ----------------------------------------------------------------------------
st.subheader(t("reward.tester"))
st.caption(t("reward.tester_caption"))
finished = runs_options("reward")
if not finished:
    st.info(t("reward.tester_none"))
else:
    ids = list(finished.values())
    labels = {v: k for k, v in finished.items()}
    default = ids.index(run_id) if run_id in ids else 0
    scorer_run = translated_choice(st.selectbox, t("reward.tester_run"), ids,
                                   "reward_tester_run", labels.get, index=default)
    # the example is filled in as real text (a grey placeholder looked filled in, and "Score
    # and rank" then said "write a prompt"); it follows the language until it is edited
    for key, example in (("reward_tester_prompt", "reward.tester_prompt_example"),
                         ("reward_tester_answers", "reward.tester_answers_example")):
        if st.session_state.get(key) in (None, *(t(example, lang) for lang in LANGUAGES)):
            st.session_state[key] = t(example)
    prompt = st.text_area(t("reward.tester_prompt"), key="reward_tester_prompt", height=80)
    answers = st.text_area(t("reward.tester_answers"), key="reward_tester_answers", height=140,
                           help=t("reward.tester_answers_help"))
    if st.button(t("reward.tester_score"), icon=":material/sort:", key="reward_tester_go"):
        lines = [a.strip() for a in (answers or "").splitlines() if a.strip()]
        if not (prompt or "").strip() or not lines:
            st.warning(t("reward.tester_need"))
        else:  # scored by a light job (engine.inference.tryout.run_score_text), not in this script
            st.session_state["reward_tester_job"] = get_jobs().submit(
                "score_text", ScoreTextConfig(reward_run=scorer_run, prompt=prompt.strip(),
                                              responses=lines))
    job = job_of_session("reward_tester_job")
    result = (job or {}).get("summary") or {}
    if job and job["status"] == "succeeded" and result.get("reward_run") == scorer_run:
        ranked = pd.DataFrame({"answer": result["responses"], "reward": result["scores"]}) \
            .sort_values("reward", ascending=False).reset_index(drop=True)
        ranked.insert(0, "rank", range(1, len(ranked) + 1))
        st.dataframe(ranked, hide_index=True, width="stretch", column_config={
            "rank": st.column_config.NumberColumn(t("reward.col_rank"), width="small"),
            "answer": st.column_config.TextColumn(t("reward.col_answer"), width="large"),
            "reward": st.column_config.ProgressColumn(
                t("reward.col_reward"), format="%.3f",
                min_value=float(min(0.0, ranked["reward"].min())),
                max_value=float(max(0.0, ranked["reward"].max(), 1e-6)))})
