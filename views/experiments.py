"""Experiments: the course's recipes (one click each), a custom sweep of one or two
settings, and run groups: their runs overlaid on shared axes, a summary table and the
sentence computed from the numbers."""
from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from engine import schema
from engine.experiments import runner
from engine.experiments.catalogue import recipes
from engine.experiments.plan import (Chart, expand_sweep, parse_vary, recipe_text_keys,
                                     value_text)
from engine.objectives import LATEX
from engine.runtime import stages
from engine.schema import ConfigError
from storage import NotFound
from storage.db import ACTIVE_STATES, RESUMABLE_STATES, RUN_STATES
from ui.common import (STATUS_ICONS, get_jobs, get_store, keep_widget, legend_layout,
                       metric_label, model_spec, status_label)
from ui.forms import settings_form
from ui.i18n import catalogue, t, tn
from ui.stage_page import page_values_key

STAGE_PAGES = {f"views/{s}.py" for s in ("sft", "reward", "ppo", "dpo", "grpo")}
CONFIRM_ABOVE = 6       # a sweep of more runs asks for a confirmation before it is queued
OPEN_KEY = "exp_open"   # the group the page shows

store = get_store()


def text_of(*keys: str, **params) -> str:
    """The first of `keys` the catalogue knows (recipes keep their own namespace)."""
    for key in keys:
        if key in catalogue("en"):
            return t(key, **params)
    return keys[0]


def recipe_text(name: str, part: str) -> str:
    return text_of(*recipe_text_keys(name, part))


def stage_name(stage: str | None) -> str:
    """A stage's name in words (a stage the catalogues do not know: its own name, spaced)."""
    if not stage:
        return "—"
    for key in (f"experiments.stage_{stage}", f"runs.stage_{stage}"):
        if key in catalogue("en"):
            return t(key)
    return stage.replace("_", " ")


def column_label(name: str) -> str:
    """A summary table's column: a metric's name, a setting's label, else its own name."""
    if name == "run_id":
        return "#"
    if name in ("key", "label", "run", "status"):
        return t(f"experiments.col_{name}")
    if f"recipes.col_{name}" in catalogue("en"):   # a recipe's own column (recipes.json)
        return t(f"recipes.col_{name}")
    label = metric_label(name)
    if label != name:
        return label
    key = f"settings.{name.replace('.', '_')}"
    return t(key) if key in catalogue("en") else name


def summary_frame(table: list[dict], runs: list[dict]) -> pd.DataFrame:
    """A summary table as shown: plain values only (a run's own summary dict stays in the
    stored table), a run by its label, varied values as typed ("inf" for no clip), each
    column under its label (its own name where two labels meet)."""
    df = pd.DataFrame(table)
    labels = {r["key"]: r["label"] for r in runs}
    if "key" in df.columns:
        df["key"] = df["key"].map(lambda k: labels.get(k, k))
    for name in {k for r in runs for k in r["varied"]} & set(df.columns):
        df[name] = df[name].map(value_text)
    df = df[[c for c in df.columns if not df[c].map(lambda v: isinstance(v, (dict, list))).any()]]
    if "status" in df.columns:
        df = df.assign(status=df["status"].map(
            lambda v: t(f"common.status_{v}") if v in RUN_STATES else t("experiments.pending")))
    if "run_id" in df.columns:   # an id, not a quantity; none yet: a dash, not "None"
        df["run_id"] = df["run_id"].map(lambda v: "—" if _missing(v) else f"#{int(v)}")
    for c in df.columns:   # a run not run yet has no values: dashes, the others as numbers
        if df[c].map(_missing).any():
            df[c] = df[c].map(lambda v: "—" if _missing(v)
                              else f"{v:.4g}" if isinstance(v, float) else v)
    names, used = {}, set()
    for c in df.columns:
        label = column_label(c)
        names[c] = label if label not in used else c
        used.add(names[c])
    return df.rename(columns=names)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def flash() -> None:
    message = st.session_state.pop("exp_flash", None)
    if message:
        st.success(message, icon=":material/check_circle:")


def opened(group_id: int, message: str) -> None:
    st.session_state[OPEN_KEY] = group_id
    st.session_state["exp_flash"] = message
    st.rerun()


