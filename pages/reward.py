"""Reward model: train r_φ on preference pairs, watch it learn, see how it ranks, test it."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from engine.models import LoraSettings
from engine.objectives import LATEX
from engine.reward import RewardConfig
from engine.tryout import ScoreTextConfig
from storage.db import RUN_STATES
from ui.common import (datasets_or_hint, get_jobs, get_store, job_of_session, job_panel,
                       line_chart, metrics_frame, model_spec, run_picker, runs_options,
                       translated_choice)
from ui.i18n import t, tn

store = get_store()
st.title(":material/balance: " + t("reward.title"))
st.write(t("reward.intro"))
st.latex(LATEX["pairwise_loss"])

defaults = RewardConfig()


# -- a new run -----------------------------------------------------------------------------
def new_run_form() -> None:
    datasets = datasets_or_hint("preference", "reward")
    if not datasets:
        return
    names = [d["name"] for d in datasets]
    sft_runs = runs_options("sft")
    with st.form("reward_form"):
        dataset = st.selectbox(t("reward.dataset"), names, format_func=lambda n: t(
            "reward.dataset_option", name=n, rows=next(d["rows"] for d in datasets
                                                        if d["name"] == n)),
            index=names.index(defaults.dataset) if defaults.dataset in names else 0)
        c = st.columns(4)
        max_steps = c[0].number_input(t("reward.max_steps"), 1, 100_000, defaults.max_steps,
                                      help=t("reward.max_steps_help"))
        batch_size = c[1].number_input(t("reward.batch_size"), 1, 256, defaults.batch_size,
                                       help=t("reward.batch_size_help"))
        lr = c[2].number_input(t("reward.lr"), 1e-6, 1e-1, defaults.lr, step=1e-5, format="%.1e",
                               help=t("reward.lr_help"))
        max_length = c[3].number_input(t("reward.max_length"), 32, 8192, defaults.max_length,
                                       step=32, help=t("reward.max_length_help"))
        c = st.columns(4)
        margin = c[0].number_input(t("reward.margin"), 0.0, 10.0, defaults.margin, step=0.1,
                                   help=t("reward.margin_help"))
        seed = c[1].number_input(t("reward.seed"), 0, 2**31 - 1, defaults.seed)
        max_eval = c[2].number_input(t("reward.max_eval_pairs"), 0, 100_000,
                                     defaults.max_eval_pairs, help=t("reward.max_eval_help"))
        eval_every = c[3].number_input(t("reward.eval_every"), 0, 100_000, defaults.eval_every,
                                       help=t("reward.eval_every_help"))
        normalize = st.checkbox(t("reward.normalize"), defaults.normalize,
                                help=t("reward.normalize_help"))
        norm_sources = [None, *sft_runs.values()]
        norm_labels = {None: t("reward.norm_train"),
                       **{rid: t("reward.norm_sft", run=label) for label, rid in sft_runs.items()}}
        norm_source = st.selectbox(t("reward.norm_source"), norm_sources,
                                   format_func=lambda v: norm_labels[v])
        with st.expander(t("reward.advanced")):
            c = st.columns(4)
            lora_r = c[0].number_input(t("reward.lora_r"), 1, 256, defaults.lora.r)
            lora_alpha = c[1].number_input(t("reward.lora_alpha"), 1, 512, defaults.lora.alpha)
            head_lr = c[2].number_input(t("reward.head_lr"), 1e-6, 1.0, defaults.head_lr,
                                        step=1e-4, format="%.1e", help=t("reward.head_lr_help"))
            grad_accum = c[3].number_input(t("reward.grad_accum"), 1, 64, defaults.grad_accum)
            group = st.checkbox(t("reward.group_by_length"), defaults.group_by_length,
                                help=t("reward.group_by_length_help"))
        name = st.text_input(t("reward.run_name"), placeholder=t("reward.run_name_placeholder"))
        submitted = st.form_submit_button(t("reward.start"), icon=":material/play_arrow:",
                                          type="primary")
    if submitted:
        cfg = RewardConfig(
            model=model_spec(), dataset=dataset, max_steps=int(max_steps),
            batch_size=int(batch_size), lr=float(lr), max_length=int(max_length),
            margin=float(margin), seed=int(seed), max_eval_pairs=int(max_eval),
            eval_every=int(eval_every), normalize=bool(normalize),
            normalize_sft_run=norm_source, head_lr=float(head_lr), grad_accum=int(grad_accum),
            group_by_length=bool(group),
            lora=LoraSettings(r=int(lora_r), alpha=int(lora_alpha),
                              dropout=defaults.lora.dropout))
        run_id = get_jobs().submit("reward", cfg, name=name.strip() or None,
                                   parents=[norm_source] if norm_source else None)
        st.session_state["reward_run_select"] = run_id
        st.toast(t("reward.started", run=run_id), icon=":material/play_arrow:")


st.subheader(t("reward.new_run"))
new_run_form()

# -- one run: live curves, then results ---------------------------------------------------
st.subheader(t("reward.run"))
picked = run_picker("reward", t("reward.pick_run"), key="reward_run_select",
                    status=RUN_STATES)
if picked is None:
    st.caption(t("reward.no_runs"))
    run_id = None
else:
    run_id = picked["id"]
    smoothing = st.slider(t("reward.smoothing"), 0.0, 0.95, 0.6, 0.05,
                          help=t("reward.smoothing_help"))
    was_active = picked["status"] in ("queued", "running")

    @st.fragment(run_every=2 if was_active else None)
    def live(run_id: int) -> None:
        run = job_panel(run_id)
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
        if was_active and run["status"] not in ("queued", "running"):
            st.rerun()  # the whole page: the results appear

    live(run_id)


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
    df = eval_frame(run["id"])
    summary = run.get("summary") or {}
    if df.empty:
        st.info(t("reward.no_eval"))
        return
    st.subheader(t("reward.results"))
    chosen, rejected = t("reward.chosen"), t("reward.rejected")
    # the stage's own figures over these pairs (engine.reward.train_reward's summary)
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


if run_id is not None and picked["status"] == "succeeded":
    results(store.get_run(run_id))

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
    prompt = st.text_area(t("reward.tester_prompt"), key="reward_tester_prompt",
                          placeholder=t("reward.tester_prompt_placeholder"), height=80)
    answers = st.text_area(t("reward.tester_answers"), key="reward_tester_answers",
                           placeholder=t("reward.tester_answers_placeholder"), height=140,
                           help=t("reward.tester_answers_help"))
    if st.button(t("reward.tester_score"), icon=":material/sort:", key="reward_tester_go"):
        lines = [a.strip() for a in (answers or "").splitlines() if a.strip()]
        if not (prompt or "").strip() or not lines:
            st.warning(t("reward.tester_need"))
        else:  # scored by a light job (engine.tryout.run_score_text), not in this script
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
