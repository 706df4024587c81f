"""The shipped samples on a fresh data folder: loaded the first time the app or the command
line opens a database, never given back once deleted, and not pushed into a database that
already holds someone's datasets or runs. What the samples teach (issue 16): the shipped
pairs are length-balanced in each language, their chosen answers end a sentence in the
question's language; the length-bias recipe's set prefers the longer answer."""
from __future__ import annotations

import importlib.util
import json
import re
import threading
from argparse import Namespace
from pathlib import Path

import pytest

from engine import data
from engine.cli import store_of
from storage import Store


def _names(store) -> set[str]:
    return {d["name"] for d in data.list_datasets(store)}


def test_meta_get_set(store):
    assert store.get_meta("k") is None and store.get_meta("k", "x") == "x"
    assert store.set_meta("k", "1") is True and store.get_meta("k") == "1"
    assert store.set_meta("k", "2", only_if_absent=True) is False and store.get_meta("k") == "1"
    assert store.set_meta("k", "3") is True and store.get_meta("k") == "3"
    with pytest.raises(ValueError, match="schema_version"):
        store.set_meta("schema_version", "99")
    assert Store(store.path).get_meta("k") == "3"  # stored, not cached


def test_cli_first_open_loads_samples_once(lab_home):
    args = Namespace(db=str(lab_home / "cli.db"))
    store = store_of(args)
    assert _names(store) == set(data.SAMPLES)
    assert store.get_meta(data.SAMPLES_MARKER) == "loaded"
    rows = {d["name"]: d["rows"] for d in data.list_datasets(store)}
    assert rows == {"sample-sft": 112, "sample-preferences": 144,
                    "sample-preferences-longer": 144}
    # the user deletes one: opening again does not give it back
    store.delete_dataset("sample-sft")
    again = store_of(args)
    assert _names(again) == {"sample-preferences", "sample-preferences-longer"}
    assert data.ensure_samples_on_first_open(again) == []
    # the explicit request still does
    assert data.ensure_sample_datasets(again) == ["sample-sft"]


def test_app_store_handle_loads_samples_on_first_open(lab_home):
    import streamlit as st
    from ui.common import _store

    st.cache_resource.clear()
    path = str(lab_home / "app.db")
    try:
        store = _store(path)
        assert _names(store) == set(data.SAMPLES)
        store.delete_dataset("sample-preferences")
        st.cache_resource.clear()  # as after a restart of the app
        assert _names(_store(path)) == {"sample-sft", "sample-preferences-longer"}
    finally:
        st.cache_resource.clear()


def test_a_bare_store_stays_empty(lab_home):
    assert Store(lab_home / "bare.db").list_datasets() == []


@pytest.mark.parametrize("content", ["dataset", "run"])
def test_database_with_data_from_before_the_marker_gets_only_the_marker(lab_home, content):
    old = Store(lab_home / "old.db")  # what an earlier version left: data, no marker
    if content == "dataset":
        old.create_dataset("mine", "sft")
    else:
        old.create_run("sft", {"model": "embedded"}, status="succeeded")
    store = store_of(Namespace(db=str(old.path)))
    assert _names(store) == ({"mine"} if content == "dataset" else set())
    assert store.get_meta(data.SAMPLES_MARKER) == "not loaded: existing data"
    if content == "dataset":
        store.delete_dataset("mine")
    assert data.ensure_samples_on_first_open(store) == []  # decided once, for good