# -- recipes ------------------------------------------------------------------------------
def recipe_cards() -> None:
    known = recipes()
    if not known:
        st.info(t("experiments.no_recipes"), icon=":material/info:")
        return
    cols = st.columns(2)
    for i, recipe in enumerate(known.values()):
        with cols[i % 2].container(border=True):
            st.subheader(recipe_text(recipe.name, "title"))
            st.write(recipe_text(recipe.name, "text"))
            formula = LATEX.get(recipe.formula)   # the recipe names its equation
            if formula:
                st.latex(formula)
            with st.expander(t("experiments.recipe_settings"), icon=":material/tune:"):
                settings, _ = settings_form(recipe.settings_cls, f"recipe_{recipe.name}",
                                            fixed={"model": model_spec()})
            n_runs = len(recipe.plan(settings)) if settings is not None else 0
            meta = "experiments.recipe_meta_gpu" if recipe.device == "gpu" else \
                "experiments.recipe_meta"
            st.caption(t(meta, minutes=f"{recipe.minutes:g}", runs=n_runs))
            if st.button(t("experiments.start"), key=f"exp_start_{recipe.name}",
                         icon=":material/play_arrow:", type="primary",
                         disabled=settings is None):
                try:
                    group_id = runner.submit_recipe(get_jobs(), store, recipe.name, settings)
                except ConfigError as exc:
                    st.error(str(exc), icon=":material/error:")
                else:
                    opened(group_id, t("experiments.started", id=group_id,
                                       name=recipe_text(recipe.name, "title")))


# -- a custom sweep -------------------------------------------------------------------------
def sweepable(cls: type) -> list[schema.FieldInfo]:
    """The fields a sweep may vary: numbers and choices the form draws."""
    return [i for i in schema.describe(cls) if i.meta.widget not in ("page", "hidden")
            and (i.meta.choices or i.type in ("int", "float"))]


def field_choice(infos: list[schema.FieldInfo], label: str, key: str, none: bool = False):
    names = ([""] if none else []) + [i.name for i in infos]
    if not none and "learning_rate" in names:   # the setting swept most often first
        names.insert(0, names.pop(names.index("learning_rate")))
    labels = {i.name: f"{t(i.label_key)} ({i.name})" for i in infos}
    labels[""] = t("experiments.field_none")
    keep_widget(key, names)
    name = st.selectbox(label, names, key=key, format_func=labels.get)
    return next((i for i in infos if i.name == name), None)


def values_input(info: schema.FieldInfo, key: str) -> str:
    hint = ", ".join(map(str, info.meta.choices)) if info.meta.choices else \
        t("experiments.values_hint", default=schema.number(info.default)
          if isinstance(info.default, (int, float)) else info.default)
    keep_widget(f"{key}_{info.name}")
    return st.text_input(t("experiments.values", name=info.name), key=f"{key}_{info.name}",
                         placeholder=hint, help=t("experiments.values_help"))


