"""The Data page's AI feedback (issue 17), and the source of every pair.

The "AI feedback" tab: the constitutions (pick one and a version, view and edit its
principles, save a new version), the judge's templates (edited and checked as they are
typed: a missing placeholder is named), the job form (the `ai_feedback` stage's settings,
drawn from its schema; the judge is the sidebar's model, a run's adapter or an
OpenAI-compatible endpoint whose API key stays in an environment variable) with its live
panel and report, and the agreement of the AI labels with people's votes on the same pairs
(percent, Cohen's κ with its interval, the pairs where they disagree).

The datasets tab shows each dataset's pairs by source (human vote, AI, imported, sample,
edited) and filters its rows by source (`source_stats`, `source_filter`, `rows_page`).
"""
from __future__ import annotations

import pandas as pd
import streamlit as st

from engine import data as D
from engine.data import collect
from engine.data import sources as S
from engine.feedback import agreement as A
from engine.feedback import constitutions as C
from engine.feedback import templates as tpl
from engine.feedback.jobs import AIFeedbackConfig
from engine.inference.models import display_name
from engine.objectives import LATEX
from engine.schema import ConfigError
from storage import NotFound
from ui.common import (get_store, live_job_panel, model_spec, run_name, translated_choice,
                       translated_radio)
from ui.forms import settings_form, start_button
from ui.i18n import current_language, t

STAGE = "ai_feedback"
KINDS = ("critique", "revision", "compare")
JUDGES = ("model", "run", "endpoint")
RUN_KEY = "fb_run"


# -- sources of pairs (the datasets tab) ----------------------------------------------------
@st.cache_data(ttl=60, max_entries=32, show_spinner=False)
def _sources(db: str, key: tuple) -> dict[str, int]:
    return S.pair_sources(get_store(), key[0])


def source_label(cls: str) -> str:
    return t("feedback.source_" + cls)


def source_counts(ds: dict, version: tuple) -> dict[str, int]:
    """{class: rows} of a dataset (cached on `version`: what its rows depend on)."""
    return _sources(str(get_store().path), version)


def source_stats(ds: dict, version: tuple) -> None:
    """One line: how many rows of each source the dataset holds."""
    counts = source_counts(ds, version)
    if counts:
        st.caption(t("feedback.sources_line", counts=" · ".join(
            t("feedback.source_count", source=source_label(c), n=n)
            for c, n in counts.items())))


def source_filter(ds: dict, version: tuple, col=None) -> list[str] | None:
    """A multiselect of the dataset's sources; None: every row."""
    counts = source_counts(ds, version)
    widget = (col or st).multiselect
    chosen = translated_choice(widget, t("feedback.filter_sources"), list(counts),
                               f"rows_sources_{ds['id']}", source_label,
                               placeholder=t("feedback.all_sources"))
    return list(chosen) or None


def rows_page(ds: dict, split: str | None, classes: list[str] | None, limit: int,
              offset: int) -> tuple[list[dict], int | None]:
    """A page of rows of the chosen sources and their total (None: every source, the
    caller knows the total)."""
    store = get_store()
    if not classes:
        return store.list_rows(ds["id"], split=split, limit=limit, offset=offset), None
    rows = list(S.rows_by_source(store, ds["id"], classes, split))
    return rows[offset:offset + limit], len(rows)


def row_source(row: dict) -> str:
    return source_label(S.source_class(row))


# -- constitutions ------------------------------------------------------------------------
def _default_constitution(names: list[str]) -> str:
    lang = current_language()
    own = C.DEFAULT.rsplit("-", 1)[0] + "-" + lang
    return own if own in names else (C.DEFAULT if C.DEFAULT in names else names[0])


