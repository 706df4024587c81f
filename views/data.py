"""Data: datasets (view, edit, stats, sources, split, export), file imports, human preference
collection (the model answers twice, a person picks the better answer), and AI feedback
(ui/feedback.py: constitutions, templates, the job, AI–human agreement)."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from engine.data import collect
from engine import data as D
from engine.data.records import conversation_from_text, conversation_text
from engine.inference.models import display_name
from storage import NotFound
from storage.db import ACTIVE_STATES
from ui import feedback
from ui.common import (get_jobs, get_store, job_panel, model_spec, translated_choice,
                       translated_radio)
from ui.i18n import t, tn

PAGE_ROWS = 200
PROMPT_OPTIONS = 1000  # prompts offered for a vote (a select box of 30k entries is unusable)
CHOICE_KEYS = {"a": "A", "b": "B", "tie": "T", "both_bad": "X"}
TABLE_TURNS = " / "  # between a chat prompt's turns in a table cell (one line)

store = get_store()
D.cleanup_staged(store)
st.title(":material/edit_note: " + t("data.title"))
st.caption(t("data.intro"))


def reason(item: dict) -> str:
    """An import or edit problem in the page's language (the engine's English as fallback)."""
    text = t("data.reason_" + item.get("code", ""), **item)
    return item.get("reason", "") if text.startswith("data.reason_") else text


def _version(ds: dict) -> tuple:
    """What the cached reads of a dataset depend on: its rows, and this page's own edits."""
    return ds["id"], ds["rows"], ds["eval_fraction"], st.session_state.get("data_version", 0)


def _changed() -> None:
    st.session_state["data_version"] = st.session_state.get("data_version", 0) + 1


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _stats(db: str, key: tuple) -> dict:
    return D.dataset_stats(get_store(), key[0])


@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _prompts_cached(db: str, key: tuple) -> list:
    return D.prompts_of(get_store(), key[0])[:PROMPT_OPTIONS]


def kind_label(kind: str) -> str:
    return t("data.kind_" + kind)


def roles() -> dict[str, str]:
    """Chat roles as the page's language names them (for prompts shown as turns)."""
    return {role: t("data.role_" + role) for role in ("system", "user", "assistant")}


def prompt_cell(prompt) -> str:
    """A prompt in a table cell: its text, or a chat as its turns (never as JSON)."""
    return conversation_text(prompt, roles(), TABLE_TURNS)


def cell_to_prompt(text, was_chat: bool = True):
    """The prompt of an edited cell: turns written like `prompt_cell` become a chat again
    (for a chat prompt, or a new row); anything else stays as it is (JSON is read later)."""
    messages = conversation_from_text(text, roles(), TABLE_TURNS) if was_chat else None
    return messages if messages else text


def clip(text: str, n: int = 90) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# -- datasets ----------------------------------------------------------------------------
def samples_button() -> None:
    missing = [name for name in D.SAMPLES if name not in {d["name"] for d in D.list_datasets(store)}]
    if missing and st.button(t("data.load_samples"), key="load_samples",
                             icon=":material/library_add:"):
        created = D.ensure_sample_datasets(store)
        if created:
            st.session_state["dataset_next"] = created[-1]
        st.rerun()


def new_dataset_form() -> None:
    with st.popover(t("data.new_dataset"), icon=":material/add:"):
        name = st.text_input(t("data.name"), key="new_name")
        kind = translated_radio(t("data.kind"), D.KINDS, key="new_kind",
                                format_func=kind_label, horizontal=True)
        if st.button(t("data.create"), key="create_dataset"):
            try:
                store.create_dataset(name, kind)
            except ValueError as exc:  # DatasetExists is a ValueError
                st.error(t("data.create_failed", error=str(exc)))
            else:
                st.session_state["dataset_next"] = name.strip()
                st.rerun()


LENGTH_CHART_HEIGHT = 240  # pixels, title and axes included


