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


def current_language() -> str:
    try:
        import streamlit as st

        lang = st.session_state.get("lang")
        if lang in LANGUAGES:
            return lang
        locale = (getattr(st.context, "locale", None) or "").lower()
        return "fr" if locale.startswith("fr") else DEFAULT
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