def test_two_first_opens_at_once_load_the_samples_once(lab_home):
    path = lab_home / "race.db"
    Store(path)
    results, start = [], threading.Barrier(2, timeout=60)

    def open_it():
        store = Store(path)
        start.wait()
        results.append(data.ensure_samples_on_first_open(store))

    threads = [threading.Thread(target=open_it) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert sorted(map(len, results)) == [0, len(data.SAMPLES)]
    store = Store(path)
    assert {d["name"]: d["rows"] for d in data.list_datasets(store)} == {
        "sample-sft": 112, "sample-preferences": 144, "sample-preferences-longer": 144}
    assert [d["name"] for d in store.list_datasets()] == sorted(data.SAMPLES)  # no staging


# -- what the samples teach ---------------------------------------------------------------
ASSETS = Path(__file__).resolve().parent.parent / "assets"
# a function-word check of the language, independent of the generator's own
EN = set("the is are was were of and to in it its by you your not no yes do with for at that this "
         "an as has have them they their there if so or be "
         "can from than what which who how when why should wrote write give name describe "
         "explain translate convert".split())
FR = set("le la les est sont de des du et un une en à au aux pas ne vous votre il elle par pour "
         "ils elles se sa son ses plus ou "
         "ce qui que quel quelle dans sur avec non oui je l' d' qu' c' n' combien comment fois "
         "font décris écris donne résume traduis corrige".split())


def _lang(text: str) -> str | None:
    words = re.findall(r"[a-zà-ÿœ]+'?", text.lower())
    en, fr = sum(w in EN for w in words), sum(w in FR for w in words)
    return "en" if en > fr else "fr" if fr > en else None


def _rows(name: str) -> list[dict]:
    with open(ASSETS / name, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _ends_sentence(text: str) -> bool:
    return text.rstrip().rstrip("\"»”").rstrip()[-1:] in ".!?"


@pytest.fixture(scope="module")
def n_tokens(embedded_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(embedded_dir / "tokenizer.json"))
    return lambda text: len(tok.encode(text, add_special_tokens=False).ids)


def _chosen_longer(rows: list[dict], n_tokens) -> dict[str, float]:
    """Per prompt language: the share of pairs whose chosen answer has more tokens."""
    out = {}
    for lang in ("en", "fr"):
        mine = [r for r in rows if _lang(r["prompt"]) == lang]
        assert len(mine) >= 50
        out[lang] = sum(n_tokens(r["chosen"]) > n_tokens(r["rejected"]) for r in mine) / len(mine)
    return out


def test_shipped_pairs_are_length_balanced_in_each_language(n_tokens):
    """A reward model cannot score well on them by preferring the longer answer (the old
    sample preferred it in 85% of pairs and the default PPO run learnt to ramble)."""
    rows = _rows("sample_preferences.jsonl")
    assert 100 <= len(rows) <= 150
    shares = _chosen_longer(rows, n_tokens)
    assert all(0.45 <= share <= 0.55 for share in shares.values()), shares


def test_length_bias_set_prefers_the_longer_answer(n_tokens):
    rows = _rows("sample_preferences_longer.jsonl")
    shares = _chosen_longer(rows, n_tokens)
    assert all(share >= 0.95 for share in shares.values()), shares
    shipped = {r["prompt"] for r in _rows("sample_preferences.jsonl")}
    assert {r["prompt"] for r in rows} == shipped  # the same prompts, the other way round
    for r in rows:  # padded, not better: the chosen answer holds the rejected one
        assert r["rejected"] in r["chosen"] and len(r["chosen"]) > len(r["rejected"])


def test_chosen_answers_are_complete_sentences_in_the_question_language():
    rows = _rows("sample_preferences.jsonl")
    failures = {"wrong", "lang", "cut", "filler", "evasive"}
    for r in rows:
        lang = _lang(r["prompt"])
        assert lang is not None and lang == r["meta"]["lang"], r
        assert _lang(r["chosen"]) == lang, r
        assert _ends_sentence(r["chosen"]), r
        kind = r["meta"]["rejected"]
        assert kind in failures, r
        if kind == "lang":
            assert _lang(r["rejected"]) not in (lang, None), r
        if kind == "cut":
            assert not _ends_sentence(r["rejected"]), r
    for lang in ("en", "fr"):  # each language teaches every failure
        assert {r["meta"]["rejected"] for r in rows if r["meta"]["lang"] == lang} == failures
    sft = _rows("sample_sft.jsonl")
    assert 100 <= len(sft) <= 150
    for r in sft:
        assert _ends_sentence(r["completion"]), r
        assert _lang(r["completion"]) in (_lang(r["prompt"]), None), r
    langs = [_lang(r["prompt"]) for r in sft]
    assert 0.4 <= langs.count("fr") / len(sft) <= 0.6


def test_biased_set_loads_on_a_fresh_data_folder(lab_home):
    store = store_of(Namespace(db=None))
    dataset = store.get_dataset("sample-preferences-longer")
    assert dataset["kind"] == "preference" and dataset["rows"] == 144
    assert 0 < len(store.list_rows("sample-preferences-longer", split="eval")) < 144
    stored = {(r["prompt"], r["chosen"], r["rejected"])
              for r in store.list_rows("sample-preferences-longer", limit=1000)}
    assert stored == {(r["prompt"], r["chosen"], r["rejected"])
                      for r in _rows("sample_preferences_longer.jsonl")}


def test_the_committed_samples_are_what_the_generator_writes(embedded_dir, tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_samples", ASSETS / "make_samples.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    monkeypatch.setattr(gen, "HERE", tmp_path)
    gen.main()
    for name in ("sample_preferences.jsonl", "sample_preferences_longer.jsonl",
                 "sample_sft.jsonl"):
        assert (tmp_path / name).read_bytes() == (ASSETS / name).read_bytes(), name
