"""The French and English interfaces: catalogues agree, every page renders in French,
and pages keep their user-facing text in the catalogues (not in the code)."""
from __future__ import annotations

import ast
import json
import re
import string
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

I18N = ROOT / "i18n"
LANGS = ("en", "fr")
PAGES = sorted(p.name for p in (ROOT / "views").glob("*.py"))
ICON = re.compile(r":material/[a-z0-9_]+:")


def _namespaces(lang: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8"))
            for p in sorted((I18N / lang).glob("*.json"))}


def _placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


# -- the catalogues ------------------------------------------------------------------
def test_both_languages_have_the_same_namespaces():
    en, fr = _namespaces("en"), _namespaces("fr")
    assert sorted(en) == sorted(fr), "i18n/en and i18n/fr must hold the same files"


@pytest.mark.parametrize("ns", sorted(_namespaces("en")))
def test_namespace_keys_values_and_placeholders_match(ns):
    en, fr = _namespaces("en")[ns], _namespaces("fr").get(ns, {})
    assert not sorted(set(en) - set(fr)), f"keys missing in i18n/fr/{ns}.json"
    assert not sorted(set(fr) - set(en)), f"keys missing in i18n/en/{ns}.json"
    for lang, cat in (("en", en), ("fr", fr)):
        for key, value in cat.items():
            assert isinstance(value, str) and value.strip(), f"{lang}/{ns}.json: {key} is empty"
    for key in en:
        assert _placeholders(en[key]) == _placeholders(fr[key]), \
            f"{ns}.{key}: placeholders differ: en {en[key]!r} / fr {fr[key]!r}"


