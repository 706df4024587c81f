"""RLHF Lab: entry point. `streamlit run app.py`"""
from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine.inference.specs import warm_up
from ui.common import device_caption, get_jobs, get_store
from ui.i18n import LANGUAGES, current_language, t

st.set_page_config(page_title="RLHF Lab", page_icon=":material/science:", layout="wide")
# a formula wider than its column scrolls sideways instead of being cut off (KaTeX's advice)
st.html("<style>.katex-display { overflow-x: auto; overflow-y: hidden; }</style>")


@st.cache_data(show_spinner=False, ttl=10)
def model_problem(spec: str) -> str | None:
    """Why a typed model spec cannot be used (None when it looks loadable)."""
    from engine.inference.models import ModelLoadError, resolve  # (imports torch)

    try:
        path, _ = resolve(spec)
        if Path(path).is_dir():
            from transformers import AutoConfig

            AutoConfig.from_pretrained(path)
    except ModelLoadError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a config.json that is not a model's
        return f"{spec!r} is not a Hugging Face model: {exc}"
    return None


def _language_chosen() -> None:
    # a callback runs before the next script run, so that whole run is in the new language;
    # an st.rerun() in the middle of the sidebar would drop the state of every widget drawn
    # after it (the model chosen below was reset to "embedded" by a language switch)
    st.session_state["lang"] = st.session_state["lang_select"]


@st.cache_data(ttl=30, show_spinner=False)
def found_models(folders: tuple[str, ...]) -> list[dict]:
    from engine.inference.catalog import find_models

    return find_models(list(folders))


def model_details(info: dict) -> None:
    """Parameters, architecture, size on disk and the chat template of a listed model."""
    from engine.inference.catalog import human_count, human_size
    from engine.inference.chat import FALLBACK_TEMPLATE

    st.caption(t("app.model_details", parameters=human_count(info["parameters"]),
                 architecture=info["architecture"], size=human_size(info["size_bytes"]),
                 template=t("app.template_yes" if info["chat_template"] else "app.template_no")))
    if not info["chat_template"]:
        st.warning(t("app.no_chat_template"), icon=":material/warning:")
        with st.expander(t("app.default_template")):
            st.code(FALLBACK_TEMPLATE, language="jinja2")


def found_model_picker() -> None:
    """The models of the Hugging Face cache and of the user's folders, and a folder to add."""
    from engine.inference.catalog import add_user_folder, hf_cache_dir, user_folders

    models = found_models(tuple(user_folders()))
    if models:
        by_spec = {m["spec"]: m for m in models}
        spec = st.selectbox(t("app.model_found_input"), list(by_spec), key="model_found",
                            format_func=lambda s: f"{by_spec[s]['name']}")
        st.session_state["model_spec"] = spec
        model_details(by_spec[spec])
    else:
        st.session_state["model_spec"] = "embedded"
        st.info(t("app.no_models_found", cache=str(hf_cache_dir())), icon=":material/search:")
    with st.form("add_model_folder", clear_on_submit=True, border=False):
        folder = st.text_input(t("app.add_folder"), placeholder="/path/to/models")
        if st.form_submit_button(t("app.add_folder_button")) and folder.strip():
            try:
                add_user_folder(folder.strip())
                found_models.clear()
                st.rerun()
            except ValueError as exc:
                st.error(t("app.add_folder_error", error=str(exc)), icon=":material/error:")


def sidebar() -> None:
    with st.sidebar:
        lang = current_language()
        if st.query_params.get("lang") != lang:  # remembered across a browser reload
            st.query_params["lang"] = lang
        st.selectbox(":material/language: " + t("app.language"), list(LANGUAGES),
                     index=list(LANGUAGES).index(lang), format_func=LANGUAGES.get,
                     key="lang_select", on_change=_language_chosen)
        st.subheader(t("app.model"))
        kinds = ["embedded", "found", "folder", "hub"]
        # the widget's key carries the language: its translated option labels would not match
        # the browser's remembered choice after a language switch (no option shown selected);
        # the choice itself lives in "model_kind"
        kind = st.radio(t("app.model_source"), kinds, key="model_kind_" + lang, horizontal=True,
                        index=kinds.index(st.session_state.get("model_kind", "embedded")),
                        format_func=lambda k: t("app.model_" + k))
        st.session_state["model_kind"] = kind
        if kind == "embedded":
            st.session_state["model_spec"] = "embedded"
            st.caption(t("app.embedded_caption"))
        elif kind == "found":
            found_model_picker()
        else:
            value = st.text_input(t("app.model_" + kind + "_input"), key="model_value",
                                  placeholder="/path/to/model" if kind == "folder"
                                  else "HuggingFaceTB/SmolLM2-135M-Instruct")
            st.session_state["model_spec"] = value.strip() or "embedded"
            problem = model_problem(value.strip()) if value.strip() else None
            if problem:
                st.error(t("app.model_invalid", error=problem), icon=":material/error:")
            elif kind == "folder" and value.strip():
                from engine.inference.catalog import describe_model

                info = describe_model(Path(value.strip()).expanduser())
                if info is not None:
                    model_details(info)


def sidebar_footer() -> None:
    """The device and database lines, drawn after the page (still at the sidebar's foot):
    on a fresh data folder the database is created here or by the page, after its
    heading, not before it."""
    with st.sidebar:
        device_caption(lambda dev: st.caption(t("app.device", device=dev["device"],
                                                  dtype=dev["dtype"])))
        st.caption(t("app.database", path=str(get_store().path)))


home = st.Page("views/home.py", title=t("nav.home"), icon=":material/home:", default=True,
               url_path="home")
pages = [
    home,
    st.Page("views/data.py", title=t("nav.data"), icon=":material/edit_note:", url_path="data"),
    st.Page("views/sft.py", title=t("nav.sft"), icon=":material/school:", url_path="sft"),
    st.Page("views/reward.py", title=t("nav.reward"), icon=":material/balance:", url_path="reward"),
    st.Page("views/ppo.py", title=t("nav.ppo"), icon=":material/target:", url_path="ppo"),
    st.Page("views/dpo.py", title=t("nav.dpo"), icon=":material/compare_arrows:", url_path="dpo"),
    st.Page("views/grpo.py", title=t("nav.grpo"), icon=":material/groups:", url_path="grpo"),
    st.Page("views/compare.py", title=t("nav.compare"), icon=":material/compare:", url_path="compare"),
    st.Page("views/runs.py", title=t("nav.runs"), icon=":material/monitoring:", url_path="runs"),
    st.Page("views/experiments.py", title=t("nav.experiments"), icon=":material/science:", url_path="experiments"),
    st.Page("views/export.py", title=t("nav.export"), icon=":material/inventory_2:", url_path="export"),
]
# st.navigation first: the sidebar's widgets then get the same ids on the first run after
# a page load as on every later run (otherwise the first click in the sidebar is lost).
page = st.navigation(pages)
sidebar()  # what the pages read (language, model) is chosen before they run
if page.url_path != home.url_path:  # (the Home page starts it itself, after its heading)
    get_jobs()  # starts the job manager (and marks runs orphaned by a crash as interrupted)
try:
    page.run()
finally:
    sidebar_footer()
    # torch (seconds to import) loads after the first page is drawn, not before: the
    # device line says "detecting…" until then (device_caption)
    warm_up()