def length_chart(stats: dict) -> None:
    """One histogram of lengths (characters) per field: prompt, response or chosen/rejected."""
    fields = [name for name, values in stats["lengths"].items() if values]
    for col, name in zip(st.columns(len(fields)), fields):
        df = pd.DataFrame({"chars": stats["lengths"][name]})
        chart = alt.Chart(df).mark_bar().encode(
            x=alt.X("chars:Q", bin=alt.Bin(maxbins=25), title=t("data.chars")),
            y=alt.Y("count():Q", title=t("data.count")),
            tooltip=[alt.Tooltip("count():Q", title=t("data.count"))],
        ).properties(title=t("data.length_of", field=t("data.field_" + name)))
        with col:
            # the element's height, title and axes included (a height set on the chart
            # itself was shared with them: its bars were squeezed into ~25 px)
            st.altair_chart(chart.configure_axis(labelOverlap=True), width="stretch",
                            height=LENGTH_CHART_HEIGHT)


def stats_section(ds: dict) -> dict:
    stats = _stats(str(store.path), _version(ds))
    cols = st.columns(5)
    cols[0].metric(t("data.rows"), str(stats["rows"]))
    cols[1].metric(t("data.train"), str(stats["train"]))
    cols[2].metric(t("data.eval"), str(stats["eval"]))
    cols[3].metric(t("data.unique_prompts"), str(stats["unique_prompts"]))
    cols[4].metric(t("data.duplicates"), str(stats["duplicates"]))
    feedback.source_stats(ds, _version(ds))
    if stats["rows"]:
        length_chart(stats)
    if ds["kind"] == "preference" and stats["rows"]:
        st.caption(t("data.length_bias", pct=round(100 * stats["chosen_longer"])))
    counts = {k: (ds["meta"] or {}).get(k, 0) for k in ("tie", "both_bad")}
    if any(counts.values()):
        st.caption(t("data.votes_skipped", tie=counts["tie"], both_bad=counts["both_bad"]))
    if stats["duplicates"] and st.button(t("data.drop_duplicates", n=stats["duplicates"]),
                                         key="drop_duplicates", icon=":material/content_copy:"):
        store.delete_rows(ds["id"], stats["duplicate_ids"])
        _changed()
        st.rerun()
    return stats


def split_section(ds: dict) -> None:
    st.subheader(t("data.split"))
    if st.session_state.get("split_for") != ds["id"]:  # another dataset: show its own fraction
        st.session_state["split_for"] = ds["id"]
        st.session_state["eval_fraction"] = float(ds["eval_fraction"] or 0)
    cols = st.columns([3, 1, 1])
    fraction = cols[0].slider(t("data.eval_fraction"), 0.0, 0.5, step=0.05, key="eval_fraction",
                              help=t("data.eval_fraction_help"))
    seed = cols[1].number_input(t("data.seed"), 0, 10_000, 0, key="split_seed")
    cols[2].write("")
    if cols[2].button(t("data.resplit"), key="resplit", icon=":material/shuffle:"):
        counts = D.resplit(store, ds["id"], fraction, seed=int(seed))
        _changed()
        st.toast(t("data.resplit_done", **counts))
        st.rerun()