def sweep_builder() -> None:
    st.caption(t("experiments.sweep_intro"))
    names = stages.training_stages()
    cols = st.columns([1, 2, 2])
    keep_widget("exp_stage", names)   # the whole form is kept across a page switch
    stage = cols[0].selectbox(t("experiments.stage"), names, key="exp_stage",
                              format_func=stage_name)
    cls = stages.get(stage).config_cls
    infos = sweepable(cls)
    with cols[1]:
        first = field_choice(infos, t("experiments.field_1"), f"exp_f1_{stage}")
        raw1 = values_input(first, f"exp_v1_{stage}") if first else ""
    with cols[2]:
        second = field_choice([i for i in infos if first is None or i.name != first.name],
                              t("experiments.field_2"), f"exp_f2_{stage}", none=True)
        raw2 = values_input(second, f"exp_v2_{stage}") if second else ""
    # the stage page's own choices (its SFT run, reward model, dataset), as last set there
    chosen = st.session_state.get(page_values_key(stage))
    with st.expander(t("experiments.base"), icon=":material/tune:"):
        st.caption(t("experiments.base_help"))
        base_cfg, _ = settings_form(cls, stage, fixed={"model": model_spec(), **(chosen or {})})
        keep_widget(f"exp_overrides_{stage}")
        extra = st.text_area(t("experiments.overrides"), key=f"exp_overrides_{stage}",
                             placeholder="sft_run=12\nreward_run=15",
                             help=t("experiments.overrides_help"), height=80)
    keep_widget("exp_sweep_name")
    name = st.text_input(t("experiments.name"), key="exp_sweep_name",
                         placeholder=t("experiments.name_placeholder"))
    plan, error, base = None, None, None
    if base_cfg is not None:
        try:
            base = schema.apply_overrides(schema.to_dict(base_cfg),
                                          [ln.strip() for ln in extra.splitlines() if ln.strip()])
        except ConfigError as exc:
            error = str(exc)
        else:
            settings_line(stage, base, chosen is not None)
    if base is not None and first is not None and raw1.strip():
        items = [f"{first.name}={raw1}"] + ([f"{second.name}={raw2}"]
                                            if second is not None and raw2.strip() else [])
        try:
            vary = parse_vary(items, stage)
            plan = expand_sweep(stage, base, vary)
        except ConfigError as exc:
            error = str(exc)
    if error:
        st.error(t("experiments.invalid", message=error), icon=":material/error:")
    elif plan is None:
        st.caption(t("experiments.need_values"))
        return
    else:
        st.caption(tn("experiments.runs_count", len(plan)) + " · "
                   + ", ".join(p.label for p in plan))
    pending = st.session_state.get("exp_confirm")
    if plan is not None and pending == len(plan):
        st.warning(t("experiments.confirm", n=len(plan)), icon=":material/warning:")
        c = st.columns([1, 1, 4])
        if c[0].button(t("experiments.confirm_yes", n=len(plan)), key="exp_confirm_yes",
                       type="primary"):
            st.session_state.pop("exp_confirm", None)
            queue_sweep(stage, base, vary, name)
        if c[1].button(t("experiments.confirm_no"), key="exp_confirm_no"):
            st.session_state.pop("exp_confirm", None)
            st.rerun()
        return
    if st.button(t("experiments.start_sweep"), key="exp_start_sweep", type="primary",
                 icon=":material/play_arrow:", disabled=plan is None):
        if len(plan) > CONFIRM_ABOVE:
            st.session_state["exp_confirm"] = len(plan)
            st.rerun()
        queue_sweep(stage, base, vary, name)


def settings_line(stage: str, base: dict, from_page: bool) -> None:
    """What the sweep's runs start from and are scored by (its SFT run, reward model,
    dataset): the stage page's choices, or its defaults when that page was not opened."""
    text = page_settings_text(runner.page_settings(store, stage, base))
    if not text:
        return
    st.info(t("experiments.page_settings" if from_page else "experiments.page_settings_unset",
              stage=stage_name(stage), settings=text), icon=":material/link:")
    if not from_page and f"views/{stage}.py" in STAGE_PAGES:
        st.page_link(f"views/{stage}.py", label=t("experiments.go_stage", stage=stage_name(stage)),
                     icon=":material/arrow_forward:")


def _rule_name(name: str) -> str:
    return t(f"ppo.rw_{name}") if f"ppo.rw_{name}" in catalogue("en") else str(name)


def page_settings_text(items: list[dict]) -> str:
    """runner.page_settings in words: "Start from: #7 sft-tiny · Reward-model run: #10
    rm-tiny · Dataset: sample-preferences" (a rule reward by its name, none said so)."""
    by_name = {i["name"]: i for i in items}
    reward_model = any(by_name.get(n, {}).get("runs") for n in ("reward_run", "reward_runs"))
    parts = []
    for item in items:
        name, value, runs = item["name"], item["value"], item.get("runs")
        if name in ("builtin_reward", "reward_params") and reward_model:
            continue   # a reward model replaces the rule
        if runs is not None:
            if runs:
                text = ", ".join(f"#{r['id']} {r['name'] or t('experiments.run_deleted')}"
                                 for r in runs)
            elif name in ("sft_run", "normalize_sft_run"):
                text = t("experiments.none_base")
            elif name == "reward_run" and not reward_model:
                text = t("experiments.none_rule")
            else:
                continue   # an ensemble or a gold model not used: nothing to say
        elif not value and value != 0:
            continue
        elif name == "builtin_reward":
            text = _rule_name(value)
        elif name == "builtin_rewards":
            text = ", ".join(_rule_name(v) for v in value)
        elif isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            text = ", ".join(map(str, value))
        else:
            text = str(value)
        key = f"settings.{name}"
        parts.append(f"{t(key) if key in catalogue('en') else name}: {text}")
    return " · ".join(parts)