def constitutions_section(store) -> tuple[str, int]:
    """Pick a constitution and a version, edit its principles, save a new version.
    Returns the (name, version) the job uses."""
    st.subheader(":material/gavel: " + t("feedback.constitutions"))
    items = C.list_constitutions(store)
    by_name = {c["name"]: c for c in items}
    names = list(by_name)
    if "fb_constitution_next" in st.session_state:  # saved under a new name
        st.session_state["fb_constitution"] = st.session_state.pop("fb_constitution_next")
    cols = st.columns([3, 1])
    name = translated_choice(
        cols[0].selectbox, t("feedback.constitution"), names, "fb_constitution",
        lambda n: t("feedback.constitution_option", name=n, version=by_name[n]["version"],
                    language=by_name[n]["language"]),
        index=names.index(_default_constitution(names)))
    versions = [v["version"] for v in reversed(C.constitution_versions(store, name))]
    vkey = f"fb_version_{name}"
    if st.session_state.get(vkey) not in versions:
        st.session_state[vkey] = versions[0]
    version = cols[1].selectbox(t("feedback.version"), versions, key=vkey,
                                format_func=lambda v: t("feedback.version_option", version=v))
    current = C.get_constitution(store, name, version)
    if current["description"]:
        st.caption(current["description"])
    text = st.text_area(t("feedback.principles"), value="\n".join(current["principles"]),
                        key=f"fb_principles_{name}_{version}", height=170,
                        help=t("feedback.principles_help"))
    cols = st.columns([2, 1])
    new_name = cols[0].text_input(t("feedback.save_as"), key="fb_save_as", placeholder=name,
                                  help=t("feedback.save_as_help")).strip()
    cols[1].write("")
    if cols[1].button(t("feedback.save_version"), key="fb_save_constitution",
                      icon=":material/save:"):
        target = new_name or name
        latest = by_name.get(target, {}).get("version")
        try:
            saved = C.save_constitution(store, target, text, current["language"],
                                        current["description"])
        except ConfigError as exc:
            st.error(t("feedback.save_failed", error=str(exc)))
        else:
            if saved == latest:
                st.info(t("feedback.unchanged", name=target, version=saved))
            else:
                st.session_state["fb_saved"] = (target, saved)
                st.session_state["fb_constitution_next"] = target
                st.session_state.pop(f"fb_version_{target}", None)
                st.rerun()
    saved = st.session_state.pop("fb_saved", None)
    if saved:
        st.success(t("feedback.saved", name=saved[0], version=saved[1]))
    return name, version


# -- templates -------------------------------------------------------------------------------
def template_problem(kind: str, text: str) -> str | None:
    """Why a template cannot be used, in the page's language (None: it can). A missing or
    unknown placeholder is named."""
    try:
        tpl.check_template(kind, text)
        return None
    except ConfigError as exc:
        error = str(exc)
    label = t("feedback.template_" + kind)
    expected = ", ".join("{" + n + "}" for n in tpl.PLACEHOLDERS[kind])
    if not (text or "").strip():
        return t("feedback.template_empty", kind=label)
    try:
        used = tpl.placeholders_of(text)
    except ValueError:
        return t("feedback.template_malformed", kind=label, error=error)
    missing = [n for n in tpl.PLACEHOLDERS[kind] if n not in used]
    if missing:
        return t("feedback.template_missing", kind=label, name="{" + missing[0] + "}",
                 expected=expected)
    unknown = [n for n in used if n not in tpl.PLACEHOLDERS[kind]]
    if unknown:
        return t("feedback.template_unknown", kind=label, name="{" + unknown[0] + "}",
                 expected=expected)
    return t("feedback.template_malformed", kind=label, error=error)


def _kept_templates() -> dict[str, str]:
    """The session's templates, kept outside the widgets' state (which a page switch
    drops), so edits survive leaving the page."""
    return st.session_state.setdefault("fb_templates", dict(tpl.DEFAULTS))


def _reset_templates() -> None:
    kept = _kept_templates()
    for kind in KINDS:
        kept[kind] = st.session_state[f"fb_template_{kind}"] = tpl.DEFAULTS[kind]


def templates_section() -> tuple[dict[str, str], list[str]]:
    """The three templates as edited, and the problems found in them."""
    out, problems = {}, []
    kept = _kept_templates()
    with st.expander(t("feedback.templates"), icon=":material/edit_note:"):
        st.caption(t("feedback.templates_intro"))
        for kind in KINDS:
            key = f"fb_template_{kind}"
            st.session_state.setdefault(key, kept[kind])
            text = kept[kind] = st.text_area(t("feedback.template_" + kind), key=key, height=160,
                                help=t("feedback.placeholders", names=", ".join(
                                    "{" + n + "}" for n in tpl.PLACEHOLDERS[kind])))
            problem = template_problem(kind, text)
            if problem:
                st.error(problem, icon=":material/error:")
                problems.append(problem)
            out[kind] = text
        st.button(t("feedback.templates_reset"), key="fb_templates_reset",
                  on_click=_reset_templates, icon=":material/restart_alt:")
    for problem in problems:  # also where the start button is, the expander may be closed
        st.error(problem, icon=":material/error:")
    return out, problems


