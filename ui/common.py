"""Handles and widgets every page shares: the store, the job manager, the model in use,
a live job panel (progress, ETA, cancel, resume, log) and chart helpers."""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import streamlit as st

from engine.runtime.jobs import JobManager, get_manager, queue_position
from engine.runtime.runs import ACTIVE_STATES, RESUMABLE_STATES
from storage import NotFound, Store
from storage.db import default_db_path
from ui.i18n import catalogue, current_language, t

if TYPE_CHECKING:  # pandas (with numpy and pyarrow, ~1 s) loads with the first chart, not
    import pandas as pd  # with the first page (the Home page draws none)

EMBEDDED = "embedded"


STATUS_ICONS = {"queued": ":material/schedule:", "running": ":material/autorenew:",
                "succeeded": ":material/check_circle:", "failed": ":material/error:",
                "cancelled": ":material/stop_circle:", "interrupted": ":material/warning:"}


@st.cache_resource(show_spinner=False)
def _store(path: str | None) -> Store:
    from engine.data import ensure_samples_on_first_open

    store = Store(path) if path else Store()
    ensure_samples_on_first_open(store)  # a fresh data folder starts with the samples
    return store


def get_store() -> Store:
    # keyed by the data folder's database, so a changed RLHF_LAB_HOME (each test) gets its own
    return _store(str(default_db_path()))


@st.cache_resource(show_spinner=False)
def _jobs(path: str) -> JobManager:
    return get_manager(_store(path))


def get_jobs() -> JobManager:
    return _jobs(str(default_db_path()))


def model_spec() -> str:
    """The base model chosen in the sidebar ("embedded", a folder, or a hub id)."""
    return st.session_state.get("model_spec") or EMBEDDED


def device_caption(draw) -> None:
    """`draw(device_summary)` once torch is imported; before that (the first page load of a
    fresh server, while engine.inference.specs.warm_up imports it in the background) a
    "detecting…" caption, polled, and the page rerun once the device is known."""
    from engine.inference.specs import device_summary_if_loaded

    dev = device_summary_if_loaded()
    if dev is not None:
        draw(dev)
        return

    @st.fragment(run_every=0.5)
    def detecting() -> None:
        if device_summary_if_loaded() is not None:
            st.rerun(scope="app")
        st.caption(t("app.device_detecting"))

    detecting()


def status_label(status: str) -> str:
    return f"{STATUS_ICONS.get(status, '')} {t('common.status_' + status)}"


def cancelling(run: dict) -> bool:
    """A cancel was asked (by any session) and the run has not stopped yet."""
    return run["status"] in ACTIVE_STATES and bool(run.get("cancel_requested"))


def status_text(run: dict, queue: dict | None = None) -> str:
    """The run's state in words (plain text): "cancelling…" once a cancel was asked, a queued
    run's place in its queue (`queue`: from engine.runtime.jobs.queue_positions)."""
    if cancelling(run):
        return t("common.status_cancelling")
    text = t("common.status_" + run["status"])
    if run["status"] == "queued" and queue:
        text += " · " + t("common.queue_position", n=queue["position"])
    return text


def queue_text(queue: dict | None) -> str:
    """What a queued run waits behind, and its place: "queued behind #9 sft-hb, step
    4/16 · position 2 in the queue"."""
    if not queue:
        return t("common.status_queued")
    behind = queue.get("behind")
    if behind is None:
        head = t("common.status_queued")
    elif behind.get("total_steps"):
        head = t("common.queued_behind_step", id=behind["id"], name=behind["name"],
                 step=behind.get("step") or 0, total=behind["total_steps"])
    else:
        head = t("common.queued_behind", id=behind["id"], name=behind["name"])
    return head + " · " + t("common.queue_position", n=queue["position"])


def stage_label(stage: str) -> str:
    """A stage as the interface names it ("reward" → "Reward model"); an unknown stage (a
    test's, a new one's) keeps its own name."""
    key = f"runs.stage_{stage}"
    text = t(key)
    return stage if text == key else text


def run_name(run: dict) -> str:
    """#id and name only: for selectors drawn outside a live fragment, where a status
    would go stale while the run moves on."""
    return f"#{run['id']} {run['name']}"


def run_label(run: dict) -> str:
    """Plain text (select boxes do not render icons)."""
    return f"#{run['id']} {run['name']} · {t('common.status_' + run['status'])}"