def queue_sweep(stage: str, base: dict, vary: dict, name: str) -> None:
    try:
        group_id = runner.submit_sweep(get_jobs(), store, stage, base, vary,
                                       name=name.strip() or None)
    except ConfigError as exc:
        st.error(t("experiments.invalid", message=str(exc)), icon=":material/error:")
        return
    opened(group_id, t("experiments.started", id=group_id, name=stage_name(stage)))


# -- groups ---------------------------------------------------------------------------------
def group_kind(group: dict) -> str:
    return recipe_text(group["recipe"], "title") if group.get("recipe") \
        else t("experiments.kind_sweep", stage=stage_name(group.get("stage")))


def group_list() -> int | None:
    groups = runner.list_groups(store)
    if not groups:
        st.info(t("experiments.no_groups"), icon=":material/info:")
        return None
    st.dataframe(pd.DataFrame([{
        "id": g["id"], "name": g["name"], "kind": group_kind(g),
        "status": t("common.status_cancelling") if g["cancelling"]
        else t(f"common.status_{g['status']}"), "runs": f"{g['done']}/{g['total']}"}
        for g in groups]), hide_index=True, width="stretch",
        height=min(260, 38 + 35 * len(groups)), column_config={
            "id": st.column_config.NumberColumn("#", width="small"),
            "name": st.column_config.TextColumn(t("experiments.col_name")),
            "kind": st.column_config.TextColumn(t("experiments.col_kind")),
            "status": st.column_config.TextColumn(t("experiments.col_status")),
            "runs": st.column_config.TextColumn(t("experiments.col_runs"))})
    ids = [g["id"] for g in groups]
    names = {g["id"]: f"#{g['id']} {g['name']} · {group_kind(g)}" for g in groups}
    # a group just started is shown, whatever was picked before (the widget's own state
    # would otherwise keep the old one); a picked group deleted since: the newest
    want = st.session_state.pop(OPEN_KEY, None)
    if want in ids:
        st.session_state["exp_pick"] = want
    elif st.session_state.get("exp_pick") not in ids:
        st.session_state.pop("exp_pick", None)
    return st.selectbox(t("experiments.open"), ids, format_func=names.get, key="exp_pick")


