"""SFT: fine-tune a LoRA adapter on an SFT dataset, watch it learn, try it beside the base."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine.models import LoraSettings, display_name
from engine.objectives import LATEX
from engine.sft import SFTConfig
from ui.common import (datasets_or_hint, get_jobs, get_store, job_panel, line_chart, metrics_frame,
                       model_spec, run_picker)
from ui.i18n import t

store = get_store()
defaults = SFTConfig()
SCHEDULES = ["cosine", "linear", "constant"]

st.title(":material/school: " + t("sft.title"))
st.write(t("sft.intro"))
st.latex(LATEX["sft_loss"])


# -- a new run -----------------------------------------------------------------------------
def new_run_form() -> None:
    datasets = datasets_or_hint("sft", "sft")
    if not datasets:
        return
    names = [d["name"] for d in datasets]
    rows = {d["name"]: d["rows"] for d in datasets}
    spec = model_spec()
    st.caption(t("sft.model_line", name=display_name(spec), spec=spec))
    with st.form("sft_form"):
        dataset = st.selectbox(t("sft.dataset"), names,
                               format_func=lambda n: t("sft.dataset_option", name=n, rows=rows[n]),
                               index=names.index(defaults.dataset) if defaults.dataset in names
                               else 0)
        c = st.columns(4)
        epochs = c[0].number_input(t("sft.epochs"), 0.1, 100.0, float(defaults.epochs), step=0.5,
                                   help=t("sft.epochs_help"))
        batch_size = c[1].number_input(t("sft.batch_size"), 1, 256, defaults.batch_size,
                                       help=t("sft.batch_size_help"))
        lr = c[2].number_input(t("sft.lr"), 1e-7, 1e-1, defaults.learning_rate, step=1e-5,
                               format="%.1e", help=t("sft.lr_help"))
        max_length = c[3].number_input(t("sft.max_length"), 16, 8192, defaults.max_length,
                                       step=32, help=t("sft.max_length_help"))
        with st.expander(t("sft.advanced"), icon=":material/tune:"):
            c = st.columns(4)
            max_steps = c[0].number_input(t("sft.max_steps"), 0, 1_000_000, defaults.max_steps,
                                          help=t("sft.max_steps_help"))
            grad_accum = c[1].number_input(t("sft.grad_accum"), 1, 256, defaults.grad_accum,
                                           help=t("sft.grad_accum_help"))
            schedule = c[2].selectbox(t("sft.schedule"), SCHEDULES,
                                      index=SCHEDULES.index(defaults.schedule),
                                      format_func=lambda s: t("sft.schedule_" + s))
            warmup = c[3].number_input(t("sft.warmup_ratio"), 0.0, 0.9, defaults.warmup_ratio,
                                       step=0.05, help=t("sft.warmup_help"))
            c = st.columns(4)
            eval_every = c[0].number_input(t("sft.eval_every"), 0, 100_000, defaults.eval_every,
                                           help=t("sft.eval_every_help"))
            eval_rows = c[1].number_input(t("sft.eval_max_rows"), 0, 100_000,
                                          defaults.eval_max_rows)
            ckpt_every = c[2].number_input(t("sft.checkpoint_every"), 0, 100_000,
                                           defaults.checkpoint_every,
                                           help=t("sft.checkpoint_every_help"))
            seed = c[3].number_input(t("sft.seed"), 0, 2**31 - 1, defaults.seed)
            c = st.columns(4)
            weight_decay = c[0].number_input(t("sft.weight_decay"), 0.0, 1.0,
                                             defaults.weight_decay, step=0.01)
            max_grad_norm = c[1].number_input(t("sft.max_grad_norm"), 0.0, 100.0,
                                              defaults.max_grad_norm, step=0.1,
                                              help=t("sft.max_grad_norm_help"))
            eval_samples = c[2].number_input(t("sft.eval_samples"), 0, 16, defaults.eval_samples,
                                             help=t("sft.eval_samples_help"))
            sample_tokens = c[3].number_input(t("sft.sample_tokens"), 1, 512,
                                              defaults.sample_tokens)
            st.markdown("**" + t("sft.lora") + "**")
            c = st.columns(4)
            lora_r = c[0].number_input(t("sft.lora_r"), 1, 256, defaults.lora.r,
                                       help=t("sft.lora_r_help"))
            lora_alpha = c[1].number_input(t("sft.lora_alpha"), 1, 1024, defaults.lora.alpha)
            lora_dropout = c[2].number_input(t("sft.lora_dropout"), 0.0, 0.9,
                                             defaults.lora.dropout, step=0.05)
            targets = c[3].text_input(t("sft.lora_targets"), placeholder="q_proj, v_proj",
                                      help=t("sft.lora_targets_help"))
            group = st.checkbox(t("sft.group_by_length"), defaults.group_by_length,
                                help=t("sft.group_by_length_help"))
        name = st.text_input(t("sft.run_name"), placeholder=t("sft.run_name_placeholder"))
        submitted = st.form_submit_button(t("sft.start"), icon=":material/play_arrow:",
                                          type="primary")
    if submitted:
        target_list = [x.strip() for x in targets.split(",") if x.strip()] or None
        cfg = SFTConfig(
            model=spec, dataset=dataset, epochs=float(epochs), max_steps=int(max_steps),
            batch_size=int(batch_size), grad_accum=int(grad_accum), learning_rate=float(lr),
            schedule=schedule, warmup_ratio=float(warmup), weight_decay=float(weight_decay),
            max_grad_norm=float(max_grad_norm), max_length=int(max_length),
            eval_every=int(eval_every), eval_max_rows=int(eval_rows),
            eval_samples=int(eval_samples), sample_tokens=int(sample_tokens), seed=int(seed),
            checkpoint_every=int(ckpt_every), group_by_length=bool(group),
            lora=LoraSettings(r=int(lora_r), alpha=int(lora_alpha), dropout=float(lora_dropout),
                              target_modules=target_list))
        run_id = get_jobs().submit("sft", cfg, name=name.strip() or None)
        st.session_state["sft_view"] = run_id
        st.toast(t("sft.started", id=run_id), icon=":material/play_arrow:")


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
    c = st.columns(4)
    c[0].metric(t("sft.train_loss"), _fmt(last.get("train_loss")))
    c[1].metric(t("sft.eval_loss"), _fmt(eval_now),
                delta=None if eval_now is None or before is None else f"{eval_now - before:+.3f}",
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


@st.fragment(run_every=2)
def live_view(run_id: int) -> None:
    run = run_view(run_id)
    if run["status"] not in ("queued", "running"):
        st.rerun()  # the whole page: the finished view and the "try it" box


# -- try it: base vs fine-tuned, greedy (a light job: engine.tryout.run_try) -----------------
def try_it(run: dict) -> None:
    from engine.tryout import TryConfig
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
with st.container(border=True):
    st.subheader(":material/add_circle: " + t("sft.new_run"))
    new_run_form()

st.subheader(":material/monitoring: " + t("sft.runs"))
run = run_picker("sft", t("sft.view_run"), key="sft_view")
if run is None:
    st.caption(t("sft.no_runs"))
else:
    run_id = run["id"]
    if run["status"] in ("queued", "running"):
        live_view(run_id)
    else:
        run_view(run_id)
        if run["status"] == "succeeded":
            try_it(run)