def eta_text(run: dict, now: float | None = None) -> str:
    """About how long the steps left take, at this attempt's pace: from the start of its step
    loop (`attempt_step` at `attempt_time`: `JobContext.steps_begin`, else its first step
    report, so loading, evaluating before training and an earlier attempt's steps are left
    out) to its latest step report (`step_time`). Between two reports it counts down from
    that report, but never below the whole steps after the current one: it never counts up
    while a step runs. Empty until a step has completed in this attempt, and once the last
    step is done (what follows has no estimate: see progress_text)."""
    step, total = run.get("step") or 0, run.get("total_steps") or 0
    base_step, base_time = run.get("attempt_step"), run.get("attempt_time")
    if run["status"] != "running" or not total or step >= total or base_time is None \
            or base_step is None or step <= base_step:
        return ""
    now = now or time.time()
    last = run.get("step_time") or now  # (a run stored before step_time: paced up to now)
    pace = max(0.0, last - base_time) / (step - base_step)
    left = max(pace * (total - step) - max(0.0, now - last), pace * (total - step - 1))
    return t("common.eta", seconds=max(1, round(left)))


def progress_text(run: dict) -> str:
    """The progress bar's words: "step 4 / 16 · about 90 s left · loss 1.234"; after the
    last step of a running stage, its phase ("finishing: evaluating") and no estimate."""
    step, total = run.get("step") or 0, run.get("total_steps") or 0
    parts = [t("common.progress", step=step, total=total)]
    # a phase is news only while the run is on: a cancelled run "evaluating before
    # training", or a finished one "saving the adapter", would be stale
    message = run.get("message") if run["status"] in ACTIVE_STATES else None
    if run["status"] == "running" and step >= total:
        parts.append(t("common.finishing", phase=message) if message
                     else t("common.finishing_plain"))
    else:
        parts += [p for p in (eta_text(run), message) if p]
    return " · ".join(parts)


def job_panel(run_id: int, show_log: bool = True) -> dict:
    """Status, progress bar with ETA, cancel/resume buttons and the log of one run."""
    store, jobs = get_store(), get_jobs()
    run = store.get_run(run_id)
    cols = st.columns([3, 1])
    stopping = cancelling(run)
    label = (f"{STATUS_ICONS['cancelled']} {t('common.status_cancelling')}" if stopping
             else status_label(run["status"]))
    cols[0].markdown(f"**#{run['id']} {run['name']}** · {label}")
    if run["status"] in ACTIVE_STATES:
        # once asked, the run stops at the end of its step: the button stays, disabled
        if cols[1].button(t("common.cancel"), key=f"cancel-{run_id}", disabled=stopping):
            jobs.cancel(run_id)
            st.rerun()
    elif run["status"] in RESUMABLE_STATES:
        if cols[1].button(t("common.resume"), key=f"resume-{run_id}"):
            jobs.resume(run_id)
            st.rerun()
    total = run.get("total_steps") or 0
    if run["status"] == "queued" and not stopping:
        st.progress(min(1.0, (run.get("step") or 0) / total) if total else 0.0,
                    text=queue_text(queue_position(store, run_id)))
    elif total:
        st.progress(min(1.0, (run.get("step") or 0) / total), text=progress_text(run))
    elif run["status"] in ACTIVE_STATES:
        st.progress(0.0, text=run.get("message") or t("common.status_" + run["status"]))
    if run["status"] == "failed" and run.get("error"):
        st.error(run["error"].split("\n\n")[0])
        with st.expander(t("common.traceback")):
            st.code(run["error"])
    if show_log:
        with st.expander(t("common.log")):
            lines = store.get_log(run_id)[-200:]
            st.code("\n".join(time.strftime("%H:%M:%S", time.localtime(r["time"]))
                              + f" {r['level']:<5} {r['message']}" for r in lines) or "—")
    return run


def live_job_panel(run_id: int, seen_key: str, show_log: bool = True) -> None:
    """`job_panel` refreshed every second while the job is queued or running; when it ends,
    the whole page reruns once (so its lists show what the job made) and polling stops."""
    active = get_store().get_run(run_id)["status"] in ACTIVE_STATES

    @st.fragment(run_every=1.0 if active else None)
    def panel() -> None:
        run = job_panel(run_id, show_log=show_log)
        # (a run seen ending before and resumed since ends again: `active` says so)
        if run["status"] not in ACTIVE_STATES and (active or st.session_state.get(seen_key)
                                                   != run_id):
            st.session_state[seen_key] = run_id
            st.rerun(scope="app")

    panel()