# -- the job ---------------------------------------------------------------------------------
def _judge_fields(sources: dict[str, str]) -> dict | None:
    """The judge's settings from the page's own widgets (None: no judge can be chosen)."""
    kind = translated_radio(t("feedback.judge"), list(JUDGES), key="fb_judge_kind",
                            format_func=lambda k: t("feedback.judge_" + k), horizontal=True)
    fields = {"judge": model_spec(), "judge_run": None, "judge_url": "", "judge_model": ""}
    if kind == "model":
        st.caption(t("feedback.judge_model_line", name=display_name(model_spec()),
                     spec=model_spec()))
    elif kind == "run":
        runs = {k: v for k, v in sources.items() if k != "base"}
        if not runs:
            st.info(t("feedback.no_judge_runs"))
            return None
        run = translated_choice(st.selectbox, t("settings.judge_run"), list(runs),
                                "fb_judge_run", runs.get, help=t("settings.judge_run_help"))
        fields["judge_run"] = int(run)
    else:
        cols = st.columns(3)
        st.session_state.setdefault("fb_judge_key_env", AIFeedbackConfig().judge_api_key_env)
        fields["judge_url"] = cols[0].text_input(
            t("settings.judge_url"), key="fb_judge_url", placeholder="http://127.0.0.1:8080/v1",
            help=t("settings.judge_url_help")).strip()
        fields["judge_model"] = cols[1].text_input(
            t("settings.judge_model"), key="fb_judge_model",
            help=t("settings.judge_model_help")).strip()
        fields["judge_api_key_env"] = cols[2].text_input(
            t("settings.judge_api_key_env"), key="fb_judge_key_env",
            help=t("settings.judge_api_key_env_help")).strip()
        st.caption(t("feedback.key_never_stored"))
    return fields


def job_section(store, constitution: tuple[str, int], templates: dict[str, str],
                problems: list[str]) -> None:
    st.subheader(":material/smart_toy: " + t("feedback.job"))
    datasets = [d for d in D.list_datasets(store) if d["rows"]]
    if not datasets:
        st.info(t("data.no_datasets"))
        return
    names = [d["name"] for d in datasets]
    by_name = {d["name"]: d for d in datasets}
    default = AIFeedbackConfig().prompts
    cols = st.columns(2)
    prompts = translated_choice(
        cols[0].selectbox, t("settings.prompts"), names, "fb_prompts",
        lambda n: t("feedback.dataset_option", name=n, rows=by_name[n]["rows"],
                    kind=t("data.kind_" + by_name[n]["kind"])),
        index=names.index(default) if default in names else 0, help=t("settings.prompts_help"))
    sources = collect.model_sources(store)
    sources["base"] = t("data.source_base", model=display_name(model_spec()))
    policy = translated_choice(cols[1].selectbox, t("settings.policy_run"), list(sources),
                               "fb_policy", sources.get, help=t("settings.policy_run_help"))
    judge = _judge_fields(sources)
    if judge is None:
        return
    name, version = constitution
    fixed = {"model": model_spec(), "prompts": prompts, "constitution": name,
             "constitution_version": version,
             "policy_run": None if policy == "base" else int(policy), **judge,
             **{f"{kind}_template": templates[kind] for kind in KINDS}}
    config, _ = settings_form(AIFeedbackConfig, STAGE, fixed=fixed)
    run_id = start_button(STAGE, None if problems else config, t("feedback.start"))
    if run_id is not None:
        st.session_state[RUN_KEY] = run_id
        st.toast(t("feedback.started", id=run_id), icon=":material/play_arrow:")


