"""Runs: every run of every stage in one table; open one (charts, config, samples, log,
artifacts, clone, delete, resume) or overlay the curves of several runs of one stage."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.runtime import runs as R
from engine.runtime.jobs import queue_positions
from storage import NotFound
from storage.db import RUN_STATES
from ui.common import (SMOOTH_MIN_POINTS, get_jobs, get_store, job_panel, line_chart,
                       metric_label, metrics_frame, stage_label, status_text,
                       translated_choice)
from ui.i18n import t, tn

MAX_SAMPLES = 500
MAX_LOG_LINES = 1000
MAX_CHARTS = 4

store = get_store()




def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else "—"


def seconds_text(value: float | None) -> str:
    if value is None:
        return "—"
    value = int(round(value))
    return f"{value // 3600}:{value // 60 % 60:02d}:{value % 60:02d}" if value >= 3600 \
        else f"{value // 60}:{value % 60:02d}"


def flash() -> None:
    """A message left by the last action (the page reruns after it)."""
    message = st.session_state.pop("runs_flash", None)
    if message:
        st.success(message, icon=":material/check_circle:")


def default_charts(names: list[str], key: str | None) -> list[str]:
    """The key metric first, then losses, scores, KL and accuracies (at most MAX_CHARTS)."""
    order = [key] if key in names else []
    for fragment in ("loss", "score", "reward", "kl", "acc"):
        order += [n for n in names if fragment in n.lower() and n not in order]
    return (order or names)[:MAX_CHARTS]


def overlay_defaults(candidates: list[dict], n: int = 2) -> list[int]:
    """The runs the overlay starts with: the newest succeeded ones whose key metric is a
    curve (at least SMOOTH_MIN_POINTS points of it); never a cancelled or failed run's
    few points, nor a run still going (none at all rather than those)."""
    picked = []
    for r in candidates:
        if len(picked) == n:
            break
        if r["status"] == "succeeded" and r["metric"] and r["n_metrics"] >= SMOOTH_MIN_POINTS \
                and len(store.get_metrics(r["id"], [r["metric"]])) >= SMOOTH_MIN_POINTS:
            picked.append(r["id"])
    return picked


# -- the table ------------------------------------------------------------------------
st.title(":material/monitoring: " + t("runs.title"))
st.caption(t("runs.intro"))
flash()

all_rows = R.overview(store, show_light=True)
if not all_rows:
    st.info(t("runs.none"), icon=":material/info:")
    st.stop()

# light jobs (pair sampling for each vote, comparisons, exports, try-outs) are hidden unless
# asked for; a copy just started from one (clone) turns them on, so it can be opened
if any(r["id"] == st.session_state.get("runs_open_next") and r["light"] for r in all_rows):
    st.session_state["runs_show_light"] = True
show_light = st.toggle(t("runs.show_light"), key="runs_show_light",
                       help=t("runs.show_light_help"))
cols = st.columns([2, 2, 3])
present = sorted({r["stage"] for r in all_rows if show_light or not r["light"]})
stage_filter = translated_choice(cols[0].multiselect, t("runs.filter_stage"), present,
                                 "runs_stage", stage_label, placeholder=t("runs.all"))
status_filter = translated_choice(cols[1].multiselect, t("runs.filter_status"),
                                  list(RUN_STATES), "runs_status",
                                  lambda s: t("common.status_" + s), placeholder=t("runs.all"))
search = cols[2].text_input(t("runs.search"), key="runs_search",
                            placeholder=t("runs.search_placeholder"))
rows = R.filter_rows(all_rows, stage_filter, status_filter, search, show_light=show_light)
hidden = 0 if show_light else sum(r["light"] for r in all_rows)
st.caption(tn("runs.count", len(all_rows), shown=len(rows))
           + (" " + tn("runs.light_hidden", hidden) if hidden else ""))

if rows:
    queues = queue_positions(store)  # where each queued run stands in its queue
    table = pd.DataFrame([{
        "id": r["id"], "name": r["name"], "stage": stage_label(r["stage"]),
        "status": status_text(r, queues.get(r["id"])),
        "metric": f"{metric_label(r['metric'])} = {r['value']:.4g}" if r["metric"] else "—",
        "steps": f"{r['step']}/{r['total_steps']}" if r["total_steps"] else str(r["step"]),
        "duration": seconds_text(r["duration"]), "started": when(r["started"]),
        "model": r["model"], "dataset": r["dataset"], "parents": r["parents"],
    } for r in rows])
    st.dataframe(table, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(rows)),
                 column_config={
                     "id": st.column_config.NumberColumn("#", width="small"),
                     "name": st.column_config.TextColumn(t("runs.col_name")),
                     "stage": st.column_config.TextColumn(t("runs.col_stage")),
                     "status": st.column_config.TextColumn(t("runs.col_status")),
                     "model": st.column_config.TextColumn(t("runs.col_model")),
                     "dataset": st.column_config.TextColumn(t("runs.col_dataset")),
                     "parents": st.column_config.TextColumn(t("runs.col_parents")),
                     "started": st.column_config.TextColumn(t("runs.col_started")),
                     "duration": st.column_config.TextColumn(t("runs.col_duration")),
                     "metric": st.column_config.TextColumn(t("runs.col_metric")),
                     "steps": st.column_config.TextColumn(t("runs.col_steps")),
                 })
else:
    st.info(t("runs.no_match"), icon=":material/filter_alt_off:")

by_id = {r["id"]: r for r in rows}
tab_open, tab_overlay = st.tabs([":material/open_in_new: " + t("runs.tab_open"),
                                 ":material/stacked_line_chart: " + t("runs.tab_overlay")])


# -- one run ----------------------------------------------------------------------------
def run_details(run_id: int) -> None:
    try:
        run = job_panel(run_id, show_log=False)
    except NotFound:
        st.warning(t("runs.gone", id=run_id))
        return
    row = next((r for r in all_rows if r["id"] == run_id), {})
    st.caption(t("runs.meta", stage=stage_label(run["stage"]), model=run.get("model") or "—",
                 dataset=run.get("dataset") or "—", parents=row.get("parents") or "—",
                 started=when(run.get("started")), duration=seconds_text(R.duration(run))))
    charts, config, samples, log, artifacts, manage = st.tabs([
        ":material/show_chart: " + t("runs.tab_charts"),
        ":material/tune: " + t("runs.tab_config"),
        ":material/chat: " + t("runs.tab_samples"),
        ":material/receipt_long: " + t("runs.tab_log"),
        ":material/inventory_2: " + t("runs.tab_artifacts"),
        ":material/build: " + t("runs.tab_manage")])
    with charts:
        run_charts(run, row.get("metric"))
    with config:
        st.json(run["config"], expanded=2)
        if run.get("summary"):
            st.markdown("**" + t("runs.summary") + "**")
            st.json(run["summary"], expanded=1)
    with samples:
        run_samples(run_id)
    with log:
        lines = store.get_log(run_id)
        if len(lines) > MAX_LOG_LINES:
            st.caption(t("runs.log_cut", n=MAX_LOG_LINES, total=len(lines)))
            lines = lines[-MAX_LOG_LINES:]
        st.code("\n".join(time.strftime("%H:%M:%S", time.localtime(r["time"]))
                          + f" {r['level']:<7} {r['message']}" for r in lines) or "—",
                language=None)
    with artifacts:
        run_artifacts(run_id)
    with manage:
        clone_form(run)
        st.divider()
        delete_form(run)


def run_charts(run: dict, key_name: str | None) -> None:
    names = store.metric_names(run["id"])
    if not names:
        st.caption(t("common.no_data"))
        return
    left, right = st.columns([3, 1])
    chosen = translated_choice(left.multiselect, t("runs.metrics"), names,
                               f"runs_metrics_{run['id']}", metric_label,
                               default=default_charts(names, key_name))
    smoothing = right.slider(t("runs.smoothing"), 0.0, 0.99, 0.6, 0.01, key="runs_smoothing",
                             help=t("runs.smoothing_help"))
    grid = st.columns(2)
    for i, name in enumerate(chosen):
        with grid[i % 2]:
            line_chart(metrics_frame(run["id"], [name]), metric_label(name),
                       smoothing=smoothing)


def run_samples(run_id: int) -> None:
    rows = store.get_samples(run_id)
    if not rows:
        st.caption(t("runs.no_samples"))
        return
    rows = rows[-MAX_SAMPLES:][::-1]
    flat = []
    for r in rows:
        item = {"step": r["step"], "prompt": r["prompt"], "response": r["response"]}
        for extra in ("reward", "kl"):
            if r.get(extra) is not None:
                item[extra] = r[extra]
        for k, v in (r.get("extra") or {}).items():
            item[k] = v if isinstance(v, (int, float, str)) or v is None else json.dumps(v)
        flat.append(item)
    st.dataframe(pd.DataFrame(flat), hide_index=True, width="stretch", column_config={
        "step": st.column_config.NumberColumn(t("common.step")),
        "prompt": st.column_config.TextColumn(t("runs.col_prompt"), width="medium"),
        "response": st.column_config.TextColumn(t("runs.col_response"), width="large")})


def run_artifacts(run_id: int) -> None:
    items = store.list_artifacts(run_id)
    if not items:
        st.caption(t("runs.no_artifacts"))
        return
    st.dataframe(pd.DataFrame([{
        "kind": a["kind"], "path": a["path"], "exists": Path(a["path"]).exists(),
        "sha256": (a.get("sha256") or "")[:16], "created": when(a.get("created"))}
        for a in items]), hide_index=True, width="stretch", column_config={
        "kind": st.column_config.TextColumn(t("runs.col_kind")),
        "path": st.column_config.TextColumn(t("runs.col_path")),
        "exists": st.column_config.CheckboxColumn(t("runs.col_exists")),
        "created": st.column_config.TextColumn(t("runs.col_created"))})


def clone_form(run: dict) -> None:
    st.markdown("**" + t("runs.clone_title") + "**")
    st.caption(t("runs.clone_help"))
    try:
        _, cfg = R.clone_config(store, run["id"])
    except Exception:  # noqa: BLE001 - e.g. the stage is not available here; edit raw
        cfg = run["config"]
    text = st.text_area(t("runs.clone_config"), json.dumps(cfg, indent=2, ensure_ascii=False),
                        height=260, key=f"runs_clone_cfg_{run['id']}")
    name = st.text_input(t("runs.clone_name"), key=f"runs_clone_name_{run['id']}",
                         placeholder=t("runs.clone_name_placeholder"))
    if st.button(t("runs.clone_button"), icon=":material/content_copy:",
                 key=f"runs_clone_{run['id']}"):
        try:
            new_id = R.clone_run(get_jobs(), run["id"], text, name=name.strip() or None)
        except (ValueError, KeyError) as exc:
            st.error(t("runs.clone_error", error=str(exc)))
            return
        st.session_state["runs_flash"] = t("runs.cloned", id=new_id, source=run["id"])
        st.session_state["runs_open_next"] = new_id
        st.rerun()


def delete_form(run: dict) -> None:
    st.markdown("**" + t("runs.delete_title") + "**")
    active = run["status"] in R.ACTIVE_STATES
    if active:
        st.caption(t("runs.delete_active"))
    confirm_key = "runs_confirm_delete"
    if st.session_state.get(confirm_key) != run["id"]:
        if st.button(t("runs.delete_button"), icon=":material/delete:", disabled=active,
                     key=f"runs_delete_{run['id']}"):
            st.session_state[confirm_key] = run["id"]
            st.rerun()
        return
    st.warning(t("runs.delete_confirm", id=run["id"], name=run["name"],
                 folder=str(R.run_folder(run["id"]))), icon=":material/warning:")
    kids = R.children(store, run["id"])
    if kids:
        st.caption(t("runs.delete_children", runs=", ".join(f"#{k['id']} {k['name']}"
                                                               for k in kids)))
    yes, no = st.columns(2)
    if yes.button(t("runs.delete_yes"), type="primary", icon=":material/delete_forever:",
                  key="runs_delete_yes", disabled=active):
        try:
            R.delete_run(store, run["id"])
        except ValueError as exc:
            st.error(str(exc))
            return
        st.session_state.pop(confirm_key, None)
        st.session_state["runs_flash"] = t("runs.deleted", id=run["id"], name=run["name"])
        st.rerun()
    if no.button(t("runs.delete_no"), key="runs_delete_no"):
        st.session_state.pop(confirm_key, None)
        st.rerun()


with tab_open:
    # the run open here stays open when an action on it (Resume, Cancel) takes it out of
    # the filter: the view jumped to another run (a resumed #8 is no longer "cancelled")
    kept = st.session_state.get("runs_open")
    if kept not in by_id and kept in {r["id"] for r in all_rows}:
        by_id = {kept: next(r for r in all_rows if r["id"] == kept), **by_id}
        st.caption(t("runs.open_outside_filter", id=kept))
    if by_id:
        wanted = st.session_state.pop("runs_open_next", None)
        if wanted in by_id:
            st.session_state["runs_open"] = wanted
        if st.session_state.get("runs_open") not in by_id:
            st.session_state.pop("runs_open", None)
        run_id = translated_choice(st.selectbox, t("runs.open"), list(by_id), "runs_open",
                                   lambda i: f"#{i} {by_id[i]['name']} · "
                                             f"{stage_label(by_id[i]['stage'])} · "
                                             + t("common.status_" + by_id[i]["status"]))
        live = by_id[run_id]["status"] in R.ACTIVE_STATES
        st.fragment(run_every=2.0 if live else None)(run_details)(run_id)
    else:
        st.caption(t("runs.no_match"))


# -- several runs -----------------------------------------------------------------------
with tab_overlay:
    stages_here = sorted({r["stage"] for r in rows})
    if not stages_here:
        st.caption(t("runs.no_match"))
    else:
        c1, c2 = st.columns([1, 3])
        # default: the stage with the most runs (pipeline order on ties)
        order = {"sft": 0, "reward": 1, "ppo": 2}
        busiest = min(stages_here, key=lambda s: (-sum(r["stage"] == s for r in rows),
                                                  order.get(s, 9), s))
        stage = translated_choice(c1.selectbox, t("runs.overlay_stage"), stages_here,
                                  "runs_overlay_stage", stage_label,
                                  index=stages_here.index(busiest))
        candidates = [r for r in rows if r["stage"] == stage]
        default = overlay_defaults(candidates)
        picked = c2.multiselect(t("runs.overlay_runs"), [r["id"] for r in candidates],
                                default=default, key=f"runs_overlay_ids_{stage}",
                                format_func=lambda i: f"#{i} {by_id[i]['name']}",
                                placeholder=t("runs.overlay_placeholder"))
        names = R.common_metric_names(store, picked)
        if len(picked) < 2:
            st.caption(t("runs.overlay_pick"))
        elif not names:
            st.caption(t("runs.overlay_no_common"))
        else:
            c1, c2 = st.columns([3, 1])
            key_name = by_id[picked[0]]["metric"]
            metric = translated_choice(c1.selectbox, t("runs.overlay_metric"), names,
                                       "runs_overlay_metric", metric_label,
                                       index=names.index(key_name) if key_name in names else 0)
            smooth = c2.slider(t("runs.smoothing"), 0.0, 0.99, 0.6, 0.01,
                               key="runs_overlay_smoothing", help=t("runs.smoothing_help"))
            line_chart(metrics_frame(picked, [metric]), metric_label(metric), smoothing=smooth,
                       height=320)
            diff = R.config_diff([store.get_run(i) for i in picked])
            st.markdown("**" + t("runs.config_diff") + "**")
            if diff:
                st.dataframe(pd.DataFrame(diff).rename(columns={"field": t("runs.col_field")}),
                             hide_index=True, width="stretch")
            else:
                st.caption(t("runs.config_same"))


# -- reward against KL, across the RL stages (PPO, DPO, GRPO) ------------------------------------
def reward_kl_defaults(candidates: list[dict]) -> list[int]:
    """The newest succeeded run of each stage that logged its (KL, reward) pair."""
    picked, stages_done = [], set()
    for r in candidates:
        if r["stage"] not in stages_done and r["status"] == "succeeded" \
                and R.reward_kl_pair(store, r) is not None:
            picked.append(r["id"])
            stages_done.add(r["stage"])
    return picked


def reward_kl_view() -> None:
    candidates = [r for r in rows if r["stage"] in R.REWARD_KL_METRICS]
    if not candidates:
        return
    st.divider()
    st.subheader(t("runs.rkl_title"))
    st.caption(t("runs.rkl_intro"))
    ids = [r["id"] for r in candidates]
    if any(i not in ids for i in st.session_state.get("runs_rkl_ids") or []):
        st.session_state.pop("runs_rkl_ids")  # a run deleted or filtered out meanwhile
    picked = st.multiselect(t("runs.rkl_runs"), ids, default=reward_kl_defaults(candidates),
                            key="runs_rkl_ids", placeholder=t("runs.overlay_placeholder"),
                            format_func=lambda i: f"#{i} {by_id[i]['name']} · "
                                                  f"{stage_label(by_id[i]['stage'])}")
    points = pd.DataFrame(R.reward_vs_kl(store, picked))
    if points.empty:
        st.caption(t("runs.rkl_none"))
        return
    points["series"] = [f"#{i} {by_id[i]['name']} · {stage_label(by_id[i]['stage'])}"
                        for i in points["run"]]
    points["kl_name"] = [metric_label(n) for n in points["kl_metric"]]
    points["reward_name"] = [metric_label(n) for n in points["reward_metric"]]
    points = points.drop(columns=["kl_metric", "reward_metric", "stage"])
    encoding = {
        "x": {"field": "kl", "type": "quantitative", "title": t("runs.rkl_x"),
              "scale": {"zero": False}},
        "y": {"field": "reward", "type": "quantitative", "title": t("runs.rkl_y"),
              "scale": {"zero": False}},
        "color": {"field": "series", "type": "nominal", "title": t("runs.rkl_legend"),
                  "scale": {"scheme": "tableau10"},  # one distinct hue per run
                  "legend": {"orient": "bottom", "columns": 1, "labelLimit": 600}},
        "order": {"field": "step", "type": "quantitative"},
        "tooltip": [{"field": "series", "title": t("runs.rkl_legend")},
                    {"field": "step", "title": t("common.step")},
                    {"field": "kl_name", "title": t("runs.rkl_kl_metric")},
                    {"field": "kl", "title": t("runs.rkl_x"), "format": ".4g"},
                    {"field": "reward_name", "title": t("runs.rkl_reward_metric")},
                    {"field": "reward", "title": t("runs.rkl_y"), "format": ".4g"}],
    }
    st.vega_lite_chart(spec={
        "height": 320, "datasets": {"points": points}, "data": {"name": "points"},
        "encoding": encoding,
        "layer": [{"mark": {"type": "line", "opacity": 0.5}},
                  {"mark": {"type": "point", "filled": True, "size": 60}}]}, width="stretch")
    pairs = points.drop_duplicates("series")
    st.caption(t("runs.rkl_pairs", pairs="; ".join(
        t("runs.rkl_pair", run=s, reward=y, kl=x)
        for s, x, y in zip(pairs["series"], pairs["kl_name"], pairs["reward_name"]))))


with tab_overlay:
    reward_kl_view()