def group_view(group_id: int, live: bool = False) -> None:
    try:
        view = runner.group_view(store, group_id)
    except NotFound:
        st.info(t("experiments.group_gone"), icon=":material/info:")
        return
    group = view["group"]
    stopping = bool(group.get("cancelling"))   # asked: it stops at the end of a step
    cols = st.columns([4, 1])
    state = f"{STATUS_ICONS['cancelled']} {t('common.status_cancelling')}" if stopping \
        else status_label(group["status"])
    cols[0].markdown(f"**#{group['id']} {group['name']}** · {group_kind(group)} · {state}")
    jobs = get_jobs()
    if group["status"] in ACTIVE_STATES:
        if cols[1].button(t("common.cancel"), key=f"exp_cancel_{group_id}", disabled=stopping):
            runner.cancel_group(jobs, store, group_id)
            st.rerun(scope="app")
    elif group["status"] in RESUMABLE_STATES:
        if cols[1].button(t("common.resume"), key=f"exp_resume_{group_id}"):
            runner.resume_group(jobs, store, group_id)
            st.rerun(scope="app")
    running = next((r for r in view["runs"] if r["status"] == "running"), None)
    text = t("experiments.progress", done=group["done"], total=group["total"])
    if stopping:
        text += " · " + t("common.status_cancelling")
    elif running is not None and running["total_steps"]:
        text += " · " + t("experiments.progress_run", label=running["label"],
                          step=running["step"] or 0, total=running["total_steps"])
    elif running is not None:   # its number of steps is not known yet: what it does
        text += " · " + t("experiments.progress_run_starting", label=running["label"],
                          message=running["message"] or t("experiments.starting"))
    st.progress(min(1.0, group["progress"]), text=text)
    summary = view["summary"] or {}
    if not group.get("recipe"):   # a sweep: what its runs started from and were scored by
        used = summary.get("page_settings")
        if used is None:
            used = runner.page_settings(store, group.get("stage") or "",
                                        (group.get("config") or {}).get("base") or {})
        text = page_settings_text(used)
        if text:
            st.caption(t("experiments.runs_used", settings=text))
    sentence = summary.get("sentence")
    if sentence and sentence.get("key"):
        params = dict(sentence.get("params") or {})
        if "metric" in params:   # a metric's name (a sweep's sentence): shown by its label
            params["metric"] = metric_label(params["metric"])
        st.info(t(sentence["key"], **params), icon=":material/insights:")
    problems = summary.get("problems") or {}
    for key, why in problems.items():
        st.warning(f"**{key}**: {why}", icon=":material/warning:")
    charts(view)
    table = summary.get("table") or []
    if table:
        st.markdown("**" + t("experiments.summary") + "**")
        st.dataframe(summary_frame(table, view["runs"]), hide_index=True, width="stretch",
                     column_config={column_label("key"): st.column_config.TextColumn(
                         width="medium")})
    st.markdown("**" + t("experiments.runs") + "**")
    st.dataframe(pd.DataFrame([{
        "run": r["label"], "id": f"#{r['run_id']}" if r["run_id"] else "—",
        "stage": stage_name(r["stage"]),
        "status": t("experiments.pending") if r["status"] == "pending"
        else t("common.status_cancelling") if r["status"] in ACTIVE_STATES
        and r.get("cancel_requested") else t(f"common.status_{r['status']}"),
        "steps": f"{r['step'] or 0}/{r['total_steps']}" if r["total_steps"] else "—"}
        for r in view["runs"]]), hide_index=True, width="stretch", column_config={
            "run": st.column_config.TextColumn(t("experiments.col_run")),
            "id": st.column_config.TextColumn("#", width="small"),
            "stage": st.column_config.TextColumn(t("experiments.col_stage")),
            "status": st.column_config.TextColumn(t("experiments.col_status")),
            "steps": st.column_config.TextColumn(t("experiments.col_steps"))})
    if live and group["status"] not in ACTIVE_STATES:
        st.rerun(scope="app")   # it ended: the list above and the buttons follow once


def charts(view: dict) -> None:
    metrics = pd.DataFrame(view["metrics"])
    specs = [Chart(**c) for c in view["charts"]]
    if not specs:
        return
    cols = st.columns(2 if len(specs) > 1 else 1)
    for i, chart in enumerate(specs):
        with cols[i % len(cols)]:
            title = text_of(chart.title_key)
            frame = metrics
            if not frame.empty and chart.runs is not None:
                frame = frame[frame["key"].isin(chart.runs)]
            if chart.kind == "hist":
                hist_chart(frame, title)
            else:
                xy_chart(frame, chart, title)


def xy_chart(df: pd.DataFrame, chart: Chart, title: str) -> None:
    """One line per run × metric against the step or another metric of the same step."""
    if df.empty or not df["name"].isin(chart.metrics).any():
        st.caption(f"{title}: {t('common.no_data')}")
        return
    wide = df.pivot_table(index=["key", "label", "step"], columns="name", values="value",
                          aggfunc="last").reset_index()
    rows = []
    for metric in chart.metrics:
        if metric not in wide:
            continue
        x_col = "step" if chart.x == "step" else chart.x
        if x_col not in wide:
            continue
        part = wide[["label", "step", x_col, metric]].dropna()
        for rec in part.itertuples(index=False):
            x = float(getattr(rec, x_col) if x_col != "step" else rec.step)
            if chart.x_transform == "sqrt":
                x = math.sqrt(max(0.0, x))
            series = rec.label if len(chart.metrics) == 1 else \
                f"{rec.label} · {metric_label(metric)}"
            rows.append({"series": series, "x": x, "y": float(getattr(rec, metric)),
                         "step": int(rec.step)})
    if not rows:
        st.caption(f"{title}: {t('common.no_data')}")
        return
    data = pd.DataFrame(rows).sort_values(["series", "x" if chart.x == "step" else "step"])
    q = {"type": "quantitative"}
    x_title = t("common.step") if chart.x == "step" else metric_label(chart.x)
    if chart.x_transform == "sqrt":
        x_title = "√ " + x_title
    # the chart's title names what the y axis shows: a long axis title taller than the
    # plot would push the chart's own title out of its frame
    y_title = None
    x_enc = {"field": "x", **q, "title": x_title, "scale": {"zero": False}}
    if chart.x == "step":
        x_enc["axis"] = {"format": "d", "tickMinStep": 1}
    legend, extra = legend_layout(data["series"].nunique())
    spec = {"title": title, "height": 260 + extra, "datasets": {"d": data}, "data": {"name": "d"},
            "mark": {"type": "line", "point": bool(len(data) < 80)},
            "encoding": {
                "x": x_enc, "y": {"field": "y", **q, "title": y_title, "scale": {"zero": False}},
                "order": {"field": "x" if chart.x == "step" else "step", **q},
                "color": {"field": "series", "type": "nominal", "title": None,
                          "scale": {"scheme": "tableau10"},  # one distinct hue per line
                          "legend": legend},
                "tooltip": [{"field": "series", "type": "nominal", "title": t("common.series")},
                            {"field": "step", **q, "title": t("common.step")},
                            {"field": "x", **q, "format": ".4g", "title": x_title},
                            {"field": "y", **q, "format": ".4g", "title": t("common.value")}]}}
    st.vega_lite_chart(spec=spec, width="stretch")