def pairs_so_far(run: dict) -> int:
    """The pairs a job stored before it stopped (its rows carry meta.job_run)."""
    name = (run.get("config") or {}).get("dataset")
    try:
        rows = D.iter_rows(get_store(), name) if name else []
        return sum((r.get("meta") or {}).get("job_run") == run["id"] for r in rows)
    except NotFound:
        return 0


def report(run: dict) -> None:
    """What a finished (or stopped) job made: pairs, skipped rows and their reasons."""
    s = run.get("summary") or {}
    if "pairs_made" not in s:
        made = pairs_so_far(run)
        if made:  # a cancelled or failed job: what it stored is kept, a resume goes on
            st.caption(t("feedback.pairs_so_far", n=made,
                         dataset=(run.get("config") or {}).get("dataset", "")))
        return
    cols = st.columns(4)
    cols[0].metric(t("feedback.pairs_made"), str(s["pairs_made"]))
    cols[1].metric(t("feedback.skipped"), str(len(s.get("skipped") or [])))
    cols[2].metric(t("feedback.seconds"), f"{s.get('seconds', 0):.1f}")
    if s.get("order_agreement") is not None:
        cols[3].metric(t("feedback.order_agreement"), f"{s['order_agreement']:.0%}",
                       help=t("feedback.order_agreement_help"))
        if s.get("position_driven"):
            st.warning(t("feedback.position_driven_job",
                         percent=f"{1 - s['order_agreement']:.0%}"), icon=":material/warning:")
    elif s.get("sft_rows_made") is not None:
        cols[3].metric(t("feedback.sft_rows"), str(s["sft_rows_made"]))
    st.caption(t("feedback.report_line", dataset=s.get("dataset", ""),
                 judge=s.get("judge", ""), constitution=s.get("constitution", ""),
                 version=s.get("constitution_version", "")))
    skipped = s.get("skipped") or []
    if skipped:
        st.dataframe(pd.DataFrame([{t("feedback.col_row"): x.get("row"),
                                    t("feedback.col_prompt"): x.get("prompt"),
                                    t("feedback.col_reason"): x.get("reason")}
                                   for x in skipped]), hide_index=True, width="stretch")


def jobs_view(store) -> None:
    runs = store.list_runs(stage=STAGE)
    if not runs:
        st.caption(t("feedback.no_jobs"))
        return
    by_id = {r["id"]: r for r in runs}
    ids = list(by_id)
    if st.session_state.get(RUN_KEY) not in ids:
        st.session_state[RUN_KEY] = ids[0]
    # no status in the selector: it is drawn outside the live panel below and kept saying
    # "running" after the job succeeded; the panel shows the status
    run_id = translated_choice(st.selectbox, t("feedback.view_run"), ids, RUN_KEY,
                               lambda i: run_name(by_id[i]))
    live_job_panel(run_id, f"{RUN_KEY}_seen")
    try:
        report(store.get_run(run_id))
    except NotFound:  # deleted meanwhile
        st.session_state.pop(RUN_KEY, None)


# -- agreement --------------------------------------------------------------------------------
def _fingerprint(store) -> tuple:
    """What agreement depends on: every preference dataset's rows, the votes, the pairs."""
    prefs = tuple((d["id"], d["rows"]) for d in store.list_datasets(kind="preference"))
    return prefs, len(store.list_votes()), len(store.list_runs(stage="pair_sample"))


@st.cache_data(ttl=30, max_entries=16, show_spinner=False)
def _agreement(db: str, dataset: str, reference: str | None, ties: str, key: tuple) -> dict:
    return A.agreement(get_store(), dataset, reference=reference, ties=ties)


def _label_of(label: str) -> str:
    return t("feedback.label_" + label)


def ai_datasets(store) -> list[str]:
    """The preference datasets AI feedback jobs wrote to (that still exist)."""
    existing = {d["name"] for d in store.list_datasets(kind="preference") if d["rows"]}
    out: list[str] = []
    for run in store.list_runs(stage=STAGE):
        name = (run.get("config") or {}).get("dataset")
        if name in existing and name not in out:
            out.append(name)
    return out