def rows_section(ds: dict, stats: dict) -> None:
    st.subheader(t("data.rows_title"))
    answer_fields = list(D.ANSWER_FIELDS[ds["kind"]])
    cols = st.columns([2, 2, 1])
    split = translated_choice(cols[0].radio, t("data.show_split"), ["all", "train", "eval"],
                              "rows_split", lambda s: t("data.split_" + s), horizontal=True)
    split = None if split == "all" else split
    sources = feedback.source_filter(ds, _version(ds), cols[1])
    total = stats["rows"] if split is None else stats[split]
    if sources:
        total = feedback.rows_page(ds, split, sources, 0, 0)[1]
    pages = max(1, -(-total // PAGE_ROWS))
    page = cols[2].number_input(t("data.page", pages=pages), 1, pages, 1, key="rows_page")
    rows, _ = feedback.rows_page(ds, split, sources, PAGE_ROWS, (page - 1) * PAGE_ROWS)
    frame = pd.DataFrame([{"id": r["id"], "split": r["split"], "source": feedback.row_source(r),
                           "prompt": prompt_cell(r["prompt"]),
                           **{f: r[f] for f in answer_fields}} for r in rows],
                         columns=["id", "split", "source", "prompt", *answer_fields])
    version = st.session_state.setdefault("editor_version", 0)
    key = f"editor-{ds['id']}-{split}-{','.join(sources or [])}-{page}-{version}"
    config = {"id": st.column_config.NumberColumn(t("data.col_id"), disabled=True),
              "split": st.column_config.SelectboxColumn(t("data.col_split"),
                                                        options=["train", "eval"]),
              "source": st.column_config.TextColumn(t("feedback.col_source"), disabled=True),
              "prompt": st.column_config.TextColumn(
                  t("data.field_prompt"), width="large",
                  help=t("data.prompt_cell_help", turns=TABLE_TURNS.join(
                      f"{roles()[r]}: …" for r in ("user", "assistant"))))}
    for f in answer_fields:
        config[f] = st.column_config.TextColumn(t("data.field_" + f), width="large")
    st.data_editor(frame, key=key, num_rows="dynamic", hide_index=True, column_config=config,
                   width="stretch")
    if st.button(t("data.save_edits"), key="save_edits", icon=":material/save:"):
        state = st.session_state.get(key) or {}
        ids = frame["id"].tolist()
        chats = {r["id"] for r in rows if isinstance(r["prompt"], list)}
        updated = {int(ids[int(i)]): dict(change)
                   for i, change in state.get("edited_rows", {}).items() if int(i) < len(ids)}
        for row_id, change in updated.items():
            if "prompt" in change:
                change["prompt"] = cell_to_prompt(change["prompt"], row_id in chats)
        added = [{**row, **({"prompt": cell_to_prompt(row["prompt"])} if row.get("prompt")
                            else {})} for row in state.get("added_rows", [])]
        deleted = [int(ids[int(i)]) for i in state.get("deleted_rows", []) if int(i) < len(ids)]
        errors = D.save_edits(store, ds["id"], updated=updated, added=added, deleted=deleted)
        st.session_state["editor_version"] = version + 1
        _changed()
        st.session_state["edit_errors"] = errors
        st.rerun()
    errors = st.session_state.pop("edit_errors", None)
    if errors:
        st.warning(t("data.edit_rejected", n=len(errors)))
        st.dataframe(pd.DataFrame([{t("data.col_row"): str(e["row"]), t("data.col_reason"): reason(e)}
                                   for e in errors]), hide_index=True)
    elif errors is not None:
        st.toast(t("data.saved"))


def export_section(ds: dict) -> None:
    name = ds["name"]
    cols = st.columns([2, 2, 1])
    cols[0].download_button(t("data.export"), data=lambda: D.export_jsonl(store, name),
                            file_name=f"{name}.jsonl", mime="application/jsonl",
                            icon=":material/download:", key="export", on_click="ignore")
    with cols[2].popover(t("data.delete"), icon=":material/delete:"):
        sure = st.checkbox(t("data.confirm_delete", name=name), key="confirm_delete")
        if st.button(t("data.delete_now"), key="delete_dataset", disabled=not sure, type="primary"):
            store.delete_dataset(ds["id"])
            st.session_state["dataset_next"] = None
            st.rerun()


def datasets_tab() -> None:
    datasets = D.list_datasets(store)
    top = st.columns([2, 1, 1])
    with top[1]:
        samples_button()
    with top[2]:
        new_dataset_form()
    if not datasets:
        st.info(t("data.no_datasets"))
        return
    names = [d["name"] for d in datasets]
    by_name = {d["name"]: d for d in datasets}
    if "dataset_next" in st.session_state:  # chosen by an action after the select box was drawn
        st.session_state["dataset"] = st.session_state.pop("dataset_next")
    if st.session_state.get("dataset") not in names:
        st.session_state["dataset"] = names[0]
    with top[0]:
        name = translated_choice(st.selectbox, t("data.dataset"), names, "dataset",
                                 lambda n: t("data.dataset_option", name=n,
                                             kind=kind_label(by_name[n]["kind"]),
                                             rows=by_name[n]["rows"]))
    ds = store.get_dataset(name)
    if ds.get("description"):
        st.caption(ds["description"])
    stats = stats_section(ds)
    split_section(ds)
    rows_section(ds, stats)
    export_section(ds)


# -- import ------------------------------------------------------------------------------
def import_tab() -> None:
    st.caption(t("data.import_intro"))
    version = st.session_state.setdefault("import_version", 0)  # bumped to clear the inputs
    # no `type=` filter: the uploader would refuse a file only with a tooltip on its icon;
    # every file comes here instead, and a refusal is an error on the page
    uploaded = st.file_uploader(t("data.upload"), key=f"import_file_{version}")
    refused = False
    if uploaded is not None:
        try:
            D.sniff_file_type(uploaded, uploaded.name)
        except D.DataFormatError as exc:
            st.error(t("data.upload_refused", error=str(exc)))
            refused = True
    path = st.text_input(t("data.local_path"), key=f"import_path_{version}",
                         help=t("data.local_path_help")).strip()
    # the name follows the file chosen (upload or path) until the person types one of their own
    filename = uploaded.name if uploaded is not None else path
    auto = D.default_name(filename) if filename else ""
    name_key, auto_key = f"import_name_{version}", f"import_name_auto_{version}"
    if st.session_state.get(name_key, "") in ("", st.session_state.get(auto_key, "")):
        st.session_state[name_key] = auto
    st.session_state[auto_key] = auto
    cols = st.columns(3)
    kind = translated_choice(cols[0].selectbox, t("data.kind"), ["auto", *D.KINDS],
                             "import_kind", lambda k: t("data.kind_" + k))
    fmt = translated_choice(cols[1].selectbox, t("data.format"), list(D.FORMATS),
                            "import_format", lambda f: t("data.format_" + f))
    max_chars = cols[2].number_input(t("data.max_chars"), 100, 1_000_000, D.DEFAULT_MAX_CHARS,
                                     step=1000, key="import_max_chars")
    source = uploaded if uploaded is not None else (path or None)
    name = st.text_input(t("data.import_name"), key=name_key).strip()
    target = name or auto
    mode = "new"
    if target and target in {d["name"] for d in D.list_datasets(store)}:
        st.warning(t("data.exists", name=target))
        mode = translated_radio(t("data.exists_choice"), ["append", "overwrite"],
                                key="import_mode", horizontal=True,
                                format_func=lambda m: t("data.mode_" + m))
    if st.button(t("data.import_go"), key="import_go", type="primary",
                 icon=":material/upload_file:", disabled=source is None or refused):
        bar = st.progress(0.0, text=t("data.importing"))
        try:
            report = D.import_file(
                store, source, kind=None if kind == "auto" else kind, fmt=fmt, dataset=target,
                mode=mode, filename=filename, max_chars=int(max_chars),
                progress=lambda frac, n: bar.progress(frac, text=t("data.import_progress", rows=n)))
        except (ValueError, FileNotFoundError) as exc:
            bar.empty()
            st.error(t("data.import_failed", error=str(exc)))
        else:
            bar.empty()
            st.session_state["last_import"] = report.to_dict()
            if report.imported:
                st.session_state["dataset_next"] = report.dataset
                st.session_state["import_version"] = version + 1
                st.rerun()
    report = st.session_state.get("last_import")
    if report:
        if report["imported"]:
            st.success(t("data.imported", n=report["imported"], name=report["dataset"],
                         format=t("data.format_" + (report["format"] or "auto")),
                         kind=kind_label(report["kind"] or "auto")))
        else:
            st.error(t("data.nothing_imported"))
        if report["rejected"]:
            st.warning(t("data.rejected_n", n=len(report["rejected"])))
            where = "item" if "item" in report["rejected"][0] else "line"  # wrapped JSON: items
            st.dataframe(pd.DataFrame([{t("data.col_" + where): r.get(where),
                                        t("data.col_reason"): reason(r)}
                                       for r in report["rejected"]]), hide_index=True)


# -- human preference collection ------------------------------------------------------------
def _submit_pair() -> None:
    """Start sampling two answers for the prompt chosen in the widgets (a button callback)."""
    prompt = _current_prompt()
    if not prompt or (isinstance(prompt, str) and not prompt.strip()):
        st.session_state["collect_error"] = t("data.collect_no_prompt")
        return
    d = collect.PairSampleConfig()
    cfg = collect.PairSampleConfig(
        model=model_spec(), source=st.session_state.get("collect_source", d.source),
        prompt=prompt, prompt_dataset=_prompt_dataset(),
        temperature=float(st.session_state.get("collect_temperature", d.temperature)),
        top_p=float(st.session_state.get("collect_top_p", d.top_p)),
        max_new_tokens=int(st.session_state.get("collect_max_new_tokens", d.max_new_tokens)),
        seed=st.session_state.get("collect_seed"))
    st.session_state["collect_run"] = get_jobs().submit("pair_sample", cfg)
    st.session_state.pop("collect_error", None)


def _prompts(dataset: str) -> list:
    try:
        return _prompts_cached(str(store.path), _version(store.get_dataset(dataset)))
    except KeyError:  # the dataset was deleted meanwhile
        return []


def _prompt_dataset() -> str:
    """The dataset the prompts come from ("" when the person types the prompt)."""
    if st.session_state.get("collect_origin", "dataset") == "typed":
        return ""
    return st.session_state.get("collect_prompt_ds") or ""


def _index_key(dataset: str) -> str:
    """The prompt select box's key: one widget per dataset. With one key for all, the
    browser keeps the label it showed for the last dataset and sends it back after a
    switch; that label is no option of the new list, so the widget's value came back as
    that text instead of an index (and `0 <= i` raised a TypeError)."""
    return f"collect_prompt_idx-{dataset}"


def _prompt_index(dataset: str, n: int) -> int:
    """The chosen prompt's index in `dataset` (0 when none, or not a valid index)."""
    i = st.session_state.get(_index_key(dataset))
    return i if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n else 0


def _current_prompt():
    if st.session_state.get("collect_origin", "dataset") == "typed":
        return st.session_state.get("collect_prompt_text", "")
    dataset = st.session_state.get("collect_prompt_ds")
    if not dataset:
        return None
    prompts = _prompts(dataset)
    return prompts[_prompt_index(dataset, len(prompts))] if prompts else None


def _offer_pending() -> None:
    """Unless this session is sampling or showing its own pair, offer the newest pair
    sampled earlier (in this session or a closed one) for this source and these prompts
    that still has no vote, before sampling anew; an offered pair that no longer fits the
    source or prompts chosen since is put back (it stays pending)."""
    current = st.session_state.get("collect_run")
    offered = st.session_state.get("collect_offered")
    if current and current != offered:
        return
    run_id = collect.pending_pair(store, st.session_state.get("collect_source") or "base",
                                  model_spec(), _prompt_dataset(), prefer=current)
    if run_id:
        st.session_state["collect_run"] = st.session_state["collect_offered"] = run_id
    elif current:
        st.session_state.pop("collect_run", None)


def _vote(run_id: int, choice: str) -> None:
    target = (st.session_state.get("collect_target") or "").strip() or "human-preferences"
    try:
        result = collect.record_vote(store, run_id, choice, target)
    except ValueError as exc:
        st.session_state["collect_error"] = str(exc)
        if collect.get_pair(store, run_id)["vote"]:  # voted meanwhile (another tab)
            st.session_state.pop("collect_run", None)
        return
    st.session_state["collect_last"] = result
    st.session_state.pop("collect_run", None)
    st.session_state.pop("collect_error", None)
    if st.session_state.get("collect_auto") and \
            st.session_state.get("collect_origin", "dataset") == "dataset":
        _offer_pending()
        if st.session_state.get("collect_run"):  # an earlier pair waits for its vote
            return
        dataset = st.session_state.get("collect_prompt_ds") or ""
        n = len(_prompts(dataset))
        if n:
            st.session_state[_index_key(dataset)] = (_prompt_index(dataset, n) + 1) % n
            _submit_pair()


def _follow_pending(sources: dict) -> None:
    """A new session (a new tab) starts where the newest pair still waiting for a vote was
    sampled: its source, and its prompts (typed or a dataset's), so `_offer_pending` offers
    it at once (it came back only after picking that same dataset again)."""
    if st.session_state.get("collect_followed"):
        return
    st.session_state["collect_followed"] = True
    if "collect_prompt_ds" in st.session_state or "collect_run" in st.session_state:
        return  # this session chose already
    waiting = [r for r in (collect.pending_pair(store, src, model_spec()) for src in sources) if r]
    if not waiting:
        return
    run = store.get_run(max(waiting))
    cfg = run["config"] or {}
    st.session_state["collect_source"] = str(cfg.get("source") or "base")
    dataset = cfg.get("prompt_dataset")
    if dataset == "":
        st.session_state["collect_origin"] = "typed"
    elif dataset and dataset in {d["name"] for d in D.list_datasets(store)}:
        st.session_state["collect_origin"] = "dataset"
        st.session_state["collect_prompt_ds"] = dataset


def prompt_option(prompt, n: int = 100) -> str:
    """A prompt in the prompt list: a string as it is; a chat as all its turns on one line
    ("User: … · Assistant: … · User: …"), its middle left out when long, so that its
    first and last turns both show (the list showed the last user turn only)."""
    text = " ".join(conversation_text(prompt, roles(), " · ").split())
    if len(text) <= n or not isinstance(prompt, list):
        return clip(text, n)
    head = n // 2 - 2
    return text[:head] + " … " + text[-(n - head - 3):]


def collect_settings() -> None:
    sources = collect.model_sources(store)
    _follow_pending(sources)
    sources["base"] = t("data.source_base", model=display_name(model_spec()))
    translated_choice(st.selectbox, t("data.collect_source"), list(sources), "collect_source",
                      sources.get)
    origin = translated_radio(t("data.collect_origin"), ["dataset", "typed"],
                              key="collect_origin", horizontal=True,
                              format_func=lambda o: t("data.origin_" + o))
    if origin == "dataset":
        names = [d["name"] for d in D.list_datasets(store)]
        if not names:
            st.info(t("data.no_datasets"))
        else:
            ds = st.selectbox(t("data.collect_prompt_ds"), names, key="collect_prompt_ds")
            prompts = _prompts(ds)
            key = _index_key(ds)
            positions = st.session_state.setdefault("collect_positions", {})  # per dataset
            if key not in st.session_state and ds in positions:  # back to a dataset
                st.session_state[key] = positions[ds]
            if prompts and key in st.session_state and \
                    st.session_state[key] != _prompt_index(ds, len(prompts)):
                st.session_state[key] = 0  # rows deleted meanwhile, or a stale label
            choice = st.selectbox(
                t("data.collect_prompt"), list(range(len(prompts))), key=key,
                format_func=lambda i: f"{i + 1}. {prompt_option(prompts[i])}")
            if isinstance(choice, int):
                positions[ds] = choice
    else:
        st.text_area(t("data.collect_prompt_text"), key="collect_prompt_text", height=100)
    st.session_state.setdefault("collect_target", "human-preferences")
    st.text_input(t("data.collect_target"), key="collect_target",
                  help=t("data.collect_target_help"))
    with st.expander(t("data.sampling")):
        d = collect.PairSampleConfig()
        st.slider(t("data.temperature"), 0.1, 1.5, d.temperature, 0.05, key="collect_temperature")
        st.slider(t("data.top_p"), 0.5, 1.0, d.top_p, 0.01, key="collect_top_p")
        st.slider(t("data.max_new_tokens"), 8, 256, d.max_new_tokens, 8,
                  key="collect_max_new_tokens")
        st.number_input(t("data.seed_optional"), 0, 2**31 - 1, None, key="collect_seed")
    st.session_state.setdefault("collect_auto", True)
    st.checkbox(t("data.collect_auto"), key="collect_auto")
    _offer_pending()
    pending = st.session_state.get("collect_run")
    st.button(t("data.collect_sample"), key="collect_sample", type="primary",
              icon=":material/casino:", on_click=_submit_pair, disabled=bool(pending))


def pair_panel(run_id: int) -> None:
    run = store.get_run(run_id)
    if run["status"] in ACTIVE_STATES:
        @st.fragment(run_every=1.0)
        def poll():
            if store.get_run(run_id)["status"] not in ACTIVE_STATES:
                st.rerun()
            job_panel(run_id, show_log=False)

        poll()
        return
    if run["status"] != "succeeded":
        job_panel(run_id)
        if st.button(t("data.collect_dismiss"), key="collect_dismiss"):
            st.session_state.pop("collect_run", None)
            st.rerun()
        return
    pair = collect.get_pair(store, run_id)
    prompt = pair["prompt"]
    if st.session_state.get("collect_offered") == run_id:
        st.caption(t("data.collect_offered"))
    st.markdown(t("data.collect_prompt_shown"))
    st.text(conversation_text(prompt, roles()))
    if run["summary"].get("identical"):
        st.warning(t("data.collect_identical"))
    cols = st.columns(2)
    for col, label, text in ((cols[0], "A", pair["a"]), (cols[1], "B", pair["b"])):
        with col.container(border=True):
            st.markdown(f"**{label}**")
            st.text(text or "")
    buttons = st.columns(4)
    for col, choice in zip(buttons, collect.CHOICES):
        col.button(t("data.vote_" + choice), key=f"vote_{choice}", on_click=_vote,
                   args=(run_id, choice), shortcut=CHOICE_KEYS[choice], width="stretch",
                   type="primary" if choice in ("a", "b") else "secondary")
    st.caption(t("data.collect_shortcuts"))


def collect_tab() -> None:
    st.caption(t("data.collect_intro"))
    left, right = st.columns([1, 2])
    with left:
        collect_settings()
    with right:
        error = st.session_state.get("collect_error")
        if error:
            st.error(error)
        last = st.session_state.get("collect_last")
        if last:
            key = "data.collect_stored" if last["stored"] else "data.collect_skipped"
            st.success(t(key, name=last["dataset"], choice=t("data.vote_" + last["choice"])))
        run_id = st.session_state.get("collect_run")
        if run_id:
            try:
                store.get_run(run_id)
            except NotFound:  # deleted on the Runs page meanwhile
                st.session_state.pop("collect_run", None)
                run_id = None
        if run_id:
            pair_panel(run_id)
        else:
            st.info(t("data.collect_waiting"))
        target = (st.session_state.get("collect_target") or "").strip() or "human-preferences"
        counts = collect.vote_counts(store, target)
        st.caption(t("data.collect_counts", name=target,
                     a=tn("data.collect_pairs", counts["a"] + counts["b"]),
                     tie=tn("data.collect_ties", counts["tie"]),
                     both_bad=tn("data.collect_both_bad", counts["both_bad"])))


tab_datasets, tab_import, tab_collect, tab_feedback = st.tabs(
    [":material/dataset: " + t("data.tab_datasets"), ":material/upload_file: " + t("data.tab_import"),
     ":material/thumbs_up_down: " + t("data.tab_collect"),
     ":material/smart_toy: " + t("feedback.tab")])
with tab_datasets:
    datasets_tab()
with tab_import:
    import_tab()
with tab_collect:
    collect_tab()
with tab_feedback:
    feedback.ai_feedback_tab()