def job_of_session(key: str, show_log: bool = False) -> dict | None:
    """The job whose id the page keeps in `st.session_state[key]` (a light job it
    submitted): drawn with `live_job_panel` and returned as a run, to show its result once
    it succeeded. None when there is none, or the run was deleted since."""
    job_id = st.session_state.get(key)
    if not job_id:
        return None
    try:
        get_store().get_run(job_id)
    except NotFound:
        st.session_state.pop(key, None)
        return None
    live_job_panel(job_id, f"{key}_seen", show_log=show_log)
    return get_store().get_run(job_id)


# -- metric charts ---------------------------------------------------------------------
SMOOTH_MIN_POINTS = 10  # a shorter series is drawn as it is: an EMA would bend its few points


def reward_name(name: str, lang: str | None = None) -> str:
    """A reward component as the interface names it: a built-in rule's own name, "a trained
    reward model" for GRPO's model component, else the name itself."""
    lang = lang or current_language()
    key = "ppo.reward_model" if name == "model" else f"ppo.rw_{name}"
    return catalogue(lang).get(key) or catalogue("en").get(key) or name


# families of names, one catalogue entry each: pattern -> (key, its placeholder's value)
METRIC_PATTERNS = [
    (re.compile(r"ratio_hist_(\d+)"), "ratio_hist_bin", lambda m, lang: {"bin": int(m[1])}),
    (re.compile(r"reward_(\w+)"), "reward_part",  # GRPO: one curve per reward function
     lambda m, lang: {"name": reward_name(m[1], lang)}),
]


LEGEND_ROW_PX = 30  # a legend line under a chart


def legend_layout(series: int) -> tuple[dict | None, int]:
    """A chart's legend and the height it adds: none for one series (the title names it, a
    legend would only squeeze the plot); for several, under the plot, one per line, never
    cut ("Eval score, held-out pro…" at Vega's 160 px), the chart's height holding it too
    (Streamlit fits the whole chart into its height)."""
    if series <= 1:
        return None, 0
    return ({"orient": "bottom", "direction": "vertical", "labelLimit": 0},
            LEGEND_ROW_PX * series)


def metric_label(name: str, lang: str | None = None) -> str:
    """A metric as the interface names it: i18n/<lang>/metrics.json, keyed by the name the
    engine logs (`eval_loss` → "Eval loss" / "Perte d'évaluation"); a family of names
    (`ratio_hist_07`, GRPO's `reward_<function>`) by its pattern; a metric no catalogue
    knows (a new stage's) keeps its own name."""
    lang = lang or current_language()
    for cat in (catalogue(lang), catalogue("en")):
        if f"metrics.{name}" in cat:
            return cat[f"metrics.{name}"]
    for pattern, key, values in METRIC_PATTERNS:
        match = pattern.fullmatch(name)
        if match and f"metrics.{key}" in catalogue("en"):
            return t(f"metrics.{key}", lang, **values(match, lang))
    return name


def smoothed(name: str, points: int, smoothing: float) -> bool:
    """Whether a series is drawn smoothed: not an evaluation (a few points far apart, each
    a measurement of its own), not a short series (< SMOOTH_MIN_POINTS), not at 0."""
    return smoothing > 0 and not name.startswith("eval_") and points >= SMOOTH_MIN_POINTS


def ema(values: pd.Series, smoothing: float) -> pd.Series:
    """Exponential moving average: s_t = α·s_{t−1} + (1−α)·x_t, α = smoothing (0 = raw)."""
    if smoothing <= 0:
        return values
    return values.ewm(alpha=1 - smoothing, adjust=False).mean()


def metrics_frame(run_ids, names=None) -> pd.DataFrame:
    """Metrics of one or several runs as a long frame: run, step, name, value."""
    import pandas as pd

    store = get_store()
    frames = []
    for rid in ([run_ids] if isinstance(run_ids, int) else run_ids):
        rows = store.get_metrics(rid, names)
        if rows:
            df = pd.DataFrame(rows)
            df["run"] = f"#{rid}"
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["step", "name", "value", "time", "run"])
    return pd.concat(frames, ignore_index=True)


