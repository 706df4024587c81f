"""One message catalogue per language: i18n/<lang>/*.json, merged.

Each JSON file is a namespace: key "title" in i18n/en/home.json is `t("home.title")`.
Pages never hold user-facing strings; they call t(). A missing key shows as the key
itself (and the catalogue test fails), never as a crash.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

LANGUAGES = {"en": "English", "fr": "Français"}
DEFAULT = "en"
ROOT = Path(__file__).resolve().parent.parent / "i18n"


@lru_cache(maxsize=None)
def catalogue(lang: str) -> dict[str, str]:
    out: dict[str, str] = {}
    folder = ROOT / lang
    for path in sorted(folder.glob("*.json")):
        for key, value in json.loads(path.read_text(encoding="utf-8")).items():
            out[f"{path.stem}.{key}"] = value
    return out


_last_language = DEFAULT


def current_language() -> str:
    """The session's choice, else the page address's `?lang=`, else the browser's locale,
    else English.

    Outside a script run (e.g. AppTest calling a widget's format_func from the test
    thread) there is no session: the language of the last run in this process is used,
    so labels computed there match the ones the run drew.
    """
    global _last_language
    try:
        import streamlit as st
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        if get_script_run_ctx(suppress_warning=True) is None:
            return _last_language
        lang = st.session_state.get("lang")
        if lang not in LANGUAGES:  # a reload keeps the choice in the address (?lang=fr)
            lang = st.query_params.get("lang")
        if lang not in LANGUAGES:
            locale = (getattr(st.context, "locale", None) or "").lower()
            lang = "fr" if locale.startswith("fr") else DEFAULT
        _last_language = lang
        return lang
    except Exception:  # noqa: BLE001 - outside a Streamlit run
        return DEFAULT


def t(key: str, lang: str | None = None, **kwargs) -> str:
    """The message `key` in the current language, formatted with kwargs."""
    lang = lang or current_language()
    text = catalogue(lang).get(key) or catalogue(DEFAULT).get(key) or key
    if kwargs:
        try:
            return text.format(**kwargs)
        except (KeyError, IndexError, ValueError):
            return text
    return text


def plural_form(n: float, lang: str) -> str:
    """The plural form of a count, "one" or "other", by the language's rule (CLDR): English
    singular for 1 only ("0 votes", "1 vote"); French for 0 and 1 ("0 vote", "1 vote")."""
    if lang == "fr":
        return "one" if 0 <= n < 2 else "other"
    return "one" if n == 1 else "other"


def tn(key: str, n: float, lang: str | None = None, **kwargs) -> str:
    """The message `<key>_one` or `<key>_other` for the count n, formatted with n=n and
    kwargs: `tn("compare.votes", 1)` → "1 vote"."""
    lang = lang or current_language()
    return t(f"{key}_{plural_form(n, lang)}", lang, n=n, **kwargs)