def _literal_keys() -> dict[str, str]:
    """Every t("ns.key") called with a literal in the app's code: key -> where."""
    found: dict[str, str] = {}
    files = [ROOT / "app.py", *sorted((ROOT / "views").glob("*.py")),
             *sorted((ROOT / "ui").glob("*.py"))]
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "t" and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                found.setdefault(node.args[0].value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_literal_key_used_in_the_code_exists_in_both_languages():
    from ui.i18n import catalogue

    catalogue.cache_clear()
    missing = [f"{key} ({where}, {lang})" for key, where in sorted(_literal_keys().items())
               for lang in LANGS if key not in catalogue(lang)]
    assert not missing, "keys used in the code but absent from a catalogue:\n" + "\n".join(missing)


def test_format_with_missing_argument_never_crashes():
    from ui.i18n import t

    assert t("home.data_state", lang="fr") == t("home.data_state", lang="fr")  # unformatted
    assert "3" in t("home.data_state", lang="fr", n=3, rows=5)
    assert t("no.such_key") == "no.such_key"


# -- pages render in French ------------------------------------------------------------
class _MissRecorder:
    """Wraps ui.i18n.t to record keys the French catalogue does not hold."""

    def __init__(self, original):
        self.original, self.missing = original, set()

    def __call__(self, key, lang=None, **kwargs):
        from ui.i18n import catalogue, current_language

        if key not in catalogue(lang or current_language()):
            self.missing.add(key)
        return self.original(key, lang, **kwargs)


@pytest.fixture(autouse=True)
def fresh_resources():
    """st.cache_resource outlives an AppTest: clear it so each test sees its own database."""
    import streamlit as st

    import ui.i18n

    st.cache_resource.clear()
    yield
    st.cache_resource.clear()
    ui.i18n._last_language = ui.i18n.DEFAULT  # t() outside a run: English again


@pytest.fixture
def french_app(store, monkeypatch):
    import ui.i18n

    recorder = _MissRecorder(ui.i18n.t)
    monkeypatch.setattr(ui.i18n, "t", recorder)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.session_state["lang"] = "fr"
    at.run()
    assert not at.exception, at.exception
    return at, recorder


def test_every_page_renders_in_french(french_app):
    at, recorder = french_app
    assert any("Alignez" in m.value for m in at.markdown)
    failures = []
    for page in PAGES:
        at.switch_page(f"views/{page}")
        at.run()
        if at.exception:
            failures.append(f"{page}: {at.exception[0].message}")
    assert not failures, "pages that crash in French:\n" + "\n".join(failures)
    assert not recorder.missing, f"keys without a French text: {sorted(recorder.missing)}"


def test_pages_with_finished_runs_render_in_french(store, tiny_model_dir, monkeypatch):
    """The result views (curves, tables, samples, exports) too, not only the empty pages:
    finished SFT, reward and PPO runs written as their stages leave them (nothing trained:
    their pages show stored numbers), and a real comparison (scored by a reward model) and
    export of the SFT adapter."""
    import ui.i18n
    from engine.data import ensure_sample_datasets
    from engine.runtime.jobs import run_sync
    from tests.finished_runs import ppo_run, reward_run_with_eval_pairs, sft_run
    from tests.rl_helpers import reward_run

    ensure_sample_datasets(store)
    model = str(tiny_model_dir)
    sft = sft_run(store, tiny_model_dir)
    scorer = reward_run(store, tiny_model_dir, seed=1)   # a LoRA and a head: it can score
    reward_run_with_eval_pairs(store, [0.8, -0.2, 0.3], norm_mean=0.1)
    ppo_run(store)
    for stage, cfg in (("compare", {"prompts": ["Bonjour ?"], "max_new_tokens": 8,
                                    "sources": ["base", sft], "reward_run": scorer,
                                    "capability_limit": 4}),
                       ("export", {"run_id": sft})):
        run = run_sync(store, stage, {"model": model, **cfg})
        assert run["status"] == "succeeded", (stage, run["error"])

    recorder = _MissRecorder(ui.i18n.t)
    monkeypatch.setattr(ui.i18n, "t", recorder)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.session_state["lang"] = "fr"
    at.run()
    failures, charts = [], {}
    for page in PAGES:
        at.switch_page(f"views/{page}")
        at.run()
        if at.exception:
            failures.append(f"{page}: {at.exception[0].message}")
        charts[page] = len(at.get("vega_lite_chart"))
    assert not failures, "pages that crash in French:\n" + "\n".join(failures)
    assert not recorder.missing, f"keys without a French text: {sorted(recorder.missing)}"
    assert charts["sft.py"] and charts["ppo.py"], charts   # the runs' views were drawn


def test_language_follows_the_browser_locale(store):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.context = {"locale": "fr-FR"}
    at.run()
    assert not at.exception
    assert any("Alignez" in m.value for m in at.markdown)
    assert at.selectbox(key="lang_select").value == "fr"
    # a choice made in the sidebar (kept in the session) wins over the browser's locale
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.context = {"locale": "fr-FR"}
    at.session_state["lang"] = "en"
    at.run()
    assert any("Align a language model" in m.value for m in at.markdown)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.context = {"locale": "de-DE"}
    at.run()
    assert any("Align a language model" in m.value for m in at.markdown)


# -- no hard-coded user-facing text in pages -----------------------------------------------
TEXT_CALLS = {"title", "header", "subheader", "markdown", "caption", "write", "text", "info",
              "warning", "error", "success", "toast", "button", "download_button",
              "form_submit_button", "checkbox", "toggle", "radio", "selectbox", "multiselect",
              "slider", "select_slider", "number_input", "text_input", "text_area",
              "file_uploader", "expander", "tabs", "metric", "page_link", "popover", "status",
              "spinner", "progress", "segmented_control", "pills", "feedback", "chat_input"}
TEXT_KWARGS = {"label", "help", "placeholder", "text", "caption"}
WORDS = re.compile(r"[A-Za-zÀ-ÿ]{3,}")
CODE = re.compile(r"\S*[_/{}]\S*|\S+\.\S+")


def _prose(node: ast.AST) -> str | None:
    """The literal prose in a string or f-string argument, icons and markup removed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr):
        text = " ".join(v.value for v in node.values
                        if isinstance(v, ast.Constant) and isinstance(v.value, str))
    else:
        return None
    text = CODE.sub(" ", ICON.sub(" ", text))  # identifiers, paths and ids are not prose
    return text if WORDS.search(text) else None


def _hard_coded(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in TEXT_CALLS):
            continue
        first = [] if node.func.attr == "page_link" else list(node.args[:1])  # a page path
        args = first + [k.value for k in node.keywords if k.arg in TEXT_KWARGS]
        if node.func.attr == "tabs" and node.args and isinstance(node.args[0], ast.List):
            args += node.args[0].elts
        for arg in args:
            prose = _prose(arg)
            if prose:
                out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.func.attr}({prose!r})")
    return out


def test_pages_hold_no_hard_coded_user_text():
    found = [hit for page in [ROOT / "app.py", *sorted((ROOT / "views").glob("*.py"))]
             for hit in _hard_coded(page)]
    assert not found, "user-facing text outside the catalogues:\n" + "\n".join(found)


# -- counts: singular and plural -------------------------------------------------------------
def _literal_plural_keys() -> dict[str, str]:
    """Every tn("ns.key", n) called with a literal in the app's code: key -> where."""
    found: dict[str, str] = {}
    for path in [ROOT / "app.py", *sorted((ROOT / "views").glob("*.py")),
                 *sorted((ROOT / "ui").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "tn" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                found.setdefault(node.args[0].value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_plural_key_has_both_forms_in_both_languages():
    from ui.i18n import catalogue

    keys = _literal_plural_keys()
    assert "compare.votes" in keys and "runs.count" in keys
    missing = [f"{key}_{form} ({where}, {lang})" for key, where in sorted(keys.items())
               for lang in LANGS for form in ("one", "other")
               if f"{key}_{form}" not in catalogue(lang)]
    assert not missing, "plural keys without both forms:\n" + "\n".join(missing)


def test_plural_forms_follow_each_language():
    from ui.i18n import tn

    assert [tn("compare.votes", n, lang="en") for n in (0, 1, 2)] == ["0 votes", "1 vote",
                                                                      "2 votes"]
    assert [tn("compare.votes", n, lang="fr") for n in (0, 1, 2)] == ["0 vote", "1 vote",
                                                                      "2 votes"]
    assert tn("compare.voted", 1, lang="en", done=1) == "1 of 1 pair voted"
    assert tn("compare.voted", 3, lang="en", done=1) == "1 of 3 pairs voted"
    assert tn("compare.voted", 3, lang="fr", done=1) == "1 sur 3 paires votées"