def downsample(df: pd.DataFrame, max_points: int = 600) -> pd.DataFrame:
    """Keep at most max_points per (run, name) for drawing; storage keeps everything."""
    if df.empty or len(df) <= max_points:  # (no series can be longer than the frame)
        return df
    import pandas as pd

    parts = []
    for _, g in df.groupby(["run", "name"], sort=False):
        if len(g) > max_points:
            g = g.iloc[:: max(1, len(g) // max_points)]
        parts.append(g)
    return pd.concat(parts, ignore_index=True)


def _chart_frame(df: pd.DataFrame, smoothing: float) -> pd.DataFrame:
    """One row per drawn point: run, step, name, value, smooth (the EMA where `smoothed`,
    else the value), smoothed, series (the legend's name). Smoothed on every point, then
    downsampled; a series at a time (a chart holds a few)."""
    import pandas as pd

    parts = []
    many_runs = df["run"].nunique() > 1
    for (run, name), g in df.groupby(["run", "name"], sort=True):
        g = g.sort_values("step", kind="stable")
        values = g["value"].astype(float)
        smooth = smoothed(name, len(g), smoothing)
        part = pd.DataFrame({"run": run, "step": g["step"].to_numpy(), "name": name,
                             "value": values.to_numpy(),
                             "smooth": (ema(values, smoothing) if smooth else values).to_numpy(),
                             "smoothed": smooth,
                             "series": f"{run} {metric_label(name)}" if many_runs
                             else metric_label(name)})
        parts.append(downsample(part))
    return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]




def line_chart(df: pd.DataFrame, title: str, smoothing: float = 0.0, y_title: str | None = None,
               height: int = 220, rule: float | None = None, errors: pd.DataFrame | None = None):
    """A metric line chart: series named by `metric_label` (legend and tooltip), smoothed by
    an EMA (`smoothed`: never an eval_ series or a short one) on top of the faded raw curve;
    `errors` (columns step, series, lo, hi): an error bar from lo to hi at those points.

    The y axis fits the data (not from zero): a loss moving from 10.83 to 10.79 must show.
    Drawn from a plain Vega-Lite spec: Altair's schema validation cost ~60 ms a chart, and
    a page of charts seconds.
    """
    if df.empty:
        st.caption(t("common.no_data"))
        return
    df = _chart_frame(df, smoothing)
    num = {"type": "quantitative"}
    x = {"field": "step", **num, "title": t("common.step"),
         "axis": {"format": "d", "tickMinStep": 1}}
    # one series: the title names it, a legend would only squeeze the plot; several: under
    # the plot, one per line, never cut ("Eval score, held-out pro…" at Vega's 160 px)
    legend, extra = legend_layout(df["series"].nunique())
    color = {"field": "series", "type": "nominal", "title": None, "legend": legend}
    height += extra
    tooltip = [{"field": "series", "type": "nominal", "title": t("common.series")},
               {"field": "step", **num, "title": t("common.step")},
               {"field": "value", **num, "format": ".4g", "title": t("common.value")}]
    y_axis = {"title": y_title or ""}
    layers = []
    if df["smoothed"].any():
        tooltip.append({"field": "smooth", **num, "format": ".4g", "title": t("common.smoothed")})
        layers.append({"transform": [{"filter": "datum.smoothed"}],
                       "mark": {"type": "line", "opacity": 0.25},
                       "encoding": {"x": x, "color": color, "y": {
                           "field": "value", **num, "scale": {"zero": False}, **y_axis}}})
    layers.append({"mark": {"type": "line", "point": bool(len(df) < 40)},
                   "encoding": {"x": x, "color": color, "tooltip": tooltip, "y": {
                       "field": "smooth", **num, "scale": {"zero": False}, **y_axis}}})
    if errors is not None and not errors.empty:
        layers.append({"data": {"values": errors.to_dict("records")},
                       "mark": {"type": "errorbar", "ticks": True},
                       "encoding": {"x": x, "color": color,
                                    "y": {"field": "lo", **num, "scale": {"zero": False},
                                          **y_axis},
                                    "y2": {"field": "hi"}}})
    if rule is not None:
        layers.append({"data": {"values": [{"y": float(rule)}]},
                       "mark": {"type": "rule", "strokeDash": [4, 4]},
                       "encoding": {"y": {"field": "y", **num}}})
    spec = {"title": title, "height": height, "datasets": {"metrics": df},
            "data": {"name": "metrics"}, "layer": layers}
    st.vega_lite_chart(spec=spec, width="stretch")


def run_picker(stage: str, label: str, key: str, status=None) -> dict | None:
    """A select box of a stage's runs, newest first (picked by default); returns the run."""
    runs = get_store().list_runs(stage=stage, status=status)
    if not runs:
        return None
    by_id = {r["id"]: r for r in runs}
    if st.session_state.get(key) not in by_id:
        st.session_state[key] = runs[0]["id"]
    run_id = st.selectbox(label, list(by_id), key=key, format_func=lambda i: run_name(by_id[i]))
    return by_id[run_id]


def runs_options(stage: str, status: str | tuple = "succeeded") -> dict[str, int]:
    """{label: run_id} of a stage's runs, newest first (for select boxes)."""
    return {run_label(r): r["id"] for r in get_store().list_runs(stage=stage, status=status)}


def translated_choice(widget, label: str, options: list, key: str, format_func, **kwargs):
    """A radio, select box or multiselect (`widget`: st.radio, st.selectbox, st.multiselect
    or a column's) whose option labels are translated, keeping its choice across a language
    switch. The browser remembers a keyed choice widget's selection by its *label*, so after
    a switch it would show no option selected (radio) or the old language's label (select
    box) while the script still holds the old value. So the widget's key carries the
    language (`<key>__<lang>`, a new widget in each language), and the choice lives under
    `key` (what pages read, and may set to select an option), carried into the new
    language's widget. `index=` / `default=` give the first choice."""
    multi = widget.__name__ == "multiselect"
    widget_key = f"{key}__{current_language()}"
    if multi:
        first = list(kwargs.pop("default", None) or [])
    else:
        first = options[kwargs.pop("index", 0)] if options else None
    choice = st.session_state.get(key, first)
    if multi:
        choice = [c for c in (choice or []) if c in options]
    elif choice not in options:
        choice = first if first in options else (options[0] if options else None)
    if widget_key in st.session_state:  # an existing widget follows a choice set by the page
        if st.session_state[widget_key] != choice:
            st.session_state[widget_key] = choice
    elif multi:
        kwargs["default"] = choice
    else:  # (not through session_state: a select box would read None as "nothing chosen")
        kwargs["index"] = options.index(choice) if options else None

    def keep() -> None:
        st.session_state[key] = st.session_state[widget_key]

    value = widget(label, options, key=widget_key, format_func=format_func, on_change=keep,
                   **kwargs)
    st.session_state[key] = value
    return value


def keep_widget(key: str, options: list | None = None) -> None:
    """Call before drawing the widget of `key`: Streamlit forgets a widget's value when a
    page without it runs (a page switch), so the value is copied aside on every run and put
    back when the widget is drawn again. `options`: a choice widget's; a kept value that is
    no longer one of them is not put back."""
    aside = f"kept.{key}"
    if key in st.session_state:
        st.session_state[aside] = st.session_state[key]
    elif aside in st.session_state and (options is None or st.session_state[aside] in options):
        st.session_state[key] = st.session_state[aside]


def widget_key(key: str, lang: str = "en") -> str:
    """The key of a `translated_choice` widget in a language (tests drive it by this)."""
    return f"{key}__{lang}"


def translated_radio(label: str, options: list, key: str, format_func, **kwargs):
    """`translated_choice` for st.radio."""
    return translated_choice(st.radio, label, options, key, format_func, **kwargs)


def datasets_or_hint(kind: str | None, ns: str) -> list[dict]:
    """The datasets with rows a new run can use (imports being staged left out); when there
    are none, the page's hint `<ns>.no_dataset` and a link to the Data page instead."""
    from engine.data import list_datasets

    datasets = [d for d in list_datasets(get_store(), kind) if d["rows"]]
    if not datasets:
        st.info(t(f"{ns}.no_dataset"))
        st.page_link("views/data.py", label=t(f"{ns}.go_data"), icon=":material/edit_note:")
    return datasets
