"""SFT: fine-tune a LoRA adapter on an SFT dataset, watch it learn, try it beside the base."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.inference.models import display_name
from engine.objectives import LATEX
from engine.training.sft import SFTConfig
from ui.common import (datasets_or_hint, get_jobs, get_store, job_panel, line_chart, metrics_frame,
                       model_spec, translated_choice)
from ui.i18n import t
from ui.stage_page import PageFields, StagePage

store = get_store()
defaults = SFTConfig()


# -- a new run -----------------------------------------------------------------------------
def page_fields() -> PageFields | None:
    """The dataset (a select box showing row counts) and the model of the sidebar."""
    datasets = datasets_or_hint("sft", "sft")
    if not datasets:
        return None
    names = [d["name"] for d in datasets]
    rows = {d["name"]: d["rows"] for d in datasets}
    spec = model_spec()
    st.caption(t("sft.model_line", name=display_name(spec), spec=spec))
    dataset = translated_choice(st.selectbox, t("sft.dataset"), names, "sft_dataset",
                                lambda n: t("sft.dataset_option", name=n, rows=rows[n]),
                                index=names.index(defaults.dataset)
                                if defaults.dataset in names else 0)
    return PageFields(values={"model": spec, "dataset": dataset})


# -- one run: panel, numbers, curves, samples ------------------------------------------------
def _fmt(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def run_view(run_id: int) -> dict:
    run = job_panel(run_id)
    last = store.last_metrics(run_id)
    summary = run.get("summary") or {}
    evals = metrics_frame(run_id, ["eval_loss"])
    before = summary.get("eval_loss_before")
    if before is None and not evals.empty:
        before = float(evals.sort_values("step")["value"].iloc[0])
    eval_now = last.get("eval_loss")
    # a change only once an evaluation after training began exists (at step 0 the loss
    # before training is the only one: "+0.000" there is no change, and no measurement)
    trained = not evals.empty and evals["step"].max() > 0
    c = st.columns(4)
    c[0].metric(t("sft.train_loss"), _fmt(last.get("train_loss")))
    c[1].metric(t("sft.eval_loss"), _fmt(eval_now),
                delta=None if eval_now is None or before is None or not trained
                else f"{eval_now - before:+.3f}",
                delta_color="inverse", help=t("sft.eval_loss_help", before=_fmt(before)))
    c[2].metric(t("sft.tokens_per_s"), _fmt(summary.get("tokens_per_s")
                                            or last.get("tokens_per_s"), 0))
    c[3].metric(t("sft.steps"), f"{run.get('step') or 0} / {run.get('total_steps') or '—'}")

    smoothing = st.slider(t("sft.smoothing"), 0.0, 0.99, 0.6, 0.01, key=f"sft_smooth_{run_id}",
                          help=t("sft.smoothing_help"))
    left, right = st.columns(2)
    with left:
        line_chart(metrics_frame(run_id, ["train_loss"]), t("sft.chart_train_loss"),
                   smoothing=smoothing, y_title=t("sft.loss_axis"))
    with right:
        line_chart(evals, t("sft.chart_eval_loss"), y_title=t("sft.loss_axis"))
    left, right = st.columns(2)
    with left:
        line_chart(metrics_frame(run_id, ["tokens_per_s"]), t("sft.chart_tokens"),
                   y_title=t("sft.tokens_axis"))
    with right:
        line_chart(metrics_frame(run_id, ["learning_rate"]), t("sft.chart_lr"))
    with st.expander(t("sft.more_curves")):
        line_chart(metrics_frame(run_id, ["grad_norm"]), t("sft.chart_grad_norm"),
                   smoothing=smoothing)
    samples = store.get_samples(run_id)
    if samples:
        with st.expander(t("sft.samples", n=len(samples))):
            st.dataframe(pd.DataFrame([{
                t("sft.col_step"): s["step"], t("sft.col_prompt"): s["prompt"],
                t("sft.col_response"): s["response"],
                t("sft.col_reference"): (s.get("extra") or {}).get("reference", "")}
                for s in reversed(samples)]), hide_index=True, width="stretch")
    with st.expander(t("sft.config")):
        st.json(run.get("config") or {})
        if summary:
            st.json(summary)
    return run


# -- try it: base vs fine-tuned, greedy (a light job: engine.inference.tryout.run_try) -----------------
def try_it(run: dict) -> None:
    from engine.inference.tryout import TryConfig
    from ui.common import job_of_session

    run_id = run["id"]
    spec = (run.get("config") or {}).get("model") or "embedded"
    st.subheader(":material/chat: " + t("sft.try_title"))
    st.caption(t("sft.try_caption", n=TryConfig().max_new_tokens))
    default_prompt = ""
    try:
        rows = store.list_rows(run["config"].get("dataset"), split="eval", limit=1)
        default_prompt = rows[0]["prompt"] if rows and isinstance(rows[0]["prompt"], str) else ""
    except Exception:  # noqa: BLE001 - the dataset may have been deleted since
        pass
    with st.form(f"sft_try_{run_id}"):
        prompt = st.text_area(t("sft.try_prompt"), value=default_prompt, height=80)
        go = st.form_submit_button(t("sft.try_go"), icon=":material/bolt:")
    key = f"sft_try_job_{run_id}"
    if go and prompt.strip():
        st.session_state[key] = get_jobs().submit(
            "try", TryConfig(run_id=run_id, prompt=prompt.strip()), model=spec)
    job = job_of_session(key)
    if job and job["status"] == "succeeded":
        out = job.get("summary") or {}
        left, right = st.columns(2)
        with left.container(border=True):
            st.markdown("**" + t("sft.try_base", name=display_name(spec)) + "**")
            st.text(out.get("base") or "∅")
        with right.container(border=True):
            st.markdown("**" + t("sft.try_tuned", id=run_id) + "**")
            st.text(out.get("tuned") or "∅")


# -- the page --------------------------------------------------------------------------------
StagePage("sft", ":material/school:", [LATEX["sft_loss"]], page_fields, run_view,
          after_run=try_it).render()
