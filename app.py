"""RLHF Lab: entry point. `streamlit run app.py`"""
from __future__ import annotations

import streamlit as st

from engine.models import device_summary
from ui.common import get_jobs, get_store, model_spec
from ui.i18n import LANGUAGES, current_language, t

st.set_page_config(page_title="RLHF Lab", page_icon=":material/science:", layout="wide")


def sidebar() -> None:
    with st.sidebar:
        lang = current_language()
        chosen = st.selectbox(":material/language: " + t("app.language"), list(LANGUAGES),
                              index=list(LANGUAGES).index(lang),
                              format_func=LANGUAGES.get, key="lang_select")
        if chosen != st.session_state.get("lang"):
            st.session_state["lang"] = chosen
            if chosen != lang:
                st.rerun()
        st.subheader(t("app.model"))
        kinds = ["embedded", "folder", "hub"]
        kind = st.radio(t("app.model_source"), kinds, key="model_kind", horizontal=True,
                        format_func=lambda k: t("app.model_" + k))
        if kind == "embedded":
            st.session_state["model_spec"] = "embedded"
            st.caption(t("app.embedded_caption"))
        else:
            value = st.text_input(t("app.model_" + kind + "_input"), key="model_value",
                                  placeholder="/path/to/model" if kind == "folder"
                                  else "HuggingFaceTB/SmolLM2-135M-Instruct")
            st.session_state["model_spec"] = value.strip() or "embedded"
        dev = device_summary()
        st.caption(t("app.device", device=dev["device"], dtype=dev["dtype"]))
        st.caption(t("app.database", path=str(get_store().path)))


sidebar()
get_jobs()  # starts the job manager (and marks runs orphaned by a crash as interrupted)

pages = [
    st.Page("pages/home.py", title=t("nav.home"), icon=":material/home:", default=True, url_path="home"),
    st.Page("pages/data.py", title=t("nav.data"), icon=":material/edit_note:", url_path="data"),
    st.Page("pages/sft.py", title=t("nav.sft"), icon=":material/school:", url_path="sft"),
    st.Page("pages/reward.py", title=t("nav.reward"), icon=":material/balance:", url_path="reward"),
    st.Page("pages/ppo.py", title=t("nav.ppo"), icon=":material/target:", url_path="ppo"),
    st.Page("pages/compare.py", title=t("nav.compare"), icon=":material/compare:", url_path="compare"),
    st.Page("pages/runs.py", title=t("nav.runs"), icon=":material/monitoring:", url_path="runs"),
    st.Page("pages/export.py", title=t("nav.export"), icon=":material/inventory_2:", url_path="export"),
]
st.navigation(pages).run()