def judged_dataset(store, dataset: str) -> str | None:
    """The preference dataset whose own pairs the newest compare job into `dataset` judged
    (its chosen/rejected are the labels to check the AI's against), if any."""
    prefs = {d["name"] for d in store.list_datasets(kind="preference")}
    for run in store.list_runs(stage=STAGE):
        cfg = run.get("config") or {}
        if cfg.get("dataset") == dataset and cfg.get("mode") == "compare" \
                and not cfg.get("resample") and cfg.get("prompts") in prefs:
            return cfg["prompts"]
    return None


def agreement_section(store) -> None:
    st.subheader(":material/handshake: " + t("feedback.agreement"))
    st.caption(t("feedback.agreement_intro"))
    names = ai_datasets(store)
    if not names:
        st.info(t("feedback.no_ai_pairs"))
        return
    prefs = [d["name"] for d in store.list_datasets(kind="preference") if d["rows"]]
    cols = st.columns(3)
    dataset = translated_choice(cols[0].selectbox, t("feedback.ai_dataset"), names,
                                "fb_agree_dataset", str)
    refs = [None] + [n for n in prefs if n != dataset]
    judged = judged_dataset(store, dataset)
    reference = translated_choice(cols[1].selectbox, t("feedback.reference"), refs,
                                  f"fb_agree_reference_{dataset}",
                                  lambda n: t("feedback.reference_none") if n is None else n,
                                  index=refs.index(judged) if judged in refs else 0,
                                  help=t("feedback.reference_help"))
    ties = translated_choice(cols[2].radio, t("feedback.ties"), list(A.TIES),
                             "fb_agree_ties", lambda x: t("feedback.ties_" + x),
                             help=t("feedback.ties_help"))
    res = _agreement(str(store.path), dataset, reference, ties, _fingerprint(store))
    if not res["matched"]:
        st.info(t("feedback.no_overlap", pairs=res["ai_pairs"]))
        return
    position = res["position"]
    if position["driven"]:  # above the numbers: they are not the judge's opinion
        st.warning(t("feedback.position_driven", n=position["orders_disagree"],
                     judged=position["judged"], first=position["first_shown"],
                     second=position["second_shown"]), icon=":material/warning:")
    kappa = res["kappa"]
    cols = st.columns(3)
    cols[0].metric(t("feedback.matched"), str(res["matched"]), help=t("feedback.matched_help"))
    cols[1].metric(t("feedback.percent"), f"{res['percent']:.0f}%")
    cols[2].metric(t("feedback.kappa"), "—" if kappa is None else f"{kappa:.2f}",
                   help=t("feedback.kappa_help"))
    if res["ci_low"] is not None:
        st.caption(t("feedback.kappa_ci", low=f"{res['ci_low']:.2f}",
                     high=f"{res['ci_high']:.2f}", n=res["n"]))
    elif kappa is None:
        st.caption(t("feedback.kappa_undefined"))
    if res["ties_dropped"]:
        st.caption(t("feedback.ties_dropped", n=res["ties_dropped"]))
    formulas = st.columns(3)
    with formulas[0]:
        st.latex(LATEX["cohen_kappa"])
    with formulas[1]:
        st.latex(LATEX["wilson_interval"])
    with formulas[2]:
        st.latex(LATEX["kappa_interval"])
    if not res["disagreements"]:
        if position["driven"]:
            st.info(t("feedback.no_disagreements_by_position"), icon=":material/info:")
        else:
            st.success(t("feedback.no_disagreements"))
        return
    st.markdown("**" + t("feedback.disagreements", n=len(res["disagreements"])) + "**")
    st.dataframe(pd.DataFrame([{
        t("feedback.col_prompt"): D.prompt_text(d["prompt"]),
        t("feedback.col_ai"): d["ai_preferred"] or _label_of(d["ai"]),
        t("feedback.col_human"): d["human_preferred"] or _label_of(d["human"]),
        t("feedback.col_answers"): f"{d['first']} | {d['second']}"}
        for d in res["disagreements"]]), hide_index=True, width="stretch")


# -- the tab ------------------------------------------------------------------------------------
def ai_feedback_tab() -> None:
    store = get_store()
    st.caption(t("feedback.intro"))
    with st.container(border=True):
        constitution = constitutions_section(store)
    templates, problems = templates_section()
    with st.container(border=True):
        job_section(store, constitution, templates, problems)
    jobs_view(store)
    agreement_section(store)