def hist_chart(df: pd.DataFrame, title: str) -> None:
    """The PPO ratio histograms (ratio_hist_NN) at each run's last step, side by side."""
    from engine.training.ppo import RATIO_HIST_EDGES

    if df.empty:
        st.caption(f"{title}: {t('common.no_data')}")
        return
    df = df[df["name"].str.startswith("ratio_hist_")]
    if df.empty:
        st.caption(f"{title}: {t('common.no_data')}")
        return
    parts = []
    for _, g in df.groupby("key", sort=False):
        last = g[g["step"] == g["step"].max()].copy()
        total = max(1.0, float(last["value"].sum()))
        last["bin"] = last["name"].str[-2:].astype(int)
        last["range"] = last["bin"].map(
            lambda k: f"{RATIO_HIST_EDGES[k]:.2f}–{RATIO_HIST_EDGES[k + 1]:.2f}"
            if k + 1 < len(RATIO_HIST_EDGES) else str(k))
        last["share"] = last["value"] / total
        parts.append(last[["label", "bin", "range", "share", "value"]])
    data = pd.concat(parts, ignore_index=True)
    q = {"type": "quantitative"}
    legend, extra = legend_layout(data["label"].nunique())
    spec = {"title": title, "height": 240 + extra, "datasets": {"h": data}, "data": {"name": "h"},
            "mark": "bar", "encoding": {
                "x": {"field": "range", "type": "ordinal", "title": "r = π_θ / π_old",
                      "sort": {"field": "bin"}, "axis": {"labelAngle": -45}},
                "xOffset": {"field": "label", "type": "nominal"},
                "y": {"field": "share", **q, "title": t("experiments.share"),
                      "axis": {"format": "%"}},
                "color": {"field": "label", "type": "nominal", "title": None,
                          "scale": {"scheme": "tableau10"}, "legend": legend},
                "tooltip": [{"field": "label", "type": "nominal", "title": t("common.series")},
                            {"field": "range", "type": "ordinal", "title": "r"},
                            {"field": "share", **q, "format": ".1%",
                             "title": t("experiments.share")}]}}
    st.vega_lite_chart(spec=spec, width="stretch")


# -- the page -------------------------------------------------------------------------------
st.title(":material/science: " + t("experiments.title"))
st.caption(t("experiments.intro"))
flash()
tab_groups, tab_recipes, tab_sweep = st.tabs([
    ":material/stacked_line_chart: " + t("experiments.tab_groups"),
    ":material/menu_book: " + t("experiments.tab_recipes"),
    ":material/tune: " + t("experiments.tab_sweep")])
with tab_recipes:
    recipe_cards()
with tab_sweep:
    sweep_builder()
with tab_groups:
    picked = group_list()
    if picked is not None:
        try:
            live = runner.effective_status(store, store.get_group(picked)) in ACTIVE_STATES
        except NotFound:
            live = False
        st.fragment(run_every=2.0 if live else None)(group_view)(picked, live)
